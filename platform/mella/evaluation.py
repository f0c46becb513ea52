"""Evaluation of the base model and the per-language adapters (paper 4.1.1-4.1.2, Tables 3 and 5, Figure 5).

Test sets: per language the held-out D_know and D_ling images of :mod:`mella.split` (100 + 100 in the
paper), i.e. exactly the images training left out. Each item is (image, evaluation prompt of its
source in its language from ``prompts.yaml``, reference): D_know → alt-text, D_ling → ``text``.

Models: per language the base model (method ``-``, as in Table 3) and one adapter per method
(``--method MELLA=mella-{lang}``; ``{seed}`` in the template selects one adapter per seed). Outputs
come from a running endpoint (:class:`EndpointGenerator`, OpenAI API of mella.serving) or from Ray
Data batch inference on an actor pool holding the same engine (:func:`generate_ray_data`).

Metrics (:mod:`mella.metrics`): keyword accuracy on D_know (TF-IDF keywords over the language's D_know
test references), BLEU / ROUGE-L / METEOR on D_ling. Reported ×100 like the paper's tables. Several
``seeds`` give mean ± sample standard deviation (Table 5); seeds change sampling when
``temperature > 0`` and the adapter when the method template has ``{seed}``; otherwise runs repeat.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import html
import io
import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field, model_validator

from mella import metrics
from mella.resources import Strict
from mella.split import split_by_image
from mella.train.prompts import prompts_for

#: Which column holds the reference of each source (RECORD_SCHEMA) and which prompt asks for it.
REFERENCE = {"d_know": "alt_text", "d_ling": "text"}
PROMPT_KEY = {"d_know": "eval_know", "d_ling": "eval_ling"}
METRICS = {"d_know": ("keyword_accuracy",), "d_ling": ("bleu", "rouge_l", "meteor")}
METRIC_TITLES = {"keyword_accuracy": "Keyword Accuracy", "meteor": "METEOR", "bleu": "BLEU", "rouge_l": "ROUGE-L"}
BASE_METHOD = "-"


@dataclass
class Item:
    """One test item: ``source`` is ``d_know``/``d_ling``; ``image`` the file bytes."""

    lang: str
    source: str
    id: str
    sha256: str
    image: bytes
    prompt: str
    reference: str


@dataclass
class Output:
    """One generation: the item's key, the run (seed, method, model) and the text."""

    lang: str
    source: str
    id: str
    seed: int
    method: str
    model: str
    text: str


# --------------------------------------------------------------------------------------------- test sets
def _read(data: Path, source: str) -> pa.Table | None:
    files = sorted((Path(data) / source).glob("*.parquet"))
    if not files:
        return None
    cols = ["id", "lang", "sha256", "image", REFERENCE[source]]
    return pa.concat_tables([pq.read_table(f, columns=cols) for f in files])


def load_test_items(data: str | Path, langs: list[str], n_test: int = 100, max_fraction: float = 0.2) -> list[Item]:
    """The held-out items of ``langs`` from ``data/d_know/*.parquet`` and ``data/d_ling/*.parquet``.

    Uses :func:`mella.split.split_by_image` (the split training uses). Items with an empty reference are
    dropped (they cannot be scored). Raises ``FileNotFoundError`` when neither source exists and
    ``KeyError`` for a language without prompts.
    """
    tables = {s: _read(Path(data), s) for s in REFERENCE}
    if all(t is None for t in tables.values()):
        raise FileNotFoundError(f"no d_know/*.parquet or d_ling/*.parquet under {data}")
    items = []
    for lang in langs:
        prompts = prompts_for(lang)
        for source, split in split_by_image(tables, lang, n_test, max_fraction).items():
            t = split.test
            for rid, sha, img, ref in zip(*(t[c].to_pylist() for c in ("id", "sha256", "image", REFERENCE[source]))):
                if ref and ref.strip() and metrics.tokenize(ref, lang):
                    items.append(Item(lang, source, rid, sha, img, getattr(prompts, PROMPT_KEY[source]), ref))
    return items


# --------------------------------------------------------------------------------------------- generation
def _mime(data: bytes) -> str:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            return Image.MIME.get(img.format, "image/png")
    except Exception:
        return "image/png"


def chat_body(model: str, item: Item, max_tokens: int, temperature: float, seed: int) -> dict:
    """OpenAI chat-completions body: the item's image (data URL) and evaluation prompt."""
    url = f"data:{_mime(item.image)};base64,"
    return {
        "model": model,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "seed": seed,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": url + base64.b64encode(item.image).decode()}},
                    {"type": "text", "text": item.prompt},
                ],
            }
        ],
    }


class EndpointGenerator:
    """Generations from a mella.serving (or any OpenAI-compatible) endpoint, ``concurrency`` in flight.

    Raises ``RuntimeError`` with the server's error message for any non-200 answer.
    """

    def __init__(self, url: str, token: str | None = None, concurrency: int = 8, timeout_s: float = 600):
        self.url = url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.concurrency, self.timeout_s = concurrency, timeout_s

    def models(self) -> list[dict]:
        """``GET /v1/models`` entries."""
        import httpx

        r = httpx.get(f"{self.url}/v1/models", headers=self.headers, timeout=self.timeout_s)
        r.raise_for_status()
        return r.json()["data"]

    def generate(self, bodies: list[dict]) -> list[str]:
        """Answer texts for chat bodies, in order."""
        return asyncio.run(self._all(bodies))

    async def _all(self, bodies: list[dict]) -> list[str]:
        import httpx

        sem = asyncio.Semaphore(self.concurrency)
        async with httpx.AsyncClient(timeout=self.timeout_s, headers=self.headers) as client:

            async def one(body: dict) -> str:
                async with sem:
                    r = await client.post(f"{self.url}/v1/chat/completions", json=body)
                if r.status_code != 200:
                    raise RuntimeError(f"{body['model']}: HTTP {r.status_code}: {r.text[:500]}")
                return r.json()["choices"][0]["message"]["content"]

            return await asyncio.gather(*(one(b) for b in bodies))


class _EngineActor:
    """Ray Data actor: one VLMEngine (base model loaded once) answering rows with ``model``/``prompt``/``image``."""

    def __init__(self, backbone: str, model: str, adapters: str | None, base_name: str, engine_kwargs: dict):
        from mella.serving.engine import VLMEngine
        from mella.serving.registry import discover

        self.registry = discover(adapters, base_name)
        self.engine = VLMEngine(backbone, model, **engine_kwargs)

    def __call__(self, batch: dict) -> dict:
        from mella.serving.protocol import GenRequest

        names = [None if m == self.registry.base_name else m for m in batch["model"]]
        reqs = [
            GenRequest(
                [{"role": "user", "parts": [("image", bytes(img)), ("text", p)]}],
                max_tokens=int(mt),
                temperature=float(t),
                seed=int(s),
            )
            for img, p, mt, t, s in zip(
                batch["image"], batch["prompt"], batch["max_tokens"], batch["temperature"], batch["seed"]
            )
        ]
        paths = {a.name: a.path for a in self.registry.adapters.values()}
        out = self.engine.generate(reqs, names, paths)
        bad = [str(o) for o in out if not hasattr(o, "text")]
        if bad:
            raise ValueError(f"generation failed: {bad[0]}")
        return {"key": batch["key"], "text": [o.text for o in out]}


def generate_ray_data(
    bodies: list[dict],
    *,
    backbone: str,
    model: str,
    adapters: str | None,
    base_name: str,
    engine_kwargs: dict | None = None,
    batch_size: int = 8,
    pool_size: int = 1,
    num_cpus: float = 1,
    num_gpus: float = 0,
) -> list[str]:
    """Ray Data batch inference for chat bodies made by :func:`chat_body` (same engine as the server)."""
    import ray

    rows = []
    for k, b in enumerate(bodies):
        content = b["messages"][0]["content"]
        image = base64.b64decode(content[0]["image_url"]["url"].split(",", 1)[1])
        rows.append(
            {
                "key": k,
                "model": b["model"],
                "image": image,
                "prompt": content[1]["text"],
                "max_tokens": b["max_tokens"],
                "temperature": b["temperature"],
                "seed": b["seed"],
            }
        )
    ds = ray.data.from_items(rows).map_batches(
        _EngineActor,
        fn_constructor_kwargs=dict(
            backbone=backbone, model=model, adapters=adapters, base_name=base_name, engine_kwargs=engine_kwargs or {}
        ),
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=pool_size),
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        batch_format="numpy",
    )
    texts = {int(r["key"]): str(r["text"]) for r in ds.take_all()}
    return [texts[k] for k in range(len(bodies))]


# --------------------------------------------------------------------------------------------- scoring
def score(items: list[Item], outputs: list[Output], keyword_top_k: int = 5) -> tuple[list[dict], dict]:
    """Per (seed, method, model, lang, metric) values ×100, and metric facts per language.

    Keyword accuracy uses the language's D_know test references as the TF-IDF corpus (paper 4.1.2).
    Returns ``(rows, facts)``: rows ``{seed, method, model, lang, metric, value, n}``; facts per language
    ``{tokenizer, stemmer, bleu_signature, keyword_top_k}``.
    """
    by_key = {(i.lang, i.source, i.id): i for i in items}
    groups: dict[tuple, list[tuple[str, str]]] = {}
    for o in outputs:
        it = by_key[(o.lang, o.source, o.id)]
        groups.setdefault((o.seed, o.method, o.model, o.lang, o.source), []).append((o.text, it.reference))
    rows, facts = [], {}
    for (seed, method, model, lang, source), pairs in sorted(groups.items()):
        preds, refs = [p for p, _ in pairs], [r for _, r in pairs]
        fact = facts.setdefault(
            lang,
            {
                "tokenizer": f"{lang}:{metrics.tokenizer_name(lang)}",
                "stemmer": metrics.stemmer_name(lang),
                "keyword_top_k": keyword_top_k,
            },
        )
        if source == "d_know":
            corpus = [i.reference for i in items if i.lang == lang and i.source == "d_know"]
            values = {"keyword_accuracy": metrics.keyword_accuracy(preds, refs, lang, keyword_top_k, corpus) * 100}
        else:
            bleu, signature = metrics.bleu(preds, refs, lang)
            fact["bleu_signature"] = signature
            values = {
                "bleu": bleu,
                "rouge_l": metrics.rouge_l(preds, refs, lang) * 100,
                "meteor": metrics.meteor(preds, refs, lang) * 100,
            }
        rows += [
            {"seed": seed, "method": method, "model": model, "lang": lang, "metric": m, "value": v, "n": len(refs)}
            for m, v in values.items()
        ]
    return rows, facts


def aggregate(rows: list[dict], backbone: str) -> list[dict]:
    """Mean and sample standard deviation over seeds per (method, lang, metric); std 0 for one seed."""
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["lang"], r["metric"]), []).append(r["value"])
    return [
        {
            "backbone": backbone,
            "method": m,
            "lang": lang,
            "metric": metric,
            "mean": statistics.fmean(v),
            "std": statistics.stdev(v) if len(v) > 1 else 0.0,
            "seeds": len(v),
        }
        for (m, lang, metric), v in sorted(groups.items())
    ]


# --------------------------------------------------------------------------------------------- report
def _cell(a: dict | None, with_std: bool) -> str:
    if a is None:
        return "n/a"
    return f"{a['mean']:.2f} ± {a['std']:.2f}" if with_std else f"{a['mean']:.2f}"


def table3(agg: list[dict], langs: list[str], methods: list[str]) -> tuple[str, list[list[str]]]:
    """Table 3 layout: one block per metric, rows backbone × method, columns languages. Markdown + CSV rows."""
    with_std = any(a["seeds"] > 1 for a in agg)
    index = {(a["backbone"], a["method"], a["lang"], a["metric"]): a for a in agg}
    backbones = sorted({a["backbone"] for a in agg})
    md, rows = [], [["metric", "backbone", "method", *langs]]
    for metric in METRIC_TITLES:
        if not any(a["metric"] == metric for a in agg):
            continue
        md += [
            f"**{METRIC_TITLES[metric]}** (0-100)",
            "",
            "| Backbone | Method | " + " | ".join(lang.upper() for lang in langs) + " |",
            "|---|---|" + "---:|" * len(langs),
        ]
        for bb in backbones:
            for method in methods:
                cells = [_cell(index.get((bb, method, lang, metric)), with_std) for lang in langs]
                md.append(f"| {bb} | {method} | " + " | ".join(cells) + " |")
                rows.append([metric, bb, method, *cells])
        md.append("")
    return "\n".join(md), rows


def chart(agg: list[dict], langs: list[str], methods: list[str], path: Path) -> Path:
    """Grouped bars (languages × methods) per metric with ±std error bars, PNG via matplotlib Agg."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = [m for m in METRIC_TITLES if any(a["metric"] == m for a in agg)]
    index = {(a["method"], a["lang"], a["metric"]): a for a in agg}
    fig, axes = plt.subplots(
        len(present), 1, figsize=(max(6, 1.2 * len(langs) * len(methods)), 2.8 * len(present)), squeeze=False
    )
    width = 0.8 / max(1, len(methods))
    for ax, metric in zip(axes[:, 0], present):
        for k, method in enumerate(methods):
            vals = [index.get((method, lang, metric)) for lang in langs]
            xs = [i + (k - (len(methods) - 1) / 2) * width for i in range(len(langs))]
            ax.bar(
                xs,
                [v["mean"] if v else 0 for v in vals],
                width,
                yerr=[v["std"] if v else 0 for v in vals],
                capsize=3,
                label="base" if method == BASE_METHOD else method,
            )
        ax.set_xticks(range(len(langs)), [lang.upper() for lang in langs])
        ax.set_ylabel(f"{METRIC_TITLES[metric]} (0-100)")
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", ncol=len(methods), fontsize="small")
    fig.suptitle(f"{agg[0]['backbone'] if agg else ''}: base vs fine-tuned", x=0.02, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _thumb(data: bytes, size: int = 256) -> str:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            img = img.convert("RGB")
            img.thumbnail((size, size))
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=80)
        return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
    except Exception:
        return ""


def export_pairs(items: list[Item], outputs: list[Output], out_dir: Path, seed: int) -> tuple[Path, Path]:
    """Paired outputs for human evaluation (paper Figure 5): base vs each method on the same image.

    Writes ``pairs.csv`` (one row per item × method) and ``pairs.html`` (image thumbnail, prompt,
    reference, base and fine-tuned answers side by side; all text HTML-escaped, ``dir="auto"`` for
    right-to-left scripts). Uses the runs of ``seed``.
    """
    by = {(o.lang, o.source, o.id, o.method): o for o in outputs if o.seed == seed}
    methods = sorted({o.method for o in outputs} - {BASE_METHOD})
    fields = [
        "lang",
        "source",
        "id",
        "sha256",
        "prompt",
        "reference",
        "base_model",
        "base_output",
        "method",
        "model",
        "output",
    ]
    rows = []
    for it in items:
        base = by.get((it.lang, it.source, it.id, BASE_METHOD))
        for m in methods:
            tuned = by.get((it.lang, it.source, it.id, m))
            if base and tuned:
                rows.append(
                    dict(
                        lang=it.lang,
                        source=it.source,
                        id=it.id,
                        sha256=it.sha256,
                        prompt=it.prompt,
                        reference=it.reference,
                        base_model=base.model,
                        base_output=base.text,
                        method=m,
                        model=tuned.model,
                        output=tuned.text,
                    )
                )
    csv_path, html_path = out_dir / "pairs.csv", out_dir / "pairs.html"
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    images = {(it.lang, it.source, it.id): it.image for it in items}
    e = html.escape
    parts = [
        "<!doctype html><meta charset='utf-8'><title>MELLA paired outputs</title>",
        "<style>body{font-family:sans-serif}td{vertical-align:top;border-top:1px solid #ccc;padding:6px;"
        "max-width:28em}img{max-width:256px}</style>",
        "<h1>Paired outputs: base vs fine-tuned (same image)</h1><table><tr><th>lang / source</th><th>image</th>"
        "<th>prompt</th><th>reference</th><th>base</th><th>fine-tuned</th></tr>",
    ]
    for r in rows:
        src = _thumb(images[(r["lang"], r["source"], r["id"])])
        parts.append(
            f"<tr><td>{e(r['lang'])} / {e(r['source'])}<br><small>{e(r['sha256'][:12])}</small></td>"
            f"<td><img src='{src}' alt=''></td><td dir='auto'>{e(r['prompt'])}</td>"
            f"<td dir='auto'>{e(r['reference'])}</td><td dir='auto'><b>{e(r['base_model'])}</b><br>"
            f"{e(r['base_output'])}</td><td dir='auto'><b>{e(r['method'])}: {e(r['model'])}</b><br>"
            f"{e(r['output'])}</td></tr>"
        )
    parts.append("</table>")
    html_path.write_text("\n".join(parts), encoding="utf-8")
    return csv_path, html_path


def write_report(
    out_dir: Path,
    *,
    items: list[Item],
    outputs: list[Output],
    rows: list[dict],
    facts: dict,
    backbone: str,
    langs: list[str],
    methods: list[str],
    config: dict,
    missing: list[str],
) -> dict:
    """Write report.md/.csv/.json, chart.png, outputs.jsonl, pairs.csv/.html under ``out_dir``; return paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    agg = aggregate(rows, backbone)
    md, csv_rows = table3(agg, langs, methods)
    seeds = sorted({r["seed"] for r in rows})
    counts = {
        f"{lang}/{s}": sum(1 for i in items if i.lang == lang and i.source == s) for lang in langs for s in REFERENCE
    }
    notes = [
        f"Test items per language/source: {counts}.",
        f"Seeds: {seeds}" + (" (mean ± sample std)" if len(seeds) > 1 else "") + ".",
        "BLEU signatures: "
        + "; ".join(f"{k}: {v.get('bleu_signature', 'n/a')} ({v['tokenizer']})" for k, v in facts.items()),
        f"Method `{BASE_METHOD}` is the base model without adapter (paper Table 3).",
    ]
    if missing:
        notes.append("Not evaluated (model not available): " + ", ".join(missing))
    paths = {
        "markdown": out_dir / "report.md",
        "csv": out_dir / "report.csv",
        "json": out_dir / "report.json",
        "chart": out_dir / "chart.png",
        "outputs": out_dir / "outputs.jsonl",
    }
    paths["markdown"].write_text(
        "# MELLA evaluation (Table 3 layout)\n\n" + md + "\n" + "\n\n".join(notes) + "\n", encoding="utf-8"
    )
    with open(paths["csv"], "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(csv_rows)
    paths["json"].write_text(
        json.dumps(
            {
                "config": config,
                "backbone": backbone,
                "langs": langs,
                "methods": methods,
                "aggregate": agg,
                "runs": rows,
                "metric_facts": facts,
                "test_counts": counts,
                "missing": missing,
            },
            indent=2,
            ensure_ascii=False,
            default=str,
        ),
        encoding="utf-8",
    )
    chart(agg, langs, methods, paths["chart"])
    with open(paths["outputs"], "w", encoding="utf-8") as f:
        for o in outputs:
            f.write(json.dumps(asdict(o), ensure_ascii=False) + "\n")
    paths["pairs_csv"], paths["pairs_html"] = export_pairs(items, outputs, out_dir, seeds[0] if seeds else 0)
    return {k: str(v) for k, v in paths.items()}


# --------------------------------------------------------------------------------------------- the job
class EvalConfig(Strict):
    """Settings of one evaluation run (jobs/evaluate.py). Exactly one of ``endpoint`` / ``model``."""

    data: Path  # corpus dir with d_know/*.parquet and d_ling/*.parquet (the one training used)
    output: Path
    langs: list[str]
    methods: dict[str, str] = Field(default_factory=lambda: {"MELLA": "mella-{lang}"})  # name -> model template
    seeds: list[int] = Field(default_factory=lambda: [0])
    temperature: float = Field(0.0, ge=0, le=2)
    max_tokens: int = Field(256, ge=1)
    keyword_top_k: int = Field(5, ge=1)
    n_test: int = Field(100, ge=1)
    test_max_fraction: float = Field(0.2, gt=0, le=1)
    backbone_label: str | None = None  # row label; default: the base model's name
    # endpoint mode
    endpoint: str | None = None
    token: str | None = Field(None, repr=False)
    concurrency: int = Field(8, ge=1)
    # Ray Data mode
    model: Path | None = None
    backbone: str = "qwen2-vl"
    adapters: Path | None = None
    base_model_name: str | None = None
    engine: dict = Field(default_factory=dict)  # VLMEngine kwargs (min_pixels, max_pixels, device ...)
    batch_size: int = 8
    pool_size: int = Field(1, ge=1, description="engine actors in the Ray Data pool (the name every pool size has)")
    num_cpus: float = 1
    num_gpus: float = 0

    @model_validator(mode="after")
    def _check(self) -> EvalConfig:
        if (self.endpoint is None) == (self.model is None):
            raise ValueError("give exactly one of endpoint (serve mode) or model (Ray Data mode)")
        return self


def run(cfg: EvalConfig) -> dict:
    """Generate with the base model and every method's adapter on the test items, score, write the report.

    Returns ``{"paths": ..., "aggregate": [...], "missing": [...]}``. A (method, language) whose model the
    endpoint/adapter directory does not have is skipped and listed in ``missing``. Raises
    ``ValueError`` when there are no test items.
    """
    items = load_test_items(cfg.data, cfg.langs, cfg.n_test, cfg.test_max_fraction)
    if not items:
        raise ValueError(f"no test items for {cfg.langs} under {cfg.data}")
    if cfg.endpoint:
        gen = EndpointGenerator(cfg.endpoint, cfg.token, cfg.concurrency)
        listed = gen.models()
        base = (
            next(m["id"] for m in listed if m.get("adapter") is False)
            if any(m.get("adapter") is False for m in listed)
            else listed[0]["id"]
        )
        available = {m["id"] for m in listed}
    else:
        from mella.serving.registry import discover

        base = cfg.base_model_name or Path(cfg.model).name
        available = set(discover(cfg.adapters, base).names())
    jobs, missing = [], []  # (item, seed, method, model)
    for seed in cfg.seeds:
        for it in items:
            jobs.append((it, seed, BASE_METHOD, base))
            for method, template in cfg.methods.items():
                name = template.format(lang=it.lang, seed=seed)
                if name in available:
                    jobs.append((it, seed, method, name))
                elif f"{method}:{name}" not in missing:
                    missing.append(f"{method}:{name}")
    bodies = [chat_body(m, it, cfg.max_tokens, cfg.temperature, seed) for it, seed, _, m in jobs]
    if cfg.endpoint:
        texts = gen.generate(bodies)
    else:
        texts = generate_ray_data(
            bodies,
            backbone=cfg.backbone,
            model=str(cfg.model),
            adapters=str(cfg.adapters) if cfg.adapters else None,
            base_name=base,
            engine_kwargs=cfg.engine,
            batch_size=cfg.batch_size,
            pool_size=cfg.pool_size,
            num_cpus=cfg.num_cpus,
            num_gpus=cfg.num_gpus,
        )
    outputs = [Output(it.lang, it.source, it.id, seed, method, m, t) for (it, seed, method, m), t in zip(jobs, texts)]
    rows, facts = score(items, outputs, cfg.keyword_top_k)
    langs = [lang for lang in cfg.langs if any(i.lang == lang for i in items)]
    methods = [BASE_METHOD, *cfg.methods]
    paths = write_report(
        cfg.output,
        items=items,
        outputs=outputs,
        rows=rows,
        facts=facts,
        backbone=cfg.backbone_label or base,
        langs=langs,
        methods=methods,
        config=cfg.model_dump(mode="json", exclude={"token"}),
        missing=missing,
    )
    return {"paths": paths, "aggregate": aggregate(rows, cfg.backbone_label or base), "missing": missing}
