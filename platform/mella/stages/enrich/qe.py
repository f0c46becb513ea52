"""qe: reference-free quality estimation of each translation with COMETKiwi (paper 3.1.2: "we use
WMT22-cometkiwi-da [Rei et al., 2022] for evaluation, achieving an average score of 0.75").

Configured (``QEConfig.model_path`` set, the ``unbabel-comet`` package installed): every D_ling row is
scored on ``{"src": caption_en, "mt": text}`` with ``comet.load_from_checkpoint(model_path).predict``;
the score (≈ 0..1, higher is better) goes to ``qe_score`` and rows below ``threshold`` are rejected with
reason ``qe_below_threshold`` (stage ``qe``). ``model_path`` is the checkpoint file of
``Unbabel/wmt22-cometkiwi-da`` (``.../checkpoints/model.ckpt``); the model is gated on the Hugging Face
hub (accept its licence, CC-BY-NC-SA-4.0) and its encoder (InfoXLM-large) must be reachable by
``unbabel-comet`` when it loads.

Not configured (``model_path`` None, the default): ``qe_score`` stays null and nothing is rejected.
Configured but ``unbabel-comet`` missing: ``ImportError`` at start (a configuration error, not a silent
skip). No COMET weights exist on PyPI, so this path is not exercised by the tests on the CPU machine.
"""

from __future__ import annotations

import importlib.util

from pydantic import Field

from mella.resources import PoolConfig

from mella.stages.base import LIGHT, Stage
from mella.models.mllm import log_batch, timed


class QEConfig(PoolConfig):
    """QE stage: the COMETKiwi checkpoint, the threshold and the pool block."""

    model_path: str | None = Field(None, description="COMETKiwi checkpoint (.ckpt); None = no QE, qe_score null")
    threshold: float = Field(0.6, ge=0, le=1, description="rows scoring below are rejected (paper average: 0.75)")
    batch_size: int = Field(64, ge=1, description="pairs per Ray Data batch and per predict() call")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per actor; COMET predict uses one GPU when > 0")
    num_cpus: float = Field(0.5, gt=0, description="CPUs per actor")


class QEStage(Stage):
    """Ray Data callable: sets ``qe_score`` and rejects rows under the threshold (see module doc)."""

    name = "qe"
    reads = ("caption_en", "text")
    writes = ("qe_score",)
    rejects = True
    d_ling = True

    def __init__(self, cfg: QEConfig | None = None, stats_dir: str | None = None) -> None:
        self.cfg, self.stats_dir = cfg or QEConfig(), stats_dir
        self.resources, self.batch_size = self.cfg.stage_resources(), self.cfg.batch_size
        if self.cfg.model_path and importlib.util.find_spec("comet") is None:  # configured but not installed: say so at start
            raise ImportError("qe.model_path is set but unbabel-comet is not installed (pip install unbabel-comet)")
        if not self.cfg.model_path:
            self.resources = LIGHT  # a pass-through: no actor pool to hold

    def setup(self) -> None:
        self.model = None
        if self.cfg.model_path:
            from comet import load_from_checkpoint

            self.model = load_from_checkpoint(self.cfg.model_path)

    def score(self, pairs: list[dict]) -> list[float]:  # pragma: no cover - needs COMET weights
        import torch

        gpus = 1 if self.cfg.num_gpus > 0 and torch.cuda.is_available() else 0
        out = self.model.predict(pairs, batch_size=self.cfg.batch_size, gpus=gpus, progress_bar=False)
        return [float(s) for s in out.scores]

    def process(self, rows: list[dict]) -> None:
        if self.model is None:
            return
        for i in range(0, len(rows), self.cfg.batch_size):  # pragma: no cover - needs COMET weights
            chunk = rows[i:i + self.cfg.batch_size]
            scores, secs = timed(self.score, [{"src": r["caption_en"] or "", "mt": r["text"] or ""} for r in chunk])
            log_batch(self.stats_dir, self.name, len(chunk), secs)
            for r, s in zip(chunk, scores):
                r["qe_score"] = s
                if s < self.cfg.threshold:
                    self.reject(r, "qe_below_threshold", f"{s:.3f} < {self.cfg.threshold}")
