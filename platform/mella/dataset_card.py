"""``DIR/README.md``: a Hugging Face dataset card for a build output, so ``datasets.load_dataset(DIR)`` works.

Format: the Hub's dataset card (https://huggingface.co/docs/hub/datasets-cards), YAML front matter +
Markdown. ``configs`` (https://huggingface.co/docs/hub/datasets-manual-configuration):

- ``default`` (loaded by ``load_dataset(DIR)`` with no arguments): splits ``d_know`` and ``d_ling``;
- ``d_know`` and ``d_ling``: one split per language (``load_dataset(DIR, "d_know", split="hu")``).

Per-language splits need per-language files. The build writes parts that mix languages, so
:func:`partition_by_language` rewrites ``d_know/`` and ``d_ling/`` as ``part-<lang>-<n>.parquet``
(same rows and schema, streamed, swapped in whole; a no-op when already done); everything else
that reads ``d_know/*.parquet`` is unaffected. Body: per-language counts, the funnel, provenance
(hosts, input WARCs, fetch dates), the licence caveat for web images and the filtering steps (paper 3.1,
appendix B.2).
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import uuid
from collections import Counter
from urllib.parse import urlsplit

import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from mella.io import replace_dir
from mella.languages import load_languages

DATASETS = ("d_know", "d_ling")
_PART = re.compile(r"^part-(?P<lang>[A-Za-z0-9_]+)-\d{5}\.parquet$")
#: Hub ``size_categories`` bins (upper bounds exclusive)
SIZE_BINS = [
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
    (100_000_000, "10M<n<100M"),
    (1_000_000_000, "100M<n<1B"),
]


def size_category(n: int) -> str:
    return next((label for bound, label in SIZE_BINS if n < bound), "n>1B")


def partition_by_language(directory: str, rows_per_file: int = 50_000) -> dict[str, list[str]]:
    """Rewrite ``directory/*.parquet`` as ``part-<lang>-<n>.parquet`` files of one language each.

    Streams 8,192 rows at a time (memory: one batch per open language file); writes into a staging
    directory swapped in whole (:func:`mella.io.replace_dir`). Returns ``{lang: [file names]}``.
    Raises ``ValueError`` on a row with a null or non-``[A-Za-z0-9_]`` language code.
    """
    files = sorted(glob.glob(os.path.join(directory, "*.parquet")))
    if all(_PART.match(os.path.basename(f)) for f in files):
        out: dict[str, list[str]] = {}
        for f in files:
            out.setdefault(_PART.match(os.path.basename(f))["lang"], []).append(os.path.basename(f))
        return out
    staging = f"{directory.rstrip(os.sep)}.staging-{uuid.uuid4().hex[:8]}"
    os.makedirs(staging)
    writers: dict[str, list] = {}  # lang -> [writer, rows in file, file index]
    names: dict[str, list[str]] = {}

    def writer_for(lang: str, schema):
        w = writers.get(lang)
        if w is None or w[1] >= rows_per_file:
            if w is not None:
                w[0].close()
            n = len(names.get(lang, []))
            name = f"part-{lang}-{n:05d}.parquet"
            names.setdefault(lang, []).append(name)
            w = writers[lang] = [pq.ParquetWriter(os.path.join(staging, name), schema, compression="zstd"), 0]
        return w

    done = False
    try:
        for f in files:
            for rb in pq.ParquetFile(f).iter_batches(batch_size=8192):
                langs = rb.column(rb.schema.get_field_index("lang"))
                for lang in pc.unique(langs).to_pylist():
                    if not lang or not re.fullmatch(r"[A-Za-z0-9_]+", lang):
                        raise ValueError(f"{f}: language code {lang!r} cannot name a split")
                    part = rb.filter(pc.equal(langs, lang))
                    w = writer_for(lang, rb.schema)
                    w[0].write_batch(part)
                    w[1] += part.num_rows
        done = True
    finally:
        for w in writers.values():
            w[0].close()
        if not done:  # a failed rewrite leaves the original parts and no staging folder
            shutil.rmtree(staging, ignore_errors=True)
    replace_dir(staging, directory)
    return dict(sorted(names.items()))


def _provenance(out_dir: str) -> dict:
    hosts: Counter = Counter()
    sources: Counter = Counter()
    first = last = None
    for ds in DATASETS:
        for f in sorted(glob.glob(os.path.join(out_dir, ds, "*.parquet"))):
            t = pq.read_table(f, columns=["page_url", "source", "fetched_at"])
            hosts.update(urlsplit(u).hostname or "?" for u in t["page_url"].to_pylist() if u)
            sources.update(t["source"].to_pylist())
            mm = pc.min_max(t["fetched_at"]).as_py()
            if mm["min"] is not None:
                first = min(first, mm["min"]) if first else mm["min"]
                last = max(last, mm["max"]) if last else mm["max"]
    warcs = set()
    for unit in glob.glob(os.path.join(out_dir, "_work", "units", "*", "UNIT.json")):
        with open(unit, encoding="utf-8") as fh:
            warcs.update(os.path.basename(p) for p in json.load(fh).get("files", []))
    return {"hosts": hosts, "sources": sources, "first": first, "last": last, "warcs": sorted(warcs)}


#: What each built-in stage does, for the card's "How the data was filtered" (listed in the funnel's order, which is
#: the plan's; a stage the plan lacks is not described, a user's stage is named).
STAGE_TEXT = {
    "crawl": "Crawl the seed sites within their registered domains, honouring robots.txt, politeness delays and "
    "size caps; every response recorded as WARC.",
    "extract": "Extract `<img>` and alt-text from HTML pages in a target language.",
    "alt_text": "Alt-text: drop empty, too short, filename-like and boilerplate alt-texts (→ D_ling with captioning).",
    "langid": "Alt-text language: HTML language metadata and fastText lid.176 with script and orthography checks "
    "(→ D_ling when not in the page's language).",
    "fetch": "Images: fetch (or read back from WARC).",
    "decode": "Decode (Pillow, decompression-bomb guard).",
    "resolution": "Keep images with both sides > 256 px.",
    "moderation": "Moderation: open_nsfw score < 0.8.",
    "moderation_api": "Moderation API: reject the categories it flags.",
    "exact_dedup": "Exact duplicates per language (decoded pixels).",
    "phash_dedup": "pHash near-duplicates per language (Hamming distance).",
    "semantic_dedup": "CNN (EfficientNet-lite0) semantic near-duplicates per language (cosine).",
    "caption": "D_ling: category-specific English captions by an MLLM.",
    "translate": "D_ling: machine translation into the target language.",
    "qe": "D_ling: quality estimation of the translations.",
}


def filter_steps(funnel: dict) -> list[str]:
    """Numbered Markdown lines, one per stage of the build's funnel (the plan's order): :data:`STAGE_TEXT`, or the
    stage's name and top reasons for a stage the platform does not know (a user's). Without a funnel (a corpus not
    written by build_corpus): the default plan's stages."""
    stages = funnel.get("stages")
    if not stages:
        from mella.plan import CRAWL, DEFAULT_PLAN

        stages = [{"stage": name, "reasons": {}} for name in (CRAWL, *DEFAULT_PLAN)]
    lines = []
    for k, s in enumerate(stages, 1):
        text = (
            STAGE_TEXT.get(s["stage"]) or f"`{s['stage']}` (a user stage): rejects {', '.join(s['reasons']) or 'none'}."
        )
        lines.append(f"{k}. {text}")
    return lines


def _about(funnel: dict) -> list[str]:
    """The licence caveat and the filtering steps (paper 3.1, appendix B.2), the steps from the build's plan."""
    return [
        "",
        "## Licence",
        "",
        "The images and alt-texts were published on the web by third parties and remain theirs: their "
        "copyright and licences (where stated on the source pages) apply, and this card grants no rights in "
        "them. Every row keeps `page_url` and `image_url` so the source and its terms can be checked; use "
        "the data for research in line with the source sites' terms and applicable law (e.g. text and data "
        "mining exceptions), and remove rows on request of a rights holder.",
        "",
        "## How the data was filtered (paper 3.1, appendix B.2)",
        "",
        *filter_steps(funnel),
        "",
        "Columns: see `platform/mella/schema.py` of the MELLA platform (`alt_text` is the D_know text, `text` "
        "the D_ling translation, `caption_en` its English source). The report of this build is in "
        "`report/index.html`.",
        "",
    ]


def features(out_dir: str) -> list[dict]:
    """The card's ``features`` (Hub YAML form of ``datasets.Features``) from the parts' Arrow schema: every
    column with its type, ``image`` (file bytes) declared ``datasets.Image`` so ``load_dataset`` decodes it."""
    import datasets

    files = [f for ds in DATASETS for f in sorted(glob.glob(os.path.join(out_dir, ds, "*.parquet")))]
    if not files:
        return []
    feats = datasets.Features.from_arrow_schema(pq.read_schema(files[0]))
    if "image" in feats:
        feats["image"] = datasets.Image()
    return feats._to_yaml_list()


def card(out_dir: str) -> tuple[dict, str]:
    """``(front matter dict, Markdown body)`` for ``out_dir`` (partitions by language first).

    Any build output works: D_know and D_ling with or without rows, either absent (no ``configs`` then)."""
    names = {
        ds: partition_by_language(os.path.join(out_dir, ds))
        for ds in DATASETS
        if glob.glob(os.path.join(out_dir, ds, "*.parquet"))
    }
    counts = {
        ds: {
            lang: sum(pq.ParquetFile(os.path.join(out_dir, ds, n)).metadata.num_rows for n in files)
            for lang, files in names.get(ds, {}).items()
        }
        for ds in DATASETS
    }
    front = _front(out_dir, names, counts)
    funnel = {}
    if os.path.exists(os.path.join(out_dir, "funnel.json")):
        with open(os.path.join(out_dir, "funnel.json"), encoding="utf-8") as fh:
            funnel = json.load(fh)
    lines = _intro(out_dir, front, counts) + _funnel_lines(funnel) + _provenance_lines(out_dir, funnel) + _about(funnel)
    return front, "\n".join(lines)


def _front(out_dir: str, names: dict, counts: dict) -> dict:
    """The YAML front matter: Hub metadata, ``configs`` (splits) and their ``dataset_info`` features."""
    total = sum(sum(c.values()) for c in counts.values())
    configs = [
        {
            "config_name": "default",
            "default": True,
            "data_files": [{"split": ds, "path": f"{ds}/*.parquet"} for ds in DATASETS if names.get(ds)],
        }
    ]
    configs = [c for c in configs if c["data_files"]]  # omitted when there are no rows at all
    for ds in DATASETS:
        if names.get(ds):
            configs.append(
                {
                    "config_name": ds,
                    "data_files": [{"split": lang, "path": f"{ds}/part-{lang}-*.parquet"} for lang in names[ds]],
                }
            )
    front = {
        "pretty_name": f"MELLA corpus {os.path.basename(os.path.abspath(out_dir))}",
        "language": sorted({lang for c in counts.values() for lang in c}),
        "multilinguality": "multilingual",
        "license": "other",
        "task_categories": ["image-to-text", "image-text-to-text"],
        "size_categories": [size_category(total)],
        "source_datasets": ["original"],
        "tags": ["mella", "alt-text", "image-captioning", "web-crawl", "low-resource-languages"],
        "configs": configs,
    }
    feats = features(out_dir) if configs else []
    if feats:
        front["dataset_info"] = [{"config_name": c["config_name"], "features": feats} for c in configs]
    return front


def _intro(out_dir: str, front: dict, counts: dict) -> list[str]:
    names_of = load_languages()
    lines = [
        f"# {front['pretty_name']}",
        "",
        "Image-text pairs for multimodal LLMs in low-resource languages, built with the MELLA platform "
        "(dual-source data, paper arXiv:2508.05502): **D_know**, native web images with their in-language "
        "alt-text (cultural knowledge), and **D_ling**, images whose alt-text was unusable, captioned in "
        "English by an MLLM and machine-translated (linguistic capability).",
        "",
        "```python",
        "from datasets import load_dataset",
        f"ds = load_dataset({out_dir!r})            # splits d_know, d_ling",
        f'hu = load_dataset({out_dir!r}, "d_know", split="hu")',
        '# row["image"] is a PIL image (datasets.Image)',
        "```",
        "",
        "## Rows per language",
        "",
        "| language | D_know | D_ling |",
        "|---|---:|---:|",
    ]
    for lang in front["language"]:
        name = names_of[lang].name if lang in names_of else lang
        lines.append(f"| {lang} ({name}) | {counts['d_know'].get(lang, 0)} | {counts['d_ling'].get(lang, 0)} |")
    lines.append(f"| **all** | {sum(counts['d_know'].values())} | {sum(counts['d_ling'].values())} |")
    return lines


def _funnel_lines(funnel: dict) -> list[str]:
    if not funnel.get("stages"):
        return []
    lines = [
        "",
        "## Funnel",
        "",
        "| stage | unit | in | out | rejected | top reasons |",
        "|---|---|---:|---:|---:|---|",
    ]
    for s in funnel["stages"]:
        top = ", ".join(f"{k}: {v}" for k, v in sorted(s["reasons"].items(), key=lambda kv: -kv[1])[:4])
        lines.append(f"| {s['stage']} | {s['unit']} | {s['in']} | {s['out']} | {s['rejected']} | {top} |")
    return lines


def _provenance_lines(out_dir: str, funnel: dict) -> list[str]:
    prov = _provenance(out_dir)
    dates = f"{prov['first']:%Y-%m-%d %H:%M} – {prov['last']:%Y-%m-%d %H:%M} UTC" if prov["first"] else "unknown"
    lines = [
        "",
        "## Provenance",
        "",
        f"- Sources of the rows: {', '.join(f'{k}: {v}' for k, v in sorted(prov['sources'].items(), key=str))} "
        "(`crawl`: pages crawled live by the platform, recorded as WARC under `warc/`; `warc`: given WARC files, "
        "e.g. Common Crawl).",
        f"- Images fetched (or WARC-dated): {dates}.",
        "- Page hosts (rows): " + ", ".join(f"{h} ({n})" for h, n in prov["hosts"].most_common(20)) + ".",
        "- Crawl per host (pages ok / failed): "
        + (
            ", ".join(
                f"{h} ({v.get('ok', 0)} / {sum((v.get('failed') or {}).values())})"
                for h, v in sorted(funnel.get("hosts", {}).items())
            )
            or "none (WARC input)"
        )
        + ".",
    ]
    if prov["warcs"]:
        lines.append(
            f"- Page WARC files read: {len(prov['warcs'])} ("
            + ", ".join(prov["warcs"][:10])
            + (", ..." if len(prov["warcs"]) > 10 else "")
            + ")."
        )
    return lines


def write_card(out_dir: str) -> str:
    """Write ``out_dir/README.md`` (atomic); return its path."""
    front, body = card(out_dir)
    text = "---\n" + yaml.safe_dump(front, allow_unicode=True, sort_keys=False) + "---\n\n" + body
    path = os.path.join(out_dir, "README.md")
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)
    return path
