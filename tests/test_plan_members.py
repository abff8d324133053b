"""The plan asks a runs-consuming method for its members and names no method: a control
declared here, over seeds of one backbone with its own offsets and CE members, is planned
like the same-backbone control (its extra member seeds get their head job), and the
run-list entries are what `lt-bench combine --runs` checks."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from lt_bench.methods import METHODS
from lt_bench.methods._ensemble import EnsembleMethod
from lt_bench.plan import Plan, run_dir

NAME = "test_seed_control"


@pytest.fixture
def seed_control():
    class SeedControl(EnsembleMethod):
        name = NAME
        vary: ClassVar[str] = "seed"
        defaults: ClassVar[dict[str, Any]] = {"rule": "sum", "members": "ce",
                                              "seed_offsets": [0, 500]}

    METHODS.register(NAME)(SeedControl)
    yield SeedControl
    METHODS._entries.pop(NAME)


def _plan(suite_methods, backbones=("toyclip0", "toyclip1"), seeds=(0, 1), **cfg):
    return Plan({"suite": "s", "suites": {"s": {
        "datasets": ["toy"], "backbones": list(backbones), "methods": list(suite_methods),
        "seeds": list(seeds)}}, **cfg})


def test_a_new_seed_axis_control_is_planned_from_its_declaration(seed_control):
    plan = _plan([NAME])
    assert plan.ensemble_runs() == [("toy", b, NAME, s) for b in ("toyclip0", "toyclip1")
                                    for s in (0, 1)]
    assert plan.ensemble_members("toy", "toyclip1", NAME, 1) == [
        run_dir("toy", "toyclip1", "ce", 1), run_dir("toy", "toyclip1", "ce", 501)]
    # members at suite seeds join the head jobs, the others get their own job
    assert plan.head_methods() == ["ce"]
    assert plan.member_seed_runs() == [("ce", 500), ("ce", 501)]
    assert plan.combined_methods() == [NAME]
    [a, b] = plan.combine_runs("toy", 1)
    assert (a["out"], a["seed"], a["params"]["seed_offsets"]) == (
        run_dir("toy", "toyclip0", NAME, 1), 1, [0, 500])
    assert b["members"] == plan.ensemble_members("toy", "toyclip1", NAME, 1)
    # the configured offsets are the method's hyper-parameters: the plan follows them
    other = _plan([NAME], methods={NAME: {"seed_offsets": [0, 7]}})
    assert other.member_seed_runs() == [("ce", 7), ("ce", 8)]


def test_backbone_axis_needs_its_fewest_members():
    assert _plan(["backdoor"], backbones=["toyclip0"]).ensemble_runs() == []
    plan = _plan(["backdoor_ce"])
    assert plan.ensemble_runs() == [("toy", "ensemble", "backdoor_ce", s) for s in (0, 1)]
    assert plan.head_methods() == ["ce"] and plan.member_seed_runs() == []
    assert plan.ensemble_members("toy", "ensemble", "backdoor_ce", 0) == [
        run_dir("toy", b, "ce", 0) for b in ("toyclip0", "toyclip1")]


def test_views_of_a_finetuning_wait_for_it_alone():
    plan = _plan(["adaptformer_la", "adaptformer_la_tte"])
    assert plan.combined_methods() == []  # members from images: one job per run
    assert plan.ensemble_members("toy", "toyclip0", "adaptformer_la_tte", 1) == [
        run_dir("toy", "toyclip0", "adaptformer_la", 1)]
    assert plan.combine_run("toy", "toyclip0", "adaptformer_la_tte", 1)[0]["members"] == [
        run_dir("toy", "toyclip0", "adaptformer_la", 1)]
