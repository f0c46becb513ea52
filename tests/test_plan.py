"""The plan as data (issue 11): ``mella.plan.build_plan`` / ``stage_names`` / ``phases`` / ``check_plan`` and
:class:`mella.stages.base.Fused`'s resource and batch-size aggregation. No Ray, no models: constructors only keep
configuration (models load in ``setup`` on the workers), so a D_ling plan builds from paths that do not exist.
"""

from __future__ import annotations

import pytest

from mella.config import BuildConfig
from mella.plan import PlanError, build_plan, check_plan, insert_stage, phases, stage_names
from mella.resources import StageResources
from mella.stages.base import LIGHT, DedupStage, Filter, Fused, Stage

PER_UNIT = ["extract", "alt_text", "langid", "fetch", "decode", "resolution"]
MODELS = ["moderation", "embed", "categorise"]
D_LING = {
    "enabled": True,
    "caption": {"mllm": {"family": "qwen2-vl", "model_path": "/no/such/qwen2-vl"}},
    "translate": {"seq2seq": {"model_path": "/no/such/nllb"}},
}


def _cfg(tmp_path, **kw) -> BuildConfig:
    return BuildConfig(output=tmp_path / "out", **kw)


def test_default_plan_order(tmp_path):
    plan = build_plan(_cfg(tmp_path))
    assert [s.name for s in plan] == [
        "extract",
        "alt_text",
        "langid",
        "ImageStages",
        "ModelStages",
        "exact_dedup",
        "phash_dedup",
        "semantic_dedup",
    ]
    assert stage_names(plan) == PER_UNIT + MODELS + ["exact_dedup", "phash_dedup", "semantic_dedup"]
    source, units, globals_, ling = phases(plan)
    assert source is plan[0] and [s.name for s in units] == ["alt_text", "langid", "ImageStages", "ModelStages"]
    assert all(isinstance(s, DedupStage) for s in globals_) and ling == []


def test_plan_without_the_model_stages(tmp_path):
    """--no-semantic-dedup --no-moderation --no-categorise: no model pool, no CNN dedup; pHash stays."""
    cfg = _cfg(
        tmp_path,
        filters={"semantic": {"enabled": False}, "moderation": {"enabled": False}},
        d_ling={"categorise": {"enabled": False}},
    )
    plan = build_plan(cfg)
    assert "ModelStages" not in [s.name for s in plan]
    assert stage_names(plan) == PER_UNIT + ["exact_dedup", "phash_dedup"]


def test_plan_with_moderation_api_and_without_phash(tmp_path, monkeypatch):
    monkeypatch.setenv("MELLA_TEST_MODERATION_KEY", "k")  # the API stage checks for its key when built
    cfg = _cfg(
        tmp_path,
        filters={
            "phash": {"enabled": False},
            "moderation": {"api": {"enabled": True, "api_key_env": "MELLA_TEST_MODERATION_KEY"}},
        },
    )
    plan = build_plan(cfg)
    models = next(s for s in plan if s.name == "ModelStages")
    assert [type(s).__name__ for s in models.stages] == [
        "NSFWStage",
        "APIModerationStage",
        "EmbedStage",
        "EfficientNetCategoriser",
    ]
    names = stage_names(plan)  # the two moderation stages have their own names: their counters stay apart
    assert names.count("moderation") == 1 and names.count("moderation_api") == 1 and "phash_dedup" not in names


def test_plan_with_d_ling(tmp_path):
    plan = build_plan(_cfg(tmp_path, d_ling=D_LING))
    assert stage_names(plan)[-3:] == ["caption", "translate", "qe"]
    _, _, globals_, ling = phases(plan)
    assert [s.name for s in globals_] == ["exact_dedup", "phash_dedup", "semantic_dedup"]
    assert [s.name for s in ling] == ["caption", "translate", "qe"] and all(s.d_ling for s in ling)


def test_stage_names_follow_the_plan_not_a_list(tmp_path):
    """A user stage shows up in stage_names (the funnel's and schema's order) where it was inserted."""
    plan = build_plan(_cfg(tmp_path))
    plan = insert_stage(plan, _Keep(), "alt_text")
    names = stage_names(plan)
    assert names.index("keep") == names.index("alt_text") + 1
    with pytest.raises(PlanError, match="after 'nosuch'"):
        insert_stage(plan, _Keep(), "nosuch")


class _Keep(Filter):
    name = "keep"

    def filter(self, row):
        return None


class _Ling(Stage):
    name = "ling"
    d_ling = True


def test_check_plan_errors(tmp_path):
    plan = build_plan(_cfg(tmp_path, d_ling=D_LING))
    source, units, globals_, ling = phases(plan)
    check_plan(plan)  # the built plan itself passes
    with pytest.raises(PlanError, match="starts with the extract stage"):
        check_plan([])
    with pytest.raises(PlanError, match="starts with the extract stage"):
        check_plan(plan[1:])
    with pytest.raises(PlanError, match="is not a mella.stages.base.Stage"):
        check_plan([source, object()])
    with pytest.raises(PlanError, match="is not a mella.stages.base.Stage"):
        check_plan([source, Fused([_Keep(), object()], name="P")])
    with pytest.raises(PlanError, match="must stand alone"):
        check_plan([source, Fused([globals_[0], _Keep()])])
    with pytest.raises(PlanError, match="must stand alone, before the D_ling stages"):
        check_plan([source, *units, ling[0], globals_[0]])
    with pytest.raises(PlanError, match="comes after a D_ling stage but is not one"):
        check_plan([source, *units, *globals_, _Ling(), _Keep()])
    check_plan([source, *units, *globals_, _Ling()])  # a user's D_ling stage at the end is fine


class _Res(Stage):
    def __init__(self, name: str, resources: StageResources, batch_size: int | None) -> None:
        self.name, self.resources, self.batch_size = name, resources, batch_size


def test_fused_takes_the_largest_resources_and_the_smallest_batch():
    a = _Res("a", StageResources(num_cpus=0.5, memory=2**30, pool_size=1), 32)
    b = _Res("b", StageResources(num_cpus=1.0, num_gpus=0.5, pool_size=2, max_pool_size=4), 8)
    c = _Res("c", LIGHT, None)
    f = Fused([a, b, c])
    assert f.name == "a+b+c"
    assert f.resources == StageResources(num_cpus=1.0, num_gpus=0.5, memory=2**30, pool_size=2, max_pool_size=4)
    assert f.batch_size == 8
    assert Fused([c]).resources == LIGHT and Fused([c]).batch_size is None
    given = StageResources(num_cpus=0.25, pool_size=3)
    assert Fused([a, b], name="P", resources=given, batch_size=64).resources == given
    assert Fused([a, b], batch_size=64).batch_size == 64
    # an elastic bound below another member's fixed pool is raised to it
    d = _Res("d", StageResources(pool_size=1, max_pool_size=2), None)
    e = _Res("e", StageResources(pool_size=3), None)
    assert Fused([d, e]).resources.max_pool_size == 3
    with pytest.raises(ValueError, match="at least one stage"):
        Fused([])


def test_image_pool_resources_come_from_the_config(tmp_path):
    cfg = _cfg(tmp_path, ray={"image_pool": {"pool_size": 3, "max_pool_size": 6, "batch_size": 16, "num_cpus": 1}})
    pool = next(s for s in build_plan(cfg) if s.name == "ImageStages")
    assert [s.name for s in pool.stages] == ["fetch", "decode", "resolution"]
    assert (pool.resources.pool_size, pool.resources.max_pool_size, pool.resources.num_cpus) == (3, 6, 1.0)
    assert pool.batch_size == 16


# ------------------------------------------------------------------------------------------ the plan as data
def test_default_plan_is_one_list_that_yaml_can_reorder_trim_and_extend(tmp_path):
    from mella.plan import DEFAULT_PLAN

    assert stage_names(build_plan(_cfg(tmp_path))) == [
        n for n in DEFAULT_PLAN if n not in ("moderation_api", "caption", "translate", "qe")
    ]
    # reorder (langid before alt_text), leave out (moderation, phash), add a user stage with arguments in place
    plan = build_plan(
        _cfg(
            tmp_path,
            stages={
                "plan": [
                    "extract",
                    "langid",
                    "alt_text",
                    "fetch",
                    "decode",
                    "resolution",
                    {"class": "alt_min_words:MinWordsFilter", "args": {"min_words": 3}},
                    "embed",
                    "categorise",
                    "exact_dedup",
                    "semantic_dedup",
                ]
            },
        )
    )
    assert stage_names(plan) == [
        "extract",
        "langid",
        "alt_text",
        "fetch",
        "decode",
        "resolution",
        "alt_min_words",
        "embed",
        "categorise",
        "exact_dedup",
        "semantic_dedup",
    ]
    assert [s.name for s in plan][:6] == [
        "extract",
        "langid",
        "alt_text",
        "ImageStages",
        "alt_min_words",
        "ModelStages",
    ]
    assert next(s for s in plan if s.name == "alt_min_words").min_words == 3
    with pytest.raises(PlanError, match="unknown stage 'langd'"):
        build_plan(_cfg(tmp_path, stages={"plan": ["extract", "langd"]}))


def test_stage_placed_inside_a_pool_joins_it(tmp_path):
    plan = build_plan(_cfg(tmp_path, stages={"extra": ["alt_min_words:MinWordsFilter@decode"]}))
    pool = next(s for s in plan if s.name == "ImageStages")
    assert [s.name for s in pool.members] == ["fetch", "decode", "alt_min_words", "resolution"]


def test_command_line_stage_with_arguments_and_d_ling_routing(tmp_path):
    """``--stage 'mod:Class@after key=value'``: the arguments reach the constructor; a routable (alt-text) user filter
    routes its rejects to D_ling when D_ling is on, and drops them when it is off."""
    from mella.schema import REJECT_SCHEMA, to_table

    spec = "alt_min_words:MinWordsFilter@langid min_words=3"
    rows = [{"id": "a", "alt_text": "two words"}, {"id": "b", "alt_text": "a red tram crossing"}]
    batch = to_table(rows, REJECT_SCHEMA)
    for d_ling, expect in ((D_LING, ("alt_min_words:too_few_words", None)), ({}, (None, "too_few_words"))):
        plan = build_plan(_cfg(tmp_path, d_ling=d_ling, stages={"extra": [spec]}))
        names = [s.name for s in plan]
        assert names.index("alt_min_words") == names.index("langid") + 1
        stage = plan[names.index("alt_min_words")]
        assert stage.min_words == 3 and stage.route_to_d_ling == bool(d_ling)
        out = stage(batch).to_pylist()  # the stage run alone, through the executor's task runner
        assert (out[0]["d_ling_reason"], out[0]["reason"]) == expect
        assert out[1]["reason"] is None and out[1]["d_ling_reason"] is None
    with pytest.raises(PlanError, match="not key=value"):
        build_plan(_cfg(tmp_path, stages={"extra": ["alt_min_words:MinWordsFilter@langid min_words"]}))


def test_check_fits_names_the_pool_to_shrink(tmp_path):
    from mella.plan import check_fits, demand

    plan = build_plan(_cfg(tmp_path))
    assert demand(phases(plan)[1])[:2] == (2.0, 0.0)  # image pool 2 x 0.25 + model pool 1 + one 0.5-CPU task
    check_fits(plan, 2, 0)
    with pytest.raises(PlanError, match=r"needs 2 CPUs .* the cluster has 1; give the ModelStages pool fewer CPUs"):
        check_fits(plan, 1, 0)
    gpu = build_plan(_cfg(tmp_path, filters={"moderation": {"num_gpus": 1, "pool_size": 2}}))
    with pytest.raises(
        PlanError,
        match=r"needs 2 GPUs .*ModelStages 2 x 1.*shrink filters.moderation.pool_size/"
        r"filters.semantic.pool_size/d_ling.categorise.pool_size to 1",
    ):
        check_fits(gpu, 8, 1)
    check_fits(gpu, 8, 2)
