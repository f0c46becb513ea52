"""Small helpers for pipeline tests."""

from __future__ import annotations

import glob
import os

import pyarrow.parquet as pq

from mella.config import BuildConfig
from mella.pipeline import BuildCorpus

FAST_CRAWL = {
    "politeness_delay_s": 0.0,
    "read_timeout_s": 1.5,
    "total_timeout_s": 4.0,
    "connect_timeout_s": 2.0,
    "max_retries": 2,
    "backoff_base_s": 0.05,
    "backoff_max_s": 1.5,
    "allow_private_hosts": ["127.0.0.1"],
}


#: The model-backed filters (CNN semantic dedup, NSFW moderation) switched off, for tests about other stages.
NO_MODELS = {"semantic": {"enabled": False}, "moderation": {"enabled": False}}


def build(output, seeds=None, warc=None, base_url=None, crawl=None, models=False, **kw) -> dict:
    """Run build_corpus in-process (Ray must be initialised); returns the funnel.

    ``models=False`` turns off the model-backed stages unless ``filters`` / ``d_ling.categorise`` say
    otherwise (they load EfficientNet-lite0 and open_nsfw and cost ~40 s a miniweb crawl on 2 cores);
    ``models=True`` runs the job's defaults.
    """
    if not models:
        kw["filters"] = {**NO_MODELS, **kw.get("filters", {})}
        d_ling = dict(kw.get("d_ling", {}))
        d_ling["categorise"] = {"enabled": False, **d_ling.get("categorise", {})}  # the CPU categoriser is a model too
        kw["d_ling"] = d_ling
    data = {"output": str(output), "crawl": {**FAST_CRAWL, **(crawl or {})}, **kw}
    if seeds:
        data["seeds"] = str(seeds)
    if warc:
        data["warc"] = [str(w) for w in warc]
    cfg = BuildConfig.model_validate(data)
    return BuildCorpus(cfg, seeds_base_url=base_url).run()


def read_dir(directory, columns=None) -> list[dict]:
    rows = []
    for p in sorted(glob.glob(os.path.join(str(directory), "*.parquet"))):
        rows.extend(pq.read_table(p, columns=columns).to_pylist())
    return rows


def path_of(url: str | None) -> str | None:
    """URL → path (drop scheme://host:port), to compare runs served on different ports."""
    if url is None:
        return None
    return "/" + url.split("://", 1)[-1].split("/", 1)[-1]


def pair_keys(out_dir) -> set[tuple]:
    rows = read_dir(os.path.join(str(out_dir), "d_know"), ["lang", "page_url", "image_url", "alt_text", "sha256"])
    return {(r["lang"], path_of(r["page_url"]), path_of(r["image_url"]), r["alt_text"], r["sha256"]) for r in rows}


def decisions(out_dir) -> list[str]:
    """Every decision of a build as sorted tab-separated lines, ports stripped from URLs:
    ``kept  lang  page  image`` for D_know rows and ``stage  reason  lang  page  image`` for rejects.

    Ids and reasons, not bytes: what issue 11 records before a refactor and compares after it
    (``tests/data/miniweb_decisions.tsv``, recorded by ``python tests/record_decisions.py``).
    """
    lines = []
    for r in read_dir(os.path.join(str(out_dir), "d_know"), ["lang", "page_url", "image_url"]):
        lines.append(
            "\t".join(["kept", "", r["lang"] or "", path_of(r["page_url"]) or "", path_of(r["image_url"]) or ""])
        )
    for r in read_dir(os.path.join(str(out_dir), "rejects"), ["stage", "reason", "lang", "page_url", "image_url"]):
        lines.append(
            "\t".join(
                [r["stage"], r["reason"], r["lang"] or "", path_of(r["page_url"]) or "", path_of(r["image_url"]) or ""]
            )
        )
    return sorted(lines)


def assert_funnel_balance(funnel: dict) -> None:
    """Every stage of a funnel balances: in = out + rejected; the image rows extract emitted are the first
    image stage's input; each image stage's output is the next one's input; the last equals D_know
    (plus the D_ling candidates, when D_ling ran)."""
    stages = funnel["stages"]
    for s in stages:
        assert s["in"] == s["out"] + s["rejected"], s
    extract = next(s for s in stages if s["stage"] == "extract")
    images = [s for s in stages if s["unit"] == "images"]
    if images:
        assert extract["images_out"] == images[0]["in"], (extract, images[0])
        for a, b in zip(images, images[1:]):
            assert a["out"] == b["in"], (a, b)
        assert images[-1]["out"] == funnel["d_know_total"] + sum(funnel.get("d_ling_candidates", {}).values())
    else:
        assert extract["images_out"] == funnel["d_know_total"]
