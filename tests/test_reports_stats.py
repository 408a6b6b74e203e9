"""reports.stats / tables / gates / latex primitives on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from reports import stats
from reports.figures import pareto_front
from reports.gates import fps_threshold, validate
from reports.history import validate_tolerance
from reports.latex import cell_tex, escape
from reports.tables import Cell, assign_marks


def test_exact_bootstrap_hand_case():
    # x = [0, 0, 3]: the resample mean is k (number of 3s drawn), k ~ Binomial(3, 1/3):
    # P = 8/27, 12/27, 6/27, 1/27 for means 0, 1, 2, 3. CDF = .296, .741, .963, 1.
    assert stats.exact_bootstrap_ci([0, 0, 3], level=0.80) == (0.0, 2.0)  # q .10 -> 0, .90 -> 2
    assert stats.exact_bootstrap_ci([0, 0, 3], level=0.95) == (0.0, 3.0)  # q .975 > .963 -> 3
    # x = [0, 1]: means 0, .5, 1 with P .25, .5, .25; 50% CI = quantiles .25 and .75
    assert stats.exact_bootstrap_ci([0, 1], level=0.50) == (0.0, 0.5)


def test_monte_carlo_bootstrap_agrees_with_exact():
    assert stats.bootstrap_ci([0, 0, 3], level=0.80, n_boot=20000, seed=1) == (0.0, 2.0)
    assert stats.bootstrap_ci([0, 0, 3], level=0.95, n_boot=20000, seed=2) == (0.0, 3.0)
    assert stats.bootstrap_ci([4.0] * 10) == (4.0, 4.0)
    # a non-vectorisable statistic goes through the per-resample path
    lo, hi = stats.bootstrap_ci([1.0, 2.0, 3.0, 4.0], stat=lambda a: float(np.median(a)),
                                n_boot=500)
    assert 1.0 <= lo <= hi <= 4.0


def test_bootstrap_rejects_bad_input():
    with pytest.raises(ValueError, match="level"):
        stats.bootstrap_ci([1, 2], level=1.5)
    with pytest.raises(ValueError, match="at least one"):
        stats.bootstrap_ci([])
    with pytest.raises(ValueError, match="exact bootstrap"):
        stats.exact_bootstrap_ci(list(range(9)))


def test_auc_hand_cases():
    assert stats.auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    assert stats.auc([0.5, 0.5], [0, 1]) == 0.5  # a tie counts one half
    assert stats.auc([0.2, 0.9, 0.1, 0.8], [0, 1, 0, 1]) == 1.0
    with pytest.raises(ValueError, match="both classes"):
        stats.auc([0.1, 0.2], [1, 1])
    lo, hi = stats.bootstrap_auc_ci([0.1, 0.4, 0.35, 0.8, 0.3, 0.7], [0, 0, 1, 1, 0, 1],
                                    n_boot=300)
    assert 0.0 <= lo <= stats.auc([0.1, 0.4, 0.35, 0.8, 0.3, 0.7], [0, 0, 1, 1, 0, 1]) <= hi <= 1


def test_fps_ci_from_latency():
    assert stats.fps_ci([10.0] * 20) == (100.0, 100.0)
    lo, hi = stats.fps_ci([9.0, 10.0, 11.0, 10.0, 12.0, 8.0], n_boot=2000)
    assert lo < 100.0 < hi and hi - lo < 25


def test_drop_test_is_noise_aware():
    t = stats.drop_test(0.955, [0.970, 0.971, 0.969, 0.970], tolerance=0.005, k=3)
    assert t.flagged and math.isclose(t.baseline, 0.970) and math.isclose(t.drop, 0.015)
    assert math.isclose(t.std, math.sqrt(2e-6 / 3)) and t.threshold == 0.005
    noisy = [0.700, 0.730, 0.680, 0.720]  # sd 0.02217: 3 sd = 0.0665 > the 0.0075 drop
    t = stats.drop_test(0.700, noisy, tolerance=0.005, k=3)
    assert not t.flagged and math.isclose(t.threshold, 3 * np.std(noisy, ddof=1))
    assert stats.drop_test(0.700, noisy, tolerance=0.005, k=0).flagged
    r = stats.drop_test(31.0, [40.0, 41.0, 39.0, 40.0], tolerance=0.05, k=3, relative=True)
    assert r.flagged and math.isclose(r.drop, 0.225)
    assert not stats.drop_test(39.0, [40.0], tolerance=0.05, k=3, relative=True).flagged
    assert stats.drop_test(0.9, [], tolerance=0.005, k=3) is None
    assert stats.drop_test(0.96, [0.95, 0.95], tolerance=0.005, k=3).flagged is False


def test_pareto_front_hand_case():
    sizes = [10.0, 10.0, 20.0, 80.0, 30.0]
    aucs = [0.80, 0.75, 0.82, 0.83, 0.81]
    assert pareto_front(sizes, aucs) == [0, 2, 3]  # 1: same size, worse; 4: bigger, worse


def test_marks_competition_ranking():
    cells = [Cell(0.9), Cell(0.9), Cell(0.8)]
    assign_marks(cells, [True, True, True])
    assert [c.mark for c in cells] == ["best", "best", None]  # tie for best: no second
    cells = [Cell(0.99), Cell(0.9), Cell(0.8), Cell(0.8), Cell(0.7), Cell(None)]
    assign_marks(cells, [False, True, True, True, True, True])  # the 0.99 is FP32
    assert [c.mark for c in cells] == [None, "best", "second", "second", None, None]
    cells = [Cell(0.81701), Cell(0.81699)]  # both read 0.817: same mark
    assign_marks(cells, [True, True])
    assert [c.mark for c in cells] == ["best", "best"]


def test_latex_cells_and_escaping():
    assert escape("DFDC_p & 100% {x} #1 $") == r"DFDC\_p \& 100\% \{x\} \#1 \$"
    assert escape("ΔAUC — a") == r"$\Delta$AUC --- a"
    assert cell_tex(Cell(0.955, -0.005, "best")) == r"\textbf{0.955}\,{\scriptsize($-$0.005)}"
    assert cell_tex(Cell(0.945, 0.01, "second")) == r"\underline{0.945}\,{\scriptsize(+0.010)}"
    assert cell_tex(Cell(None)) == "--"


def test_gate_and_tolerance_validation():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['fps'\]; allowed"):
        validate({"fps": 30})
    with pytest.raises(ValueError, match=r"gates.fps_min\['rpi5'\] must be a number"):
        validate({"fps_min": {"rpi5": "fast"}})
    with pytest.raises(ValueError, match="auc_drop_max must be a number"):
        validate({"auc_drop_max": -1})
    with pytest.raises(ValueError, match="max_failed_trials must be an integer"):
        validate({"max_failed_trials": 1.5})
    with pytest.raises(ValueError, match="unknown key"):
        validate_tolerance({"latency": 1})
    assert validate_tolerance({"auc": 0.01})["auc"] == 0.01


def test_fps_threshold_precedence():
    spec = {"rpi5": 30, "arm64": 15, "board": 20, "*": 10}
    assert fps_threshold(spec, "rpi5", ["arm64", "board"]) == (30.0, "rpi5")  # name first
    assert fps_threshold(spec, "rpi4", ["arm64", "board"]) == (20.0, "board")  # strictest tag
    assert fps_threshold(spec, "x86", ["x86"]) == (10.0, "*")
    assert fps_threshold({"rpi5": 30}, "pixel8", ["android"]) is None
    assert fps_threshold(25, "anything", []) == (25.0, "*")


def test_reports_imports_no_other_layer():
    import ast
    from pathlib import Path

    import reports

    forbidden = {"torch", "quant", "devices", "harness"}
    for path in Path(reports.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for n in names:
                assert n.split(".")[0] not in forbidden, f"{path.name} imports {n}"
