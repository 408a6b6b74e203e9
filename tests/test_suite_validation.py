"""Bad suite files are rejected before any work: file, key path, what is allowed, exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness.suite import SuiteError, load_suite

GOOD = """
name: t
datasets: [{name: synthetic, options: {n_test: 10}}]
detectors: [{name: tiny-dsnet}]
methods: [{name: fp32}, {name: minmax, bits: [W8A8]}]
"""

BAD = [
    ("nme: t\n" + GOOD.replace("name: t\n", "", 1), "nme: unknown key"),
    (GOOD.replace("tiny-dsnet", "tiny-dsnett"), "unknown detector 'tiny-dsnett'; allowed:"),
    (GOOD.replace("name: synthetic", "name: ffpp"), "unknown dataset 'ffpp'; allowed:"),
    (GOOD.replace("name: minmax", "name: minmaxx"), "unknown method 'minmaxx'; allowed:"),
    (GOOD.replace("W8A8", "W8"), "expected W<weight bits>A<activation bits>"),
    (GOOD.replace("W8A8", "W12A8"), "weight bits must lie in [1, 8]"),
    (GOOD.replace("{name: fp32}", "{name: fp32, bits: [W8A8]}"), "does not quantize; remove bits"),
    (GOOD.replace(", {name: minmax, bits: [W8A8]}", ", {name: minmax}"), "needs bits"),
    (GOOD + "formats: [onnx, coreml]\n", "unknown format(s) ['coreml']"),
    (GOOD + "gates: {auc_drop: 0.1}\n", "unknown gate(s) ['auc_drop']"),
    (GOOD + "trials: {runs: -1}\n", "trials.runs"),
    (GOOD + "seed: abc\n", "seed"),
    (GOOD + "parity: {quantile: 1.5}\n", "parity.quantile"),
    (GOOD.replace("{name: tiny-dsnet}", "{name: tiny-dsnet, train_on: celeb}"), "train_on: 'celeb' is not a dataset"),
    (GOOD.replace("{name: tiny-dsnet}", "{name: xception, variant: full}"), "full variant needs a checkpoint"),
    ("- just\n- a list\n", "expected a mapping"),
    ("name: [unclosed\n", "not valid YAML"),
]


@pytest.mark.parametrize("text,needle", BAD)
def test_bad_suites_name_the_key(tmp_path, text, needle):
    f = tmp_path / "suite.yaml"
    f.write_text(text)
    with pytest.raises(SuiteError) as err:
        load_suite(f)
    assert str(f) in str(err.value) and needle in str(err.value), str(err.value)


def test_good_suite_and_profiles(tmp_path):
    f = tmp_path / "suite.yaml"
    f.write_text(GOOD + "profiles:\n  big: {name: big, trials: {runs: 5}}\n")
    suite, _ = load_suite(f)
    assert suite.name == "t" and suite.trials.runs == 200
    big, _ = load_suite(f, profile="big")
    assert big.name == "big" and big.trials.runs == 5 and big.methods == suite.methods
    with pytest.raises(SuiteError, match="no such profile"):
        load_suite(f, profile="nope")
    # relative paths resolve against the suite file's folder
    assert Path(suite.store) == (tmp_path / "runs/results.db").resolve()


def test_cli_exit_code_2_and_nothing_run(tmp_path):
    f = tmp_path / "suite.yaml"
    f.write_text(GOOD.replace("tiny-dsnet", "nope"))
    p = subprocess.run([sys.executable, "-m", "harness.cli", "run", str(f)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert "detectors.0.name" in p.stderr and "unknown detector 'nope'" in p.stderr
    assert not (tmp_path / "runs").exists()  # caught before any work


def test_default_suite_is_valid_and_plans(tmp_path):
    root = Path(__file__).resolve().parents[1]
    suite, _ = load_suite(root / "suite.yaml")
    from devices.inventory import load_inventory
    from harness.plan import make_plan

    plan = make_plan(suite, load_inventory(suite.devices))
    # 2 detectors x (fp32, min-max W8A8 + W4A4, mse W4A4, defakeq W4A4) x (ONNX, TFLite)
    assert len(plan.quant) == 10 and len(plan.export) == 20 and len(plan.trials) == 20


def test_suite_gate_keys_are_the_reports_gate_keys():
    from harness.suite import GATE_KEYS
    from reports.gates import GATE_KEYS as REPORT_KEYS

    assert set(GATE_KEYS) == set(REPORT_KEYS)


@pytest.mark.parametrize("gates,needle", [
    ("{auc_drop_max: -1}", "gates.auc_drop_max: expected a number >= 0"),
    ("{fps_min: {rpi5: fast}}", "gates.fps_min['rpi5']"),
    ("{max_failed_trials: 1.5}", "gates.max_failed_trials"),
    ("{no_regressions: maybe}", "gates.no_regressions"),
])
def test_bad_gate_values(tmp_path, gates, needle):
    f = tmp_path / "suite.yaml"
    f.write_text(GOOD + f"gates: {gates}\n")
    with pytest.raises(SuiteError) as err:
        load_suite(f)
    assert needle in str(err.value)


def test_parity_quantile_judges_the_bulk_and_max_is_the_default():
    import numpy as np

    from harness.metrics import parity

    sim = np.linspace(0.0, 1.0, 200)
    dep = sim.copy()
    dep[7] += 0.3  # one frame off by one 4-bit code, say
    labels = (np.arange(200) % 2).astype(int)
    assert parity(sim, dep, labels)["parity_quantile_abs"] == pytest.approx(0.3)  # quantile 1 = max
    p = parity(sim, dep, labels, quantile=0.95)
    assert p["parity_quantile_abs"] == 0.0 and p["parity_max_abs"] == pytest.approx(0.3)
