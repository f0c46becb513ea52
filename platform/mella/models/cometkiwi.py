"""COMETKiwi (reference-free MT quality estimation) loaded from its published checkpoint with transformers + torch.

Source: Rei et al., 2022, "CometKiwi: IST-Unbabel 2022 Submission for the Quality Estimation Shared Task"; the
published ``Unbabel/wmt22-cometkiwi-da`` (paper 3.1.2 scores D_ling with it). The checkpoint is a Lightning
checkpoint of Unbabel/COMET's ``UnifiedMetric`` (``unbabel-comet`` 2.2.7: ``comet/models/multitask/
unified_metric.py``, ``comet/encoders/xlmr.py`` and ``base.py``, ``comet/modules/layerwise_attention.py`` and
``feedforward.py``); this module re-implements its inference path exactly (tests/test_cometkiwi.py proves the
scores equal ``unbabel-comet``'s, run in its own environment), because ``unbabel-comet`` pins ``numpy<2`` and
``transformers<5`` and cannot be installed beside this project.

Layout (``<dir>``): ``hparams.yaml`` and ``checkpoints/model.ckpt`` (``state_dict`` with COMET's parameter names:
``encoder.model.*`` an ``XLMRobertaModel`` without pooler, ``layerwise_attention.scalar_parameters.<i>`` /
``.gamma``, ``estimator.ff.<i>.*``). The encoder's config and tokenizer are not in the checkpoint: they come from
the hub id in ``hparams.yaml`` ``pretrained_model`` (``microsoft/infoxlm-large``), resolved through the hub cache
(``HF_HOME``, ``HF_HUB_OFFLINE``) as unbabel-comet does.

Inference (``UnifiedMetric.predict`` with ``input_segments: [mt, src]``): each of ``mt`` and ``src`` is tokenized
alone (XLM-R sentencepiece, truncated to ``max_positions - 2`` tokens, ``max_positions =
max_position_embeddings - 2``); the pair becomes ``<s> mt </s></s> src </s>``, cut to ``max_positions`` tokens
when the two bodies exceed ``max_positions - 5``; the encoder's hidden states (embeddings + every layer) are mixed
with the layer-wise attention (weights through ``softmax`` or ``sparsemax``; ``sparsemax_patch`` means softmax, as
unbabel-comet >= 2.2.4 reads it; optional masked layer norm), scaled by ``gamma``; the ``<s>`` vector goes
through the feed-forward estimator to one score per pair (float32; ≈ 0..1 for the published model, higher is
better).
"""

from __future__ import annotations

import io
import json
import logging
import pickle
from pathlib import Path

import torch
import yaml
from torch import nn

from mella.models.hub import resolve_model

log = logging.getLogger(__name__)

PUBLISHED = "Unbabel/wmt22-cometkiwi-da"
ENCODER = "microsoft/infoxlm-large"


def sparsemax(z: torch.Tensor) -> torch.Tensor:
    """Sparsemax of a 1-D tensor (Martins & Astudillo, 2016, Algorithm 1; ``entmax.sparsemax`` with ``dim=0``):
    the Euclidean projection onto the probability simplex. Shape and dtype kept."""
    zs, _ = torch.sort(z, descending=True)
    cssv = zs.cumsum(0) - 1
    k = torch.arange(1, z.numel() + 1, device=z.device, dtype=z.dtype)
    support = k * zs > cssv
    k_z = support.sum()
    tau = cssv[k_z - 1] / k_z.to(z.dtype)
    return torch.clamp(z - tau, min=0)


class LayerwiseAttention(nn.Module):
    """COMET's layer mix (``comet/modules/layerwise_attention.py``, inference path): ``gamma * sum_i w_i h_i``
    with ``w = transform(scalar_parameters)``; each ``h_i`` (batch, seq, hidden) is first normalised over its
    unmasked positions when ``layer_norm``."""

    def __init__(self, num_layers: int, layer_norm: bool, transformation: str, dropout: float | None) -> None:
        super().__init__()
        if transformation not in ("softmax", "sparsemax", "sparsemax_patch"):
            raise ValueError(f"layer_transformation {transformation!r}: expected softmax, sparsemax or sparsemax_patch")
        self.layer_norm, self.transformation = layer_norm, transformation
        self.scalar_parameters = nn.ParameterList([nn.Parameter(torch.zeros(1)) for _ in range(num_layers)])
        self.gamma = nn.Parameter(torch.ones(1))
        if dropout:  # buffers COMET registers (train-time layer dropout); kept so the state_dict names match
            self.register_buffer("dropout_mask", torch.zeros(num_layers))
            self.register_buffer("dropout_fill", torch.empty(num_layers).fill_(-1e20))

    def forward(self, tensors: tuple[torch.Tensor, ...], mask: torch.Tensor) -> torch.Tensor:
        weights = torch.cat(list(self.scalar_parameters))
        normed = sparsemax(weights) if self.transformation == "sparsemax" else torch.softmax(weights, dim=0)
        normed = torch.split(normed, split_size_or_sections=1)
        if self.layer_norm:
            m = mask.float()
            tensors = tuple(_masked_layer_norm(t, m) for t in tensors)
        return self.gamma * sum(w * t for w, t in zip(normed, tensors))


def _masked_layer_norm(t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    b, _, dim = t.size()
    bm = mask.unsqueeze(-1)
    masked = t * bm
    n = mask.sum(1) * dim
    mean = (masked.view(b, -1).sum(1) / n).view(b, 1, 1)
    var = (((masked - mean) * bm) ** 2).view(b, -1).sum(1) / n
    return (t - mean) / torch.sqrt(var + 1e-12).view(b, 1, 1)


class FeedForward(nn.Module):
    """COMET's estimator (``comet/modules/feedforward.py``): Linear/activation/Dropout per hidden size, then a
    Linear to one output (and the optional final activation); parameters ``ff.<i>.weight``/``bias``."""

    def __init__(
        self, in_dim: int, hidden_sizes: list[int], activations: str, final_activation: str | None, dropout: float
    ) -> None:
        super().__init__()
        mods, prev = [], in_dim
        for h in hidden_sizes:
            mods += [nn.Linear(prev, h), _activation(activations), nn.Dropout(dropout)]
            prev = h
        mods.append(nn.Linear(prev, 1))
        if final_activation is not None:
            mods.append(_activation(final_activation))
        self.ff = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ff(x)


def _activation(name: str) -> nn.Module:
    if not hasattr(nn, name.title()):
        raise ValueError(f"{name} is not a torch.nn activation")
    return getattr(nn, name.title())()


class _Encoder(nn.Module):
    def __init__(self, config) -> None:
        super().__init__()
        from transformers import XLMRobertaModel

        self.model = XLMRobertaModel(config, add_pooling_layer=False)


class COMETKiwi(nn.Module):
    """A COMET ``UnifiedMetric`` QE model (``input_segments: [mt, src]``, no word-level head) for inference.

    Build with :meth:`load`; score with :meth:`score`. Module tree and parameter names are COMET's, so the
    published ``state_dict`` loads unchanged."""

    def __init__(self, hparams: dict, config, tokenizer) -> None:
        super().__init__()
        if hparams.get("class_identifier", "unified_metric") != "unified_metric":
            raise ValueError(f"class_identifier {hparams.get('class_identifier')!r}: only unified_metric (COMETKiwi)")
        if list(hparams.get("input_segments", ["mt", "src"])) != ["mt", "src"]:
            raise ValueError(f"input_segments {hparams.get('input_segments')}: COMETKiwi QE needs [mt, src]")
        self.hparams, self.tokenizer = hparams, tokenizer
        self.encoder = _Encoder(config)
        layer = hparams.get("sent_layer", hparams.get("layer", "mix"))
        self.sent_layer = layer
        self.layerwise_attention = None
        if layer == "mix":
            self.layerwise_attention = LayerwiseAttention(
                config.num_hidden_layers + 1,
                bool(hparams.get("layer_norm", True)),
                hparams.get("layer_transformation", "sparsemax"),
                hparams.get("dropout", 0.1),
            )
        self.estimator = FeedForward(
            config.hidden_size,
            list(hparams.get("hidden_sizes", [3072, 1024])),
            hparams.get("activations", "Tanh"),
            hparams.get("final_activation"),
            float(hparams.get("dropout", 0.1)),
        )
        self.max_positions = config.max_position_embeddings - 2
        self.eval()

    @classmethod
    def load(cls, model_path: str | Path, *, flag: str = "qe.model_path") -> COMETKiwi:
        """Load from a checkpoint directory (``hparams.yaml`` + ``checkpoints/model.ckpt``), the ``.ckpt`` file,
        or a hub id (``Unbabel/wmt22-cometkiwi-da``, via :func:`mella.models.hub.resolve_model`). The encoder
        config and tokenizer come from ``pretrained_model`` through the hub cache.

        Raises: FileNotFoundError (no checkpoint / no hparams.yaml), ValueError (not a COMETKiwi checkpoint, or
        its parameters do not fit), and the hub resolver's errors for an id not in the cache."""
        from transformers import XLMRobertaConfig, XLMRobertaTokenizer

        ckpt = checkpoint_file(model_path, flag=flag)
        hp_file = ckpt.parents[1] / "hparams.yaml"
        if not hp_file.is_file():
            raise FileNotFoundError(f"{flag}: {hp_file} is missing (COMET reads the model class from it)")
        hp_yaml = yaml.safe_load(hp_file.read_text(encoding="utf-8")) or {}
        state = _torch_load(ckpt)
        hparams = {**hp_yaml, **dict(state.get("hyper_parameters") or {})}  # COMET: the checkpoint's hparams win
        enc_dir = resolve_model(hparams.get("pretrained_model", ENCODER), flag=f"{flag} (encoder)")
        config = XLMRobertaConfig.from_pretrained(str(enc_dir))
        tokenizer = XLMRobertaTokenizer.from_pretrained(str(enc_dir))
        model = cls(hparams, config, tokenizer)
        model._load_state(state.get("state_dict", state), ckpt)
        return model

    def _load_state(self, sd: dict, ckpt: Path) -> None:
        try:
            res = self.load_state_dict(sd, strict=False)
        except RuntimeError as e:  # shape mismatches
            raise ValueError(
                f"{ckpt}: not a COMETKiwi state_dict for this encoder config and hparams "
                f"({str(e).splitlines()[-1].strip()})"
            ) from e
        missing = [k for k in res.missing_keys if not k.endswith(("position_ids", "token_type_ids"))]
        extra = [k for k in res.unexpected_keys if not k.endswith("position_ids") and not k.startswith("hidden2tag.")]
        if missing or extra:
            raise ValueError(
                f"{ckpt}: not a COMETKiwi state_dict for this encoder config (missing {missing[:4]}, "
                f"unexpected {extra[:4]})"
            )

    def tokenize(self, pairs: list[dict]) -> dict[str, torch.Tensor]:
        """``input_ids`` (batch, seq) int64 and ``attention_mask`` (batch, seq) bool for ``[{"src", "mt"}]``,
        built as COMET's ``prepare_sample`` + ``concat_sequences`` do (module doc)."""
        tok = self.tokenizer
        kw = {"truncation": True, "max_length": self.max_positions - 2}
        mt = tok([p["mt"] for p in pairs], **kw)["input_ids"]
        src = tok([p["src"] for p in pairs], **kw)["input_ids"]
        seqs = []
        for a, b in zip(mt, src):
            a, b = [t for t in a if t != tok.pad_token_id][1:-1], [t for t in b if t != tok.pad_token_id][1:-1]
            s = [tok.cls_token_id, *a, tok.sep_token_id, tok.sep_token_id, *b, tok.sep_token_id]
            if len(a) + len(b) > self.max_positions - 5:  # 1 + 2 x size_separator special tokens
                s = s[: self.max_positions]
            seqs.append(s)
        n = max(len(s) for s in seqs)
        ids = torch.tensor([s + [tok.pad_token_id] * (n - len(s)) for s in seqs], dtype=torch.long)
        lengths = torch.tensor([len(s) for s in seqs])
        return {"input_ids": ids, "attention_mask": torch.arange(n)[None, :] < lengths[:, None]}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Scores (batch,) float32 for token ids (batch, seq) and their mask (batch, seq)."""
        out = self.encoder.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        layers = out.hidden_states
        if self.layerwise_attention is not None:
            emb = self.layerwise_attention(layers, attention_mask)
        elif isinstance(self.sent_layer, int) and 0 <= self.sent_layer < len(layers):
            emb = layers[self.sent_layer]
        else:
            raise ValueError(f"sent_layer {self.sent_layer!r}: 'mix' or an index < {len(layers)}")
        return self.estimator(emb[:, 0, :]).view(-1)

    @torch.inference_mode()
    def score(self, pairs: list[dict], batch_size: int = 64) -> list[float]:
        """One score per ``{"src": source text, "mt": translation}`` (str each), in input order."""
        device = next(self.parameters()).device
        scores: list[float] = []
        for i in range(0, len(pairs), batch_size):
            batch = {k: v.to(device) for k, v in self.tokenize(pairs[i : i + batch_size]).items()}
            scores += self(**batch).float().cpu().tolist()
        return scores


def checkpoint_file(model_path: str | Path, *, flag: str = "qe.model_path") -> Path:
    """``model.ckpt`` for a ``.ckpt`` path, a checkpoint directory or a hub id. Raises FileNotFoundError."""
    p = Path(str(model_path)).expanduser()
    if not p.exists() and not str(model_path).endswith(".ckpt"):
        p = resolve_model(str(model_path), flag=flag)
    if p.is_dir():
        p = p / "checkpoints" / "model.ckpt"
    if not p.is_file():
        raise FileNotFoundError(f"{flag}: no COMET checkpoint at {p} (expected <dir>/checkpoints/model.ckpt)")
    return p


def _torch_load(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # Lightning pickles its AttributeDict of hparams; the configured file is trusted
        log.warning("%s holds pickled objects beyond tensors; loading it with weights_only=False", path)
        return torch.load(path, map_location="cpu", weights_only=False)


# ------------------------------------------------------------------ tiny checkpoints (random weights, real layouts)
TINY_SPM_VOCAB = 200
TINY_ENCODER_CONFIG = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 40,
    "type_vocab_size": 1,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "layer_norm_eps": 1e-5,
    "vocab_size": TINY_SPM_VOCAB + 2,
}
TINY_CORPUS = [
    "A dog runs across the green park.",
    "Two children play football on the beach at sunset.",
    "A red car is parked in front of an old house.",
    "The market sells fresh fruit and vegetables.",
    "A woman reads a book under a tree.",
    "Mountains covered in snow behind a quiet lake.",
    "Un chien court dans le parc.",
    "Deux enfants jouent au football sur la plage.",
    "Ein Hund läuft über die grüne Wiese.",
    "Una mujer lee un libro bajo un árbol.",
    "Mbwa anakimbia katika bustani.",
    "Watoto wawili wanacheza mpira ufukweni.",
    "Con chó chạy qua công viên xanh.",
    "Hai đứa trẻ chơi bóng đá trên bãi biển.",
    "Anjing berlari di taman hijau.",
    "Dua anak bermain sepak bola di pantai.",
    "สุนัขวิ่งข้ามสวนสีเขียว",
    "เด็กสองคนเล่นฟุตบอลบนชายหาด",
    "개가 초록 공원을 가로질러 달린다.",
    "두 아이가 해변에서 축구를 한다.",
    "ኡሻ በአረንጓዴው መናፈሻ ውስጥ ይሮጣል።",
    "Aja kan n sare kọja ọgba alawọ ewe.",
]


def write_tiny_infoxlm(d: str | Path) -> Path:
    """Write a tiny random ``microsoft/infoxlm-large`` stand-in into ``d``: ``config.json`` (XLM-R, 2 layers,
    hidden 32, 40 positions), ``sentencepiece.bpe.model`` (a unigram model trained offline on
    :data:`TINY_CORPUS`, 200 pieces), ``tokenizer_config.json`` and ``special_tokens_map.json``; the files COMET
    reads from the encoder's repository (no weights: COMETKiwi's checkpoint holds them)."""
    import sentencepiece as spm
    from transformers import XLMRobertaConfig

    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TINY_CORPUS * 4),
        model_writer=buf,
        vocab_size=TINY_SPM_VOCAB,
        model_type="unigram",
        character_coverage=1.0,
        minloglevel=2,
        num_threads=1,
    )
    (d / "sentencepiece.bpe.model").write_bytes(buf.getvalue())
    XLMRobertaConfig(**TINY_ENCODER_CONFIG).save_pretrained(d)
    specials = {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "sep_token": "</s>",
        "pad_token": "<pad>",
        "cls_token": "<s>",
        "mask_token": "<mask>",
    }
    (d / "special_tokens_map.json").write_text(json.dumps(specials))
    (d / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 512, **specials}))
    return d


#: hparams.yaml of the published Unbabel/wmt22-cometkiwi-da, with a tiny estimator (hidden_sizes)
TINY_HPARAMS = {
    "activations": "Tanh",
    "batch_size": 16,
    "class_identifier": "unified_metric",
    "dropout": 0.1,
    "encoder_learning_rate": 1.0e-06,
    "encoder_model": "XLM-RoBERTa",
    "final_activation": None,
    "hidden_sizes": [24, 16],
    "input_segments": ["mt", "src"],
    "keep_embeddings_frozen": True,
    "layer": "mix",
    "layer_norm": False,
    "layer_transformation": "sparsemax_patch",
    "layerwise_decay": 0.95,
    "learning_rate": 1.5e-05,
    "load_pretrained_weights": True,
    "loss": "mse",
    "loss_lambda": 0.65,
    "nr_frozen_epochs": 0.3,
    "optimizer": "AdamW",
    "pool": "avg",
    "pretrained_model": ENCODER,
    "sent_layer": "mix",
    "train_data": [],
    "validation_data": [],
    "warmup_steps": 0,
    "word_layer": 24,
    "word_level_training": False,
    "error_labels": ["minor", "major"],
    "cross_entropy_weights": None,
    "local_files_only": False,
}


def write_tiny_published(d: str | Path, seed: int = 0, **overrides) -> Path:
    """Write a tiny random COMETKiwi in the published ``Unbabel/wmt22-cometkiwi-da`` layout into ``d``:
    ``hparams.yaml`` (:data:`TINY_HPARAMS` + ``overrides``) and ``checkpoints/model.ckpt`` (a Lightning
    checkpoint: ``state_dict`` with COMET's names, ``hyper_parameters``, ``pytorch-lightning_version``). Its
    encoder (``microsoft/infoxlm-large``) must be :func:`write_tiny_infoxlm`'s. Weights are random (seeded),
    with the layer-mix weights, ``gamma`` and the estimator spread so every layer counts and scores differ."""
    from transformers import XLMRobertaConfig

    d = Path(d)
    hp = {**TINY_HPARAMS, **overrides}
    torch.manual_seed(seed)
    model = COMETKiwi(hp, XLMRobertaConfig(**TINY_ENCODER_CONFIG), tokenizer=None)
    with torch.no_grad():
        for i, p in enumerate(model.layerwise_attention.scalar_parameters):
            p.fill_(0.4 * i - 0.3)
        model.layerwise_attention.gamma.fill_(1.3)
        for _name, p in model.encoder.named_parameters():  # BERT's 0.02 init makes every <s> vector alike
            if p.dim() == 2:
                nn.init.normal_(p, std=0.3)
        linears = [m for m in model.estimator.ff if isinstance(m, nn.Linear)]
        for m in linears:
            nn.init.normal_(m.weight, std=1.0 / m.in_features**0.5)
        linears[-1].bias.fill_(0.5)
    (d / "checkpoints").mkdir(parents=True, exist_ok=True)
    (d / "hparams.yaml").write_text(yaml.safe_dump(hp, sort_keys=True))
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save(
        {"epoch": 0, "global_step": 0, "pytorch-lightning_version": "2.2.0", "state_dict": sd, "hyper_parameters": hp},
        d / "checkpoints" / "model.ckpt",
    )
    return d
