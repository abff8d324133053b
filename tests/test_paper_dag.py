"""The paper suite (and the CIFAR-100-LT suite) on a machine without the data.

``snakemake -n --config suite=paper`` must build the whole DAG with nothing on disk; the
job count of every per-item stage must equal what the suite definition implies, computed
here independently of the workflow's input functions. A real run must stop at the first
job that needs the images, saying what is missing, where it looked and how to get it.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, copy_workflow

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))

#: Registered methods the paper suite deliberately leaves out, with the reason. Empty:
#: every method runs on the paper grid (backdoor as its ensemble over the three CLIPs).
PAPER_EXCLUDED_METHODS: dict[str, str] = {
    "vpt_la": "fine-tuning ablation: suite paper_peft",
    "lora_la": "fine-tuning ablation: suite paper_peft",
    "adaptformer_ce": "the fine-tuned CE control: suite paper_peft",
    "backdoor_vote": "majority-vote control, added after the published grid: suite cifar100_lt",
}


def _config() -> dict:
    return yaml.safe_load((REPO / "config.yaml").read_text())


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def _snakemake(workdir: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([SNAKEMAKE, *args], cwd=workdir, env=_env(), capture_output=True,
                          text=True, timeout=timeout)


def job_stats(text: str) -> dict[str, int]:
    """The first 'Job stats:' table of a Snakemake run: {rule: count} (without 'total')."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "Job stats:")
    counts = {}
    for line in lines[start + 3:]:
        m = re.fullmatch(r"\s*(\S+)\s+(\d+)\s*", line)
        if not m:
            break
        if m.group(1) != "total":
            counts[m.group(1)] = int(m.group(2))
    return counts


#: Frozen methods of the paper suites without a TTE twin, with the reason (every other
#: features method has ``<m>_tte: {base: <m>, view: fivecrop}``: docs/protocol.md, "Both
#: TTE rows")
NO_TTE_TWIN: dict[str, str] = {
    "knn_authors": "its val bank has one view (five-crop queries are refused); the authors' "
                   "config: tte False",
}


def expected_jobs(suite: dict) -> dict[str, int]:
    """Jobs per stage implied by a suite: one per dataset / (dataset, backbone) / run. The
    TTE twins add runs, not jobs: a twin is fitted in its base's head job (one per dataset,
    backbone, seed), backdoor_tte in the combine job of its (dataset, seed)."""
    from lt_bench.backbones.declared import resolve_spec
    from lt_bench.config import method_class
    from lt_bench.data import DATASETS

    class METHODS:  # noqa: N801 - the suite's methods, variants (the TTE twins) included
        get = staticmethod(lambda m: method_class(_config(), m))

    d, b, s = suite["datasets"], suite["backbones"], suite["seeds"]
    s_ft = suite.get("finetune_seeds") or s
    kinds = {m: METHODS.get(m).consumes for m in suite["methods"]}
    on_features = [m for m, k in kinds.items() if k == "features"]
    from_images = [m for m, k in kinds.items() if k == "images"]
    over_backbones = [m for m, k in kinds.items() if k == "runs" and METHODS.get(m).vary == "backbone"]
    over_seeds = [m for m, k in kinds.items() if k == "runs" and METHODS.get(m).vary == "seed"]
    # ensembles of fine-tuned members run on the fine-tuning seeds
    ens_seeds = {m: s_ft if METHODS.get(METHODS.get(m).defaults["members"]).consumes == "images"
                 else s for m in over_backbones + over_seeds}
    def on_feats(m):  # an ensemble whose members are runs on features
        return METHODS.get(METHODS.get(m).defaults["members"]).consumes == "features"

    # the same-backbone control's extra member seeds (s + offset) are ordinary LA runs
    extra = sum(len(METHODS.get(m).defaults["seed_offsets"]) - 1 for m in over_seeds)
    with_text = [x for x in b if resolve_spec(x).has_text]
    real = [x for x in d if DATASETS.get(x).needs_data_root]
    jobs = {
        "prepare_dataset": len(d),
        "verify_images": len(real),  # only datasets whose images live under data_root
        "extract_features": len(d) * len(b),
        "estimate_prior": len(d) * len(with_text),
        # every features run of one (dataset, backbone, seed) is one job; the control's
        # member seeds one job per (dataset, backbone)
        "fit_heads": len(d) * len(b) * len(s) if on_features else 0,
        "fit_member_seeds": len(d) * len(b) if extra and over_seeds else 0,
        "finetune": len(d) * len(b) * len(from_images) * len(s_ft),
        # every ensemble of feature runs of one (dataset, seed) is one job; ensembles of
        # fine-tuned runs one job each (on the fine-tuning seeds)
        "combine_runs": len(d) * len(s) if any(
            on_feats(m) and (m in over_seeds or len(b) >= 2)
            for m in over_backbones + over_seeds) else 0,
        "ensemble_of_runs": len(d) * (sum(len(ens_seeds[m]) for m in over_backbones
                                          if not on_feats(m)) if len(b) >= 2 else 0)
                            + len(d) * len(b) * sum(len(ens_seeds[m]) for m in over_seeds
                                                    if not on_feats(m)),
        "pretrain_toy_clip": 0,  # real backbones come from open_clip / timm
        "all": 1,
    }
    return {k: v for k, v in jobs.items() if v}


@pytest.mark.parametrize("suite_name", ["paper", "cifar100_lt"])
def test_dry_run_builds_the_whole_dag_without_data(suite_name, tmp_path):
    wf = copy_workflow(tmp_path / "wf")
    r = _snakemake(wf, "-n", "--config", f"suite={suite_name}")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    got = job_stats(r.stdout)
    want = expected_jobs(_config()["suites"][suite_name])
    assert {k: got.get(k, 0) for k in want} == want
    assert "pretrain_toy_clip" not in got
    # the remaining jobs are suite-level summaries (tables, figures, tracking): at most
    # one per dataset, never one per run
    n_datasets = len(_config()["suites"][suite_name]["datasets"])
    others = {k: v for k, v in got.items() if k not in want}
    assert all(1 <= v <= n_datasets for v in others.values()), others
    assert not list(wf.glob("resources/**/*")) and not (wf / "results").exists()


def test_paper_suite_is_the_published_grid():
    from lt_bench.config import method_hparams, resolve_suite
    from lt_bench.methods import METHODS, config_variants

    cfg = _config()
    paper = cfg["suites"]["paper"]
    assert paper["datasets"] == ["imagenet_lt", "places_lt", "inat2018"]
    # the paper's three ViT-B/16 CLIPs (OpenAI, OpenCLIP LAION-2B, MetaCLIP 400M)
    assert paper["backbones"] == ["clip_vit_b16", "openclip_vit_b16", "metaclip_vit_b16"]
    assert paper["seeds"] == [0, 1, 2]
    assert set(PAPER_EXCLUDED_METHODS) <= set(METHODS.names())
    variants = config_variants(cfg)
    registered = [m for m in paper["methods"] if m not in variants]
    assert sorted(registered) == sorted(set(METHODS.names()) - set(PAPER_EXCLUDED_METHODS)), (
        "the paper suite should run every registered method (or list it, with its reason, "
        "in PAPER_EXCLUDED_METHODS)")
    assert len(paper["methods"]) == len(set(paper["methods"]))
    suite = resolve_suite({**cfg, "suite": "paper"})
    assert suite.name == "paper"
    # LIFT trains iNat2018 heads for 20 epochs; the other datasets keep the default
    assert cfg["method_overrides"]["inat2018"]["epochs"] == 20
    assert method_hparams(cfg, "ce", "inat2018")["epochs"] == 20
    assert method_hparams(cfg, "ce", "imagenet_lt")["epochs"] == METHODS.get("ce").defaults["epochs"]
    cifar = cfg["suites"]["cifar100_lt"]
    assert cifar["datasets"] == ["cifar100_lt_ir100", "cifar100_lt_ir50", "cifar100_lt_ir10"]


@pytest.mark.parametrize("suite_name", ["paper", "cifar100_lt"])
def test_paper_suites_have_both_tte_rows(suite_name):
    """Every frozen method of the suite has its TTE twin (``<m>_tte: {base: <m>, view:
    fivecrop}``, labelled "<its row> (TTE)") but those of NO_TTE_TWIN, the backdoor its twin
    over the twins of its members, AdaptFormer-LA its TTE row; the suite extracts both views
    (its own ``extract: {tte: both}``), so one extraction serves both rows; the demo none."""
    from lt_bench.methods import METHODS, config_variants
    from lt_bench.plan import Plan

    cfg = {**_config(), "suite": suite_name}
    plan = Plan(cfg)
    methods, variants = plan.suite.methods, config_variants(cfg)
    frozen = [m for m in methods if m not in variants and plan.consumes(m) == "features"]
    assert set(NO_TTE_TWIN) <= set(METHODS.names())
    twins = {m: f"{m}_tte" for m in frozen if m not in NO_TTE_TWIN}
    for base, twin in twins.items():
        assert twin in methods and variants[twin] == {"base": base, "view": "fivecrop"}
        assert methods.index(twin) == methods.index(base) + 1  # rows side by side
        assert plan.method(twin).display.startswith(plan.method(base).display.rstrip(")"))
        assert plan.method(twin).display.endswith("TTE)")
        for d in plan.suite.datasets:  # like-for-like: the twin differs in its view only
            hp, hp_base = plan.hparams(twin, d), plan.hparams(base, d)
            assert hp.pop("view") == "fivecrop" and hp_base.pop("view") == "auto"
            assert hp == hp_base
    assert not [m for m in methods if m.endswith("_tte") and m in variants
                and m not in twins.values() and m != "backdoor_tte"]
    assert variants["backdoor_tte"]["members"] == "la_tte"
    assert plan.method("backdoor_tte").display == "backdoor (TTE)"
    assert {"adaptformer_la", "adaptformer_la_tte"} <= set(methods)
    assert plan.method("adaptformer_la_tte").display == "AdaptFormer + LA (TTE)"
    assert plan.hparams("adaptformer_la", plan.suite.datasets[0])["tte"] == "both"
    assert plan.extract_options()["tte"] == "both"
    assert Plan(_config()).extract_options()["tte"] == "none"  # the demo: unchanged


def test_paper_suite_runs_count_the_tte_twins():
    """The paper suite's runs, counted from its definition: each method at each (dataset,
    backbone, seed), ensembles once per (dataset, seed) [per backbone for the same-backbone
    control]; the fine-tuned at the fine-tuning seeds. The twins double the frozen rows
    (a frozen twin: one run more per dataset x backbone x seed; backdoor_tte: one per dataset
    x seed)."""
    from lt_bench.methods import config_variants
    from lt_bench.plan import Plan

    cfg = {**_config(), "suite": "paper"}
    plan = Plan(cfg)
    s = plan.suite
    nd, nb, ns = len(s.datasets), len(s.backbones), len(s.seeds)
    per_backbone = [m for m in s.methods if plan.consumes(m) != "runs"]
    over_backbones = [m for m in s.methods if plan.consumes(m) == "runs"
                      and plan.method(m).vary == "backbone"]
    per_backbone_ens = [m for m in s.methods if plan.consumes(m) == "runs"
                        and plan.method(m).vary != "backbone"]
    want = nd * ns * (nb * len(per_backbone) + len(over_backbones) + nb * len(per_backbone_ens))
    assert len(plan.suite_runs()) == want
    variants = config_variants(cfg)
    twins = [m for m in s.methods if m in variants]
    frozen = [m for m in per_backbone if m not in variants and plan.consumes(m) == "features"]
    assert len(twins) == len(frozen) - len(NO_TTE_TWIN) + 1  # + backdoor_tte
    # without the twins: nb runs fewer per frozen twin, one per backdoor_tte (dataset, seed)
    bare = copy.deepcopy(cfg)
    bare["suites"]["paper"]["methods"] = [m for m in s.methods if m not in variants]
    assert len(plan.suite_runs()) - len(Plan(bare).suite_runs()) == nd * ns * (
        nb * (len(twins) - 1) + 1)


def test_cifar_imbalance_ratios_get_their_own_folders():
    from lt_bench.data import get_dataset
    from lt_bench.data.base import UnknownParamError

    assert [get_dataset(f"cifar100_lt_ir{r}").params["imb_ratio"] for r in (100, 50, 10)] == [
        100, 50, 10]
    with pytest.raises(UnknownParamError, match="imb_ratio"):
        get_dataset("cifar100_lt_ir50", imb_ratio=10)  # the name fixes it


def _fake_imagenet_lists(wf: Path) -> None:
    d = wf / "resources" / "data" / "imagenet_lt"
    d.mkdir(parents=True)
    for split, rel in [("train", "train/n01440764/a.JPEG"), ("val", "train/n01440764/b.JPEG"),
                       ("test", "val/n01440764/c.JPEG")]:
        (d / f"{split}.txt").write_text(f"{rel} 0\n")
    (d / "classnames.txt").write_text("tench\n")


def test_real_run_stops_at_the_image_check_saying_what_where_and_how(tmp_path):
    wf = copy_workflow(tmp_path / "wf")
    _fake_imagenet_lists(wf)
    target = "results/features/imagenet_lt/clip_vit_b16/train.parquet"
    # no data_root at all
    r = _snakemake(wf, target, "-c1", "--config", "suite=paper")
    assert r.returncode != 0
    log = (wf / "logs" / "verify_images" / "imagenet_lt.log").read_text()
    assert "config key data_root is not set" in log
    assert "needs its images: set the config key `data_root`" in log
    assert "image-net.org" in log  # how to get it
    assert not (wf / "resources/data/imagenet_lt/images_verified.json").exists()
    assert not (wf / "results").exists()  # extraction never started
    # a data_root without the dataset's folder: the path it looked at, and the layout
    (tmp_path / "datasets").mkdir()
    r = _snakemake(wf, target, "-c1", "--config", "suite=paper",
                   f"data_root={tmp_path / 'datasets'}")
    assert r.returncode != 0
    log = (wf / "logs" / "verify_images" / "imagenet_lt.log").read_text()
    assert f"{tmp_path / 'datasets' / 'imagenet'}" in log and "is not a directory" in log
    assert "<data_root>/train/n01440764/" in log
    # the folder exists but images are missing: which ones
    (tmp_path / "datasets" / "imagenet" / "train").mkdir(parents=True)
    (tmp_path / "datasets" / "imagenet" / "val").mkdir()
    r = _snakemake(wf, target, "-c1", "--config", "suite=paper",
                   f"data_root={tmp_path / 'datasets'}")
    assert r.returncode != 0
    log = (wf / "logs" / "verify_images" / "imagenet_lt.log").read_text()
    assert "3 of 3 listed images are missing" in log and "train/n01440764/a.JPEG" in log


def test_every_member_run_has_a_head_job():
    """A suite with only the same-backbone control still fits its members: la at the suite
    seeds (offset 0) in fit_heads, la at s + 1000, s + 2000 in fit_member_seeds."""
    from lt_bench.plan import Plan

    cfg = _config()
    cfg["suites"]["demo"] = {**cfg["suites"]["demo"], "methods": ["backdoor_same_backbone"]}
    plan = Plan(cfg)
    assert plan.head_methods() == ["la"]
    seeds = plan.suite.seeds
    offsets = cfg["methods"]["backdoor_same_backbone"]["seed_offsets"]
    made = {("la", s) for s in seeds} | set(plan.member_seed_runs())
    needed = {("la", s + o) for s in seeds for o in offsets}
    assert needed == made
    runs = plan.head_runs("toy", "toyclip0", seeds[0])
    assert [r["method"] for r in runs] == ["la"] and runs[0]["base"] == {}


@pytest.mark.parametrize("suite_name", ["demo", "paper"])
def test_combine_jobs_make_every_ensemble_of_feature_runs(suite_name):
    """One combine_runs job per (dataset, seed) makes every ensemble whose members are runs
    on features, and each member is a run some head job makes; the ensembles of
    fine-tuned runs are left to ensemble_of_runs (one job each)."""
    from lt_bench.plan import Plan, run_dir

    cfg = _config()
    cfg["suite"] = suite_name
    plan = Plan(cfg)
    s = plan.suite
    combined = {(r["out"]) for d in s.datasets for seed in s.seeds
                for r in plan.combine_runs(d, seed)}
    ensembles = {run_dir(*r) for r in plan.ensemble_runs()}
    fine_tuned = {run_dir(*r) for r in plan.ensemble_runs() if plan.member_consumes(r[2]) == "images"}
    assert combined == ensembles - fine_tuned and fine_tuned
    assert {"backdoor", "backdoor_same_backbone", "backdoor_ce"} <= set(plan.combined_methods())
    assert "backdoor_finetuned" not in plan.combined_methods()
    heads = {r["out"] for d in s.datasets for b in s.backbones
             for runs in [plan.head_runs(d, b)] + [plan.head_runs(d, b, sd) for sd in s.seeds]
             for r in runs}
    for d in s.datasets:
        for seed in s.seeds:
            members = plan.combine_inputs(d, seed)
            assert len(members) == len(set(members))
            assert {m.removesuffix("/metrics.json") for m in members} <= heads
    # the rule's output patterns are this job's run folders, wildcards filled in
    d, seed = s.datasets[0], s.seeds[-1]
    assert [p.format(dataset=d, seed=seed) for p in plan.combine_outputs()] == [
        r["out"] + "/metrics.json" for r in plan.combine_runs(d, seed)]
