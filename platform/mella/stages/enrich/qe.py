"""qe: reference-free quality estimation of each translation with COMETKiwi (paper 3.1.2: "we use
WMT22-cometkiwi-da [Rei et al., 2022] for evaluation, achieving an average score of 0.75").

Configured (``QEConfig.model_path`` set): every D_ling row is scored on ``{"src": caption_en, "mt": text}`` by
:class:`mella.models.cometkiwi.COMETKiwi`, our loader of the published checkpoint (scores equal
``unbabel-comet``'s: tests/test_cometkiwi.py). The score (float32, ≈ 0..1 for the published model, higher is
better) goes to ``qe_score``; rows below ``threshold`` are rejected with reason ``qe_below_threshold`` (stage
``qe``). ``model_path`` is a checkpoint directory (``hparams.yaml`` + ``checkpoints/model.ckpt``), the ``.ckpt``
file, or a hub id (``Unbabel/wmt22-cometkiwi-da``: gated, CC-BY-NC-SA-4.0; it and its encoder
``microsoft/infoxlm-large`` must be in the hub cache, ``HF_HOME``). The checkpoint is located on the driver when
the stage is built (a missing one fails the job at start) and loaded once per actor of the QE pool, on a GPU when
``num_gpus > 0`` and one is visible.

``threshold`` defaults to 0.6. The paper gives no threshold, only the 0.75 average score of its D_ling (3.1.2);
a cut at that average would drop about half of a corpus with that mean, so the default sits 0.15 below it:
only the low tail is rejected and the mean of what is kept stays comparable to the paper's. Calibrate it per
language on a sample before a large run (docs/d_ling.md).

Not configured (``model_path`` None, the default): ``qe_score`` stays null and nothing is rejected.
"""

from __future__ import annotations

from pydantic import Field

from mella.models.mllm import log_batch, timed
from mella.resources import PoolConfig
from mella.stages.base import LIGHT, Stage


class QEConfig(PoolConfig):
    """QE stage: the COMETKiwi checkpoint, the threshold and the pool block."""

    model_path: str | None = Field(
        None,
        description="COMETKiwi checkpoint dir, its .ckpt, or a hub id "
        "(Unbabel/wmt22-cometkiwi-da); None = no QE, qe_score null",
    )
    threshold: float = Field(
        0.6,
        ge=0,
        le=1,
        description="rows scoring below are rejected (0.6: 0.15 under the "
        "paper's 0.75 average, 3.1.2; see the module doc)",
    )
    batch_size: int = Field(64, ge=1, description="pairs per Ray Data batch and per encoder forward pass")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per actor; the model runs on the GPU when > 0")
    num_cpus: float = Field(
        0.25,
        gt=0,
        description="CPUs per actor (0.25: with the three other D_ling pools at 0.5 it "
        "leaves Ray Data a quarter CPU on a 2-CPU node)",
    )


class QEStage(Stage):
    """Ray Data callable: sets ``qe_score`` and rejects rows under the threshold (see module doc).

    Raises at construction: FileNotFoundError (no checkpoint at ``model_path``) or the hub resolver's
    ``UsageError`` (a hub id not in the cache)."""

    name = "qe"
    reads = ("caption_en", "text")
    writes = ("qe_score",)
    rejects = True
    d_ling = True

    def __init__(self, cfg: QEConfig | None = None, stats_dir: str | None = None) -> None:
        self.cfg, self.stats_dir = cfg or QEConfig(), stats_dir
        self.resources, self.batch_size = self.cfg.stage_resources(), self.cfg.batch_size
        self.ckpt = None
        if self.cfg.model_path:  # located on the driver: a wrong path fails the job before Ray Data runs
            from mella.models.cometkiwi import checkpoint_file

            self.ckpt = str(checkpoint_file(self.cfg.model_path, flag="qe.model_path"))
        else:
            self.resources = LIGHT  # a pass-through: no actor pool to hold

    def setup(self) -> None:
        self.model = None
        if self.ckpt:
            import torch

            from mella.models.cometkiwi import COMETKiwi

            device = "cuda" if self.cfg.num_gpus > 0 and torch.cuda.is_available() else "cpu"
            self.model = COMETKiwi.load(self.ckpt).to(device)

    def score(self, pairs: list[dict]) -> list[float]:
        """One score per ``{"src", "mt"}`` pair, in order."""
        return self.model.score(pairs, batch_size=self.cfg.batch_size)

    def process(self, rows: list[dict]) -> None:
        if self.model is None:
            return
        for i in range(0, len(rows), self.cfg.batch_size):
            chunk = rows[i : i + self.cfg.batch_size]
            scores, secs = timed(self.score, [{"src": r["caption_en"] or "", "mt": r["text"] or ""} for r in chunk])
            log_batch(self.stats_dir, self.name, len(chunk), secs)
            for r, s in zip(chunk, scores):
                r["qe_score"] = s
                if s < self.cfg.threshold:
                    self.reject(r, "qe_below_threshold", f"{s:.3f} < {self.cfg.threshold}")
