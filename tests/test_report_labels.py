"""Row labels follow what ran: an LDAM run without DRW is "LDAM", with a DRW epoch
"LDAM-DRW" (display names from the run's hyper-parameters in config.json)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import yaml
from fakeruns import write_run

from lt_bench.cli import main as cli_main
from lt_bench.config import method_hparams
from lt_bench.methods.ldam import LDAM
from lt_bench.report.format import display_name, label_of


def test_ldam_label_follows_drw():
    assert LDAM.label({"drw_epoch": None}) == "LDAM"
    assert LDAM.label({"drw_epoch": 8}) == "LDAM-DRW"
    assert label_of("ldam", {"drw_epoch": 0}) == "LDAM-DRW"
    assert label_of("ldam", None) == display_name("ldam") == "LDAM"  # nothing says DRW
    assert label_of("la", {"tau": 1.0}) == "LA"  # no label(): the display name


def test_tables_print_the_variant_that_ran(tmp_path):
    runs = tmp_path / "runs"
    for ds, drw in (("plain", None), ("drw", 8)):
        for s in (0, 1):
            for m in ("la", "ldam"):
                hp = {"drw_epoch": drw, "epochs": 10} if m == "ldam" else {"tau": 1.0}
                write_run(runs, ds, "b0", m, s, None, 0.1 + 0.01 * s,
                          config_extra={"hparams": hp})
    out = tmp_path / "tables"
    assert cli_main(["tables", "--runs-root", str(runs), "--out-dir", str(out)]) == 0
    md = (out / "main.md").read_text()
    sections = {part.split("\n", 1)[0]: part for part in md.split("## ")[1:]}
    assert "| b0 | LDAM |" in sections["plain"] and "LDAM-DRW" not in sections["plain"]
    assert "| b0 | LDAM-DRW |" in sections["drw"]
    html = (out / "main.html").read_text()
    assert ">LDAM</td>" in html and ">LDAM-DRW</td>" in html
    tex = (out / "main.tex").read_text()
    assert "LDAM-DRW = ldam" in tex and "LDAM = ldam" in tex
    notes = pd.read_csv(out / "notes.csv")
    got = dict(zip(notes["dataset"] + "/" + notes["method"], notes["display_name"],
                   strict=True))
    assert got["plain/ldam"] == "LDAM" and got["drw/ldam"] == "LDAM-DRW"
    # CSV keeps the code id
    assert pd.read_csv(out / "main.csv")["method"].tolist().count("ldam") == 2


def test_paper_datasets_run_ldam_drw_at_four_fifths_of_training():
    config = yaml.safe_load(open("config.yaml"))
    for ds in ("imagenet_lt", "places_lt", "inat2018"):
        hp = method_hparams(config, "ldam", ds)
        assert hp["drw_epoch"] == hp["epochs"] * 4 // 5, (ds, hp)  # 160 of 200 in LDAM-DRW
        assert LDAM.label(hp) == "LDAM-DRW"
    assert LDAM.label(method_hparams(config, "ldam", "toy")) == "LDAM"


def test_dxp_figures_name_the_variant_that_ran(tmp_path, monkeypatch):
    from fakeruns import K

    from lt_bench.report import figures_dxp

    q = np.linspace(1, 2, K)
    q = q / q.sum()
    dirs = [write_run(tmp_path, "toy", "b0", m, 0, q, 0.1,
                      config_extra={"hparams": {"drw_epoch": 8} if m == "ldam" else {}})
            for m in ("la", "ldam")]
    titles = []
    real_save = figures_dxp.save
    monkeypatch.setattr(figures_dxp, "save", lambda fig, stem: titles.append(
        (fig._suptitle.get_text(), [t.get_text() for ax in fig.axes
                                    for t in ax.get_yticklabels()])) or real_save(fig, stem))
    figures_dxp.dxp_figure(dirs, "ldam", tmp_path / "dxp_ldam", "toy")
    figures_dxp.dxp_summary_figure(dirs, tmp_path / "dxp_vs_la", "toy", ["ldam"])
    (heat, _), (_, rows) = titles
    assert "D×P accuracy of LDAM-DRW" in heat.replace("\n", " ")
    assert "LDAM-DRW" in rows
