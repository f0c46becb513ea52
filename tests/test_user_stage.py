"""Add a stage without forking (issue 11): a stage class in any importable module, one config line.

The example is a real filter users ask for — drop banners and strips (images much wider than tall,
or the reverse), which carry little content for their size — run through build_corpus on the miniweb.
"""

from __future__ import annotations

import pytest
from conftest import MINIWEB, needs_miniweb
from helpers import build, read_dir

from mella.stages.base import Filter


class AspectRatioFilter(Filter):
    """Drop images whose long side exceeds ``max_ratio`` times the short side (reason ``too_elongated``)."""

    name = "aspect_ratio"
    reads = ("width", "height")

    def __init__(self, max_ratio: float = 2.0) -> None:
        self.max_ratio = max_ratio

    def filter(self, row: dict) -> tuple[str, str] | None:
        w, h = row["width"], row["height"]
        ratio = max(w, h) / min(w, h)
        return None if ratio <= self.max_ratio else ("too_elongated", f"{w}x{h} px: {ratio:.2f} > {self.max_ratio}")


@pytest.mark.slow
@needs_miniweb()
def test_user_stage_runs_in_build_corpus(tmp_path, ray_session):
    from webserver import serve_directory

    with serve_directory(MINIWEB) as url:
        funnel = build(
            tmp_path / "out",
            seeds=MINIWEB / "seeds.txt",
            base_url=url,
            crawl={"max_depth": 0},
            stages={"extra": ["test_user_stage:AspectRatioFilter@resolution"]},
        )  # the one config line
    names = [s["stage"] for s in funnel["stages"]]
    assert names.index("aspect_ratio") == names.index("resolution") + 1
    dropped = [r for r in read_dir(tmp_path / "out" / "rejects") if r["stage"] == "aspect_ratio"]
    assert dropped and all(r["reason"] == "too_elongated" for r in dropped)
    assert all(max(r["width"], r["height"]) > 2 * min(r["width"], r["height"]) for r in dropped)
    kept = read_dir(tmp_path / "out" / "d_know", ["width", "height"])
    assert kept and all(max(r["width"], r["height"]) <= 2 * min(r["width"], r["height"]) for r in kept)
    step = next(s for s in funnel["stages"] if s["stage"] == "aspect_ratio")
    assert step["rejected"] == len(dropped) and step["reasons"] == {"too_elongated": len(dropped)}


def test_stage_specs_fail_clearly():
    from mella.config import BuildConfig
    from mella.plan import PlanError, build_plan

    def plan(*extra):
        return build_plan(BuildConfig(output="/tmp/unused", stages={"extra": list(extra)}))

    names = [s.name for s in plan({"class": "test_user_stage:AspectRatioFilter", "args": {"max_ratio": 3}})]
    assert names.index("aspect_ratio") == names.index("langid") + 3  # default: after the last per-unit step
    for spec, message in (
        ("nodots", "not 'package.module:Class'"),
        ("no_such_mod:X", "cannot import"),
        ("test_user_stage:build", "not a mella.stages.base.Stage subclass"),
        ("test_user_stage:AspectRatioFilter@nowhere", "cannot insert 'aspect_ratio' after 'nowhere'"),
    ):
        with pytest.raises(PlanError, match=message):
            plan(spec)
    with pytest.raises(PlanError, match="unexpected keyword"):
        plan({"class": "test_user_stage:AspectRatioFilter", "args": {"ratio": 3}})
