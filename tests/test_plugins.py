"""Plugins (lt_bench/registry.py): entry points in ``lt_bench.methods``, ``lt_bench.backbones``
and ``lt_bench.datasets`` register into our registries with their origin; a broken one is a
line naming the package, only where its family is used.

The example plugin (examples/lt_bench_example_plugin) is installed for real: ``pip install
--no-deps --no-build-isolation -e`` into a throwaway venv that sees this environment's
packages through a ``.pth`` file, and the real ``lt-bench`` then lists, pre-trains, extracts
and trains with it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest
from conftest import REPO
from plugin_dists import (
    BROKEN_DIST,
    EXAMPLE_DIST,
    broken_methods_plugin,
    fake_dist,
    install_example_plugin,
    unbreak,
)

from lt_bench.cli import main
from lt_bench.registry import BUILT_IN, PluginError, Registry

# --- the loader, on distributions laid out as pip lays them out ------------------------------

@pytest.fixture
def widgets(tmp_path, monkeypatch):
    """A fresh registry of kind "dataset" (so its group is lt_bench.datasets) that test
    plugins register into through a module they import."""
    reg = Registry("dataset")
    monkeypatch.setitem(sys.modules, "lt_bench_test_widgets", types.SimpleNamespace(R=reg))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    return reg, tmp_path / "site"


def test_a_plugin_registers_with_its_distribution_as_origin(widgets):
    reg, site = widgets
    reg.register("builtin_widget")(int)
    fake_dist(site, "widget-maker", {"lt_bench.datasets": {"w": "widget_maker_mod"}},
              {"widget_maker_mod": "import lt_bench_test_widgets as t\n"
                                   "t.R.register('plugged')(float)\n"})
    assert "widget_maker_mod" not in sys.modules  # nothing is imported before a lookup
    assert reg.names() == ["builtin_widget", "plugged"]
    assert reg.get("plugged") is float and reg.origin("plugged") == "widget-maker"
    assert reg.origin("builtin_widget") == BUILT_IN
    entries, broken = reg.listing()
    assert [(n, o) for n, _, o in entries] == [("builtin_widget", BUILT_IN),
                                              ("plugged", "widget-maker")]
    assert broken == []


@pytest.mark.parametrize("code,says", [
    ("import no_such_package_anywhere\n",
     "ModuleNotFoundError: No module named 'no_such_package_anywhere'"),
    ("import lt_bench_test_widgets as t\nt.R.register('taken')(float)\n",
     "DuplicateNameError: dataset 'taken' is registered twice (first by built-in)"),
])
def test_a_broken_plugin_fails_its_registry_only_in_one_line(widgets, code, says):
    reg, site = widgets
    reg.register("taken")(int)
    fake_dist(site, "bad-widgets", {"lt_bench.datasets": {"bad": "bad_widgets_mod"}},
              {"bad_widgets_mod": code})
    with pytest.raises(PluginError) as e:
        reg.get("taken")
    msg = str(e.value)
    assert "\n" not in msg and says in msg
    assert msg.startswith("plugin 'bad-widgets' (entry point lt_bench.datasets: bad = "
                          "bad_widgets_mod) failed to load")
    assert "pip uninstall bad-widgets" in msg
    with pytest.raises(PluginError):
        reg.names()  # every lookup of the family refuses, not only the first
    other = Registry("backbone")  # another family is unaffected
    other.register("fine")(int)
    assert other.names() == ["fine"]
    entries, broken = reg.listing()  # `lt-bench list` still shows what is there
    assert [n for n, _, _ in entries] == ["taken"] and broken[0].dist == "bad-widgets"


def test_lt_bench_list_shows_a_broken_plugin_as_a_line(tmp_path, capsys):
    site = broken_methods_plugin(tmp_path / "site")
    try:
        rc = main(["list", "methods"])
        out = capsys.readouterr().out.splitlines()
        # the datasets do not use METHODS: unaffected
        assert main(["list", "datasets"]) == 0
    finally:
        unbreak(site)
    assert rc == 2
    la = next(line for line in out if line.startswith("la "))
    assert la.split()[1] == BUILT_IN
    [bad] = [line for line in out if BROKEN_DIST in line]
    assert bad.startswith("(broken plugin)") and "lt_bench_no_such_dependency" in bad


def test_cli_start_up_loads_no_plugin(tmp_path):
    """`lt-bench --help` imports no plugin module (plugins load on a registry's first use)."""
    site = fake_dist(tmp_path / "site", "slow-plugin",
                     {"lt_bench.methods": {"s": "slow_plugin_mod"}},
                     {"slow_plugin_mod": "raise SystemExit('imported at start-up')\n"})
    code = ("import sys\nfrom lt_bench.cli import main\ntry:\n    main(['--help'])\n"
            "except SystemExit:\n    pass\nprint('LOADED', 'slow_plugin_mod' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=True).stdout
    assert "LOADED False" in out


# --- the example plugin, pip-installed ---------------------------------------------------------

@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory):
    return install_example_plugin(tmp_path_factory.mktemp("plugin"))


def _lt_bench(plugin_env, *args: str) -> subprocess.CompletedProcess:
    python, env, root = plugin_env
    return subprocess.run([str(python), "-m", "lt_bench.cli", *args], capture_output=True,
                          text=True, env=env, cwd=root)


def test_example_plugin_is_listed_with_its_origin(plugin_env):
    for family, names in (("methods", {"la_focal", "backdoor_max_confidence"}),
                          ("backbones", {"toyclip_example"}), ("datasets", {"toy_tiny"})):
        r = _lt_bench(plugin_env, "list", family)
        assert r.returncode == 0, r.stderr
        rows = {line.split()[0]: line.split()[1] for line in r.stdout.splitlines()}
        assert {rows[n] for n in names} == {EXAMPLE_DIST}, r.stdout
        assert all(o == BUILT_IN for n, o in rows.items() if n not in names)


def test_example_plugin_control_defers_to_the_most_confident_member(plugin_env):
    """The plugin's ensemble control on a hand-worked case: per image, the member with the
    largest max softmax probability gives the ensemble's log-probabilities."""
    code = """
import json, numpy as np
from lt_bench.methods import METHODS
cls = METHODS.get("backdoor_max_confidence")
m = cls()
a = np.array([[3.0, 0.0, 0.0], [0.2, 0.1, 0.0]])   # sure of image 0, unsure of image 1
b = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 5.0]])   # unsure of image 0, sure of image 1
state, info = m.fit([a, b], np.array([0, 2]))
print(json.dumps({"z": cls.combine([a, b], state).tolist(), "consumes": cls.consumes,
                  "state": state}))
"""
    python, env, root = plugin_env
    r = subprocess.run([str(python), "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout)
    assert got["consumes"] == "runs" and got["state"] == {"rule": "max_confidence"}

    def log_softmax(z):
        z = np.asarray(z, dtype=float)
        return z - z.max() - np.log(np.exp(z - z.max()).sum())

    want = [log_softmax([3.0, 0.0, 0.0]), log_softmax([0.0, 0.0, 5.0])]
    np.testing.assert_allclose(got["z"], want, rtol=1e-12)


def test_example_plugin_loss_is_focal_on_adjusted_logits(plugin_env):
    """The plugin's loss against an independent numpy computation, and its two limits."""
    code = """
import json, sys, numpy as np, torch
from lt_bench.methods import get_method
z = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]]); y = torch.tensor([0, 2])
log_prior = np.log(np.array([0.7, 0.2, 0.1]))
class Ctx: log_train_prior = log_prior
out = {}
for name, hp in (("la_focal", {"tau": 1.0, "gamma": 2.0}), ("la_focal", {"tau": 1.0, "gamma": 0.0}),
                 ("la", {"tau": 1.0}), ("la_focal", {"tau": 0.0, "gamma": 2.0}), ("focal", {"gamma": 2.0})):
    m = get_method(name, **hp); m.setup(Ctx) if hasattr(m, "setup") else None
    out[f"{name}{hp}"] = float(m.loss(z, y, 0))
print(json.dumps(out))
"""
    python, env, root = plugin_env
    r = subprocess.run([str(python), "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout)
    z = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]]) + np.log([0.7, 0.2, 0.1])
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    py = p[[0, 1], [0, 2]]
    want = np.mean(-(1 - py) ** 2 * np.log(py))
    assert got["la_focal{'tau': 1.0, 'gamma': 2.0}"] == pytest.approx(want, rel=1e-5)
    assert got["la_focal{'tau': 1.0, 'gamma': 0.0}"] == pytest.approx(got["la{'tau': 1.0}"],
                                                                     rel=1e-6)
    assert got["la_focal{'tau': 0.0, 'gamma': 2.0}"] == pytest.approx(
        got["focal{'gamma': 2.0}"], rel=1e-6)


def test_example_plugin_runs_through_the_real_cli(plugin_env):
    """Its dataset prepared, its toy CLIP pre-trained and extracted, its method trained: a
    finished run, whose γ = 0 twin is the `la` run (the same loss)."""
    python, env, root = plugin_env
    data, bb, feats = root / "data" / "toy_tiny", root / "bb", root / "features"
    steps = [
        ["prepare", "toy_tiny", "--out", str(data)],
        ["pretrain", "toyclip_example", "--dataset-dir", str(data), "--out", str(bb),
         "--params", json.dumps({"num_pairs": 256, "epochs": 1, "batch_size": 64,
                                 "eval_per_class": 2, "probe_per_class": 0}),
         "--threads", "1"],
        ["extract", "--dataset", "toy_tiny", "--split-dir", str(data), "--backbone",
         "toyclip_example", "--checkpoint", str(bb / "checkpoint.pt"), "--out-dir",
         str(feats), "--device", "cpu", "--num-workers", "0", "--threads", "1"],
    ]
    runs = {}
    for method, hp in (("la_focal", {}), ("la_focal", {"gamma": 0.0}), ("la", {})):
        runs[(method, bool(hp))] = root / "runs" / f"{method}{len(runs)}"
        steps.append(["fit", "--method", method, "--features-dir", str(feats), "--out",
                      str(runs[(method, bool(hp))]), "--params",
                      json.dumps({"epochs": 2, **hp}), "--threads", "1"])
    for args in steps:
        r = _lt_bench(plugin_env, *args)
        assert r.returncode == 0, (args[0], r.stderr[-3000:])
    metrics = {k: json.loads((d / "metrics.json").read_text()) for k, d in runs.items()}
    config = json.loads((runs[("la_focal", False)] / "config.json").read_text())
    assert config["method"] == "la_focal" and config["backbone"] == "toyclip_example"
    assert config["hparams"]["gamma"] == 2.0 and config["hparams"]["tau"] == 1.0
    assert config["dataset"] == "toy_tiny" and config["num_classes"] == 10
    assert 0 <= metrics[("la_focal", False)]["top1"] <= 1
    k = len((data / "classnames.txt").read_text().splitlines())
    assert k == 10
    # γ = 0: the same loss as la, up to float rounding: the same accuracy within a test image
    n_test = 8 * k
    assert abs(metrics[("la_focal", True)]["top1"] - metrics[("la", False)]["top1"]) \
        <= 1 / n_test + 1e-9
