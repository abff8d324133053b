"""The findings' wording on hand-made tables: every verdict branch fires on numbers chosen
for it, and the sentence it writes is asserted whole (like compared with like, the
reference named, no "-0", no share of a gain that is not there)."""

from __future__ import annotations

import pandas as pd
import pytest

from lt_bench.report.findings import CLOSE_TOL, backdoor_lines, findings, gap_lines, num, verdict


def _tables(rows: dict[tuple[str, str], tuple[float | None, float | None]], ds="toy"):
    """main.csv / dxp.csv rows with the given D-gap (Many − Few) and P-gap (Few/P-Many −
    Few/P-Few) per (backbone, method); a P-gap of None: no D×P row."""
    main, dxp = [], []
    for (bb, m), (d, p) in rows.items():
        main.append({"dataset": ds, "backbone": bb, "method": m, "top1_mean": 60.0,
                     "many_mean": 50.0 + d, "few_mean": 50.0})
        if p is not None:
            dxp.append({"dataset": ds, "backbone": bb, "method": m,
                        "dp_few_p_many_mean": 30.0 + p, "dp_few_p_few_mean": 30.0})
    return pd.DataFrame(main), pd.DataFrame(dxp)


@pytest.mark.parametrize("before, after, sentence", [
    (0.4, -0.3, "neither CE nor LA has a P-gap (+0.4 → -0.3)"),
    (12.0, 0.5, "against CE, LA closes the P-gap (+12.0 → +0.5)"),
    (0.2, 6.0, "against CE, LA opens a P-gap (+0.2 → +6.0)"),
    (8.0, -5.0, "against CE, LA reverses the P-gap (+8.0 → -5.0)"),
    (10.0, 10.6, "against CE, LA leaves the P-gap about unchanged (+10.0 → +10.6)"),
    (20.0, 7.0, "against CE, LA narrows the P-gap but it persists (+20.0 → +7.0)"),
    (16.9, 19.9, "against CE, LA widens the P-gap (+16.9 → +19.9)"),
])
def test_every_verdict_branch(before, after, sentence):
    assert verdict(before, after, "P-gap", "LA", "CE") == sentence
    assert verdict(None, after, "P-gap", "LA", "CE") == ""


def test_gaps_are_judged_against_ce_for_both_gaps():
    # the case: zero-shot has a larger P-gap than CE, LA widens it against CE. A
    # verdict against zero-shot would have said "narrows"
    main, dxp = _tables({("toyclip2", "zero_shot"): (30.0, 25.0),
                         ("toyclip2", "ce"): (20.0, 16.9),
                         ("toyclip2", "la"): (8.0, 19.9)})
    (line,) = gap_lines(main, dxp, "toy")
    assert line == ("**toyclip2**, frozen heads: D-gap (Many − Few) zero-shot +30.0, CE +20.0, "
                    "LA +8.0 — against CE, LA narrows the D-gap but it persists (+20.0 → "
                    "+8.0); P-gap within D-Few (P-Many − P-Few) zero-shot +25.0, CE +16.9, "
                    "LA +19.9 — against CE, LA widens the P-gap (+16.9 → +19.9).")
    assert "narrows the P-gap" not in line


def test_fine_tuning_track_is_judged_against_the_frozen_ce_head_and_says_so():
    main, dxp = _tables({("toyclip0", "zero_shot"): (30.0, 40.0),
                         ("toyclip0", "ce"): (20.0, 27.3),
                         ("toyclip0", "la"): (10.0, 30.0),
                         ("toyclip0", "adaptformer_la"): (0.5, 35.5)})
    frozen, ft = gap_lines(main, dxp, "toy")
    assert frozen.startswith("**toyclip0**, frozen heads:")
    assert ft == ("**toyclip0**, fine-tuning: D-gap (Many − Few) zero-shot +30.0, CE +20.0, "
                  "AdaptFormer + LA +0.5 — against CE (frozen head), AdaptFormer + LA closes "
                  "the D-gap (+20.0 → +0.5); P-gap within D-Few (P-Many − P-Few) zero-shot "
                  "+40.0, CE +27.3, AdaptFormer + LA +35.5 — against CE (frozen head), "
                  "AdaptFormer + LA widens the P-gap (+27.3 → +35.5).")


def test_fine_tuning_track_prefers_fine_tuned_ce():
    main, dxp = _tables({("b", "ce"): (20.0, 10.0), ("b", "adaptformer_ce"): (15.0, 30.0),
                         ("b", "adaptformer_la"): (5.0, 12.0)})
    (ft,) = [x for x in gap_lines(main, dxp, "toy") if "fine-tuning" in x]
    assert "against AdaptFormer + CE, AdaptFormer + LA narrows the D-gap but it persists " \
           "(+15.0 → +5.0)" in ft
    assert "against AdaptFormer + CE, AdaptFormer + LA narrows the P-gap but it persists " \
           "(+30.0 → +12.0)" in ft


def test_without_ce_both_gaps_are_judged_against_zero_shot_and_no_prior_says_so():
    main, dxp = _tables({("b", "zero_shot"): (10.0, None), ("b", "la"): (0.2, None)})
    (line,) = gap_lines(main, dxp, "toy")
    assert line == ("**b**, frozen heads: D-gap (Many − Few) zero-shot +10.0, LA +0.2 — "
                    "against zero-shot, LA closes the D-gap (+10.0 → +0.2); P-gap within "
                    "D-Few (P-Many − P-Few) n/a (no estimated prior).")


def test_a_missing_gap_is_said_and_the_other_still_judged_against_ce():
    # a tiny world without a Many class: no D-gap anywhere; the P-gap is still judged
    # against CE (not against zero-shot, whose P-gap is the only large one)
    main, dxp = _tables({("b", "zero_shot"): (0.0, 50.0), ("b", "ce"): (0.0, 0.0),
                         ("b", "la"): (0.0, 0.0)})
    main["many_mean"] = float("nan")
    (line,) = gap_lines(main, dxp, "toy")
    assert line == ("**b**, frozen heads: D-gap (Many − Few) n/a (no class in the Many or the "
                    "Few group); P-gap within D-Few (P-Many − P-Few) zero-shot +50.0, CE "
                    "+0.0, LA +0.0 — neither CE nor LA has a P-gap (+0.0 → +0.0).")


def test_no_negative_zero():
    assert num(-0.04) == "+0.0" and num(-0.004, 2) == "+0.00"
    assert num(-0.04, sign=False) == "0.0" and num(-0.06) == "-0.1"
    main, dxp = _tables({("b", "ce"): (0.04, -0.04), ("b", "la"): (-0.04, 0.03)})
    (line,) = gap_lines(main, dxp, "toy")
    assert "-0.0" not in line and "−0" not in line, line


def _sig(rows):
    base = {"dataset": "toy", "a_backbone": "ensemble", "b_backbone": "ensemble",
            "n_seeds": 3, "n_images": 100}
    return pd.DataFrame([{**base, **r} for r in rows])


BEST = {"kind": "backdoor_vs_best_member", "a_method": "backdoor", "b_method": "la",
        "b_backbone": "best_member", "b_label": "best member on val (toyclip1)"}
FT = {"kind": "backdoor_vs_best_member", "a_method": "backdoor_finetuned",
      "b_method": "adaptformer_la", "b_backbone": "best_member",
      "b_label": "best member on val (toyclip0)"}


def _control(method, top1, diff, lo, hi):
    return {"kind": "control_vs_backdoor", "a_method": method, "b_method": "backdoor",
            "b_label": "backdoor", "a_top1": top1, "b_top1": 70.0, "diff": diff, "lo": lo,
            "hi": hi, "significant": lo > 0 or hi < 0}


def test_each_backdoor_gets_its_own_gain_and_controls_their_share():
    main, _ = _tables({("b", "la"): (1.0, None)})
    sig = _sig([
        {**BEST, "a_top1": 70.0, "b_top1": 66.0, "diff": 4.0, "lo": 2.0, "hi": 6.0,
         "significant": True},
        {**FT, "a_top1": 75.0, "b_top1": 75.5, "diff": -0.5, "lo": -1.25, "hi": 0.25,
         "significant": False},
        _control("backdoor_ce", 69.0, -1.0, -2.0, -0.2),  # 3 of the 4 points: 75 %
        _control("backdoor_prob_mean", 65.0, -5.0, -6.0, -4.0),  # below the best member
        _control("backdoor_learned", 71.0, 1.0, -0.5, 2.5),  # beyond the backdoor
    ])
    lines = backdoor_lines(sig, main, "toy")
    assert lines == [
        "**Backdoor gain** (frozen heads): backdoor over its best member on val (toyclip1): "
        "+4.00 points top-1 (95 % paired bootstrap interval [+2.00, +6.00], significant; "
        "backdoor 70.0 vs 66.0, 3 seed(s)).",
        "**Backdoor gain** (fine-tuning): backdoor (AdaptFormer-LA members) over its best "
        "member on val (toyclip0): -0.50 points top-1 (95 % paired bootstrap interval "
        "[-1.25, +0.25], not significant; backdoor 75.0 vs 75.5, 3 seed(s)).",
        "Control **backdoor (CE members)** vs backdoor: -1.00 points top-1 [-2.00, -0.20], "
        "significant; it reaches 75 % of the backdoor's gain over its best member.",
        "Control **backdoor (prob. mean)** vs backdoor: -5.00 points top-1 [-6.00, -4.00], "
        "significant; it does not beat the backdoor's best member (65.0 vs 66.0).",
        "Control **backdoor (learned weights)** vs backdoor: +1.00 points top-1 [-0.50, "
        "+2.50], not significant; it matches or exceeds the backdoor's gain over its best "
        "member.",
    ]


def test_no_share_of_a_gain_that_is_not_significantly_positive():
    main, _ = _tables({("b", "la"): (1.0, None)})
    for diff, lo, hi in ((-1.5, -3.0, -0.1), (0.7, -0.4, 1.8)):  # negative; not significant
        sig = _sig([{**BEST, "a_top1": 66.0 + diff, "b_top1": 66.0, "diff": diff, "lo": lo,
                     "hi": hi, "significant": lo > 0 or hi < 0},
                    _control("backdoor_ce", 60.0, -6.0, -7.0, -5.0)])
        control = backdoor_lines(sig, main, "toy")[1]
        assert control == ("Control **backdoor (CE members)** vs backdoor: -6.00 points "
                           "top-1 [-7.00, -5.00], significant.")
        assert "%" not in control


def test_without_significance_the_gain_says_it_is_chosen_on_test():
    main, dxp = _tables({("b0", "la"): (1.0, None), ("b1", "la"): (1.0, None),
                         ("ensemble", "backdoor"): (1.0, None)})
    main.loc[main["backbone"] == "b1", "top1_mean"] = 58.0
    main.loc[main["backbone"] == "ensemble", "top1_mean"] = 59.96
    main.loc[main["backbone"] == "b0", "top1_mean"] = 60.0
    (line,) = backdoor_lines(None, main, "toy")
    assert line == ("**Backdoor gain** over the best single LA run (chosen on test, no "
                    "interval: significance not computed): +0.0 points top-1 (backdoor 60.0 "
                    "vs b0 60.0).")


def test_findings_page_states_the_rule():
    main, dxp = _tables({("b", "ce"): (20.0, 16.9), ("b", "la"): (8.0, 19.9)})
    md = findings(main, dxp)
    assert f"a gap below {CLOSE_TOL:g} point counts as closed" in md
    assert "with the same track's CE on the same gap" in md
    assert "- **b**, frozen heads:" in md
