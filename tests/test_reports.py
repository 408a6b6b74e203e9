"""build_report end to end on the fixture store of known numbers (tests/fixtures/report_store)."""

from __future__ import annotations

import csv
import importlib.util
import re
import sqlite3
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest

from harness.store import Store, TrialRow
from reports import build_report, history, load, views
from reports.latex import escape

HERE = Path(__file__).resolve().parent
spec = importlib.util.spec_from_file_location(
    "report_store_fixture", HERE / "fixtures" / "report_store" / "build_store.py")
fx = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fx)

FAILING = {"auc_drop_max": 0.01, "fps_min": {"rpi5": 30, "*": 10}, "parity_max_abs": 0.02,
           "max_failed_trials": 0, "no_regressions": True}
PASSING = {"auc_drop_max": 0.1, "fps_min": {"rpi5": 20, "*": 10}, "parity_max_abs": 0.1,
           "decision_agreement_min": 0.99, "max_failed_trials": 1}


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> Path:
    return fx.build_store(tmp_path_factory.mktemp("store") / "results.db")


@pytest.fixture(scope="module")
def failing(db, tmp_path_factory):
    return build_report(db, "r5", tmp_path_factory.mktemp("failing"), gates=FAILING)


@pytest.fixture(scope="module")
def passing(db, tmp_path_factory):
    return build_report(db, "r5", tmp_path_factory.mktemp("passing"), gates=PASSING)


class Marks(HTMLParser):
    """Collect {table id: {"best"|"second": {(row, col)}}} from <strong>/<u> inside cells."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, dict[str, set]] = {}
        self.table = self.row = self.col = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and "paper" in (a.get("class") or ""):
            self.table = a["id"]
            self.tables[self.table] = {"best": set(), "second": set()}
        elif tag == "tr" and self.table:
            self.row = a.get("data-method")
        elif tag == "td" and self.table:
            self.col = a.get("data-col")
        elif tag in ("strong", "u") and self.table and self.row and self.col:
            self.tables[self.table]["best" if tag == "strong" else "second"].add(
                (self.row, self.col))

    def handle_endtag(self, tag):
        if tag == "table":
            self.table = None


def html_marks(path: Path) -> dict:
    p = Marks()
    p.feed(path.read_text(encoding="utf-8"))
    return p.tables


def tex_marks(path: Path) -> dict:
    """{label: {"best"|"second": {(row, col)}}} from the booktabs tables."""
    out = {}
    for block in path.read_text(encoding="utf-8").split(r"\begin{table}")[1:]:
        m = re.search(r"\\label\{tab:([^}]+)\}", block)
        if not m:
            continue
        lines = [ln for ln in block.splitlines() if ln.endswith(r"\\") and " & " in ln]
        head = [c.strip() for c in lines[0][:-2].split(" & ")]
        res = {"best": set(), "second": set()}
        for ln in lines[1:]:
            cells = [c.strip() for c in ln[:-2].split(" & ")]
            for col, cell in zip(head[1:], cells[1:]):
                if r"\textbf{" in cell:
                    res["best"].add((cells[0], col))
                if r"\underline{" in cell:
                    res["second"].add((cells[0], col))
        out[m.group(1)] = res
    return out


def test_outputs_written(failing):
    for p in (failing.html, failing.tex, failing.csv, failing.junit):
        assert p.is_file() and p.stat().st_size > 0
    assert failing.parquet is None  # pyarrow is not a dependency
    assert failing.n_trials == 78


def test_html_marks_best_and_second(failing):
    got = html_marks(failing.html)
    for key, exp in fx.EXPECTED.items():
        assert got[key]["best"] == exp["best"], key
        assert got[key]["second"] == exp["second"], key


def test_latex_marks_best_and_second(failing):
    got = tex_marks(failing.tex)
    for key, exp in fx.EXPECTED.items():
        esc = {m: {(escape(r), escape(c)) for r, c in exp[m]} for m in ("best", "second")}
        assert got[key]["best"] == esc["best"], key
        assert got[key]["second"] == esc["second"], key
    tex = failing.tex.read_text()
    assert r"DFDC\_p" in tex and r"\toprule" in tex and r"\bottomrule" in tex
    assert "DFDC_p" not in tex.replace(r"DFDC\_p", "")


def test_html_is_self_contained_and_escaped(failing):
    html = failing.html.read_text(encoding="utf-8")
    assert "<script" not in html  # the suite file's <script> comment is shown escaped
    assert "&lt;script&gt;alert(" in html
    assert not re.search(r"""(src|href)\s*=\s*["'](?!#|data:)""", html)
    assert "Content-Security-Policy" in html and "default-src 'none'" in html
    assert html.count("<svg") >= 6
    # deltas, CI tooltip and the simulated-only trials are shown
    assert "95% CI 0.948–0.962" in html
    assert "tflite conversion: unsupported op SiLU in DWConv" in html
    assert "adb: device offline &lt;pixel8&gt;" in html
    assert "gptq: depthwise convolutions unsupported" in html


def test_failing_gates(failing):
    assert failing.gates_passed is False
    fps_failed = {(o.key["detector"], o.key["method"], o.key["bits"])
                  for o in failing.gates if o.gate == "fps_min" and o.status == "failed"}
    assert fps_failed == fx.EXPECTED_FPS_FAIL_RPI5_30
    parity_failed = [o for o in failing.gates if o.gate == "parity_max_abs" and not o.ok]
    assert {(o.key["method"], o.key["device"], o.key["dataset"]) for o in parity_failed} == {
        ("minmax", "pixel8", "FF++"), ("minmax", "pixel8", "Celeb-DF")}
    by_subject = {o.subject: o for o in failing.gates if o.gate == "auc_drop_max"}
    ok = by_subject["xception/defakeq/W4A4/FF++ on rpi5/onnxruntime (onnx)"]
    assert ok.status == "passed" and abs(ok.value - 0.005) < 1e-9
    assert "fp32 on rpi5 (onnx)" in ok.message
    eff = by_subject["effnb4/defakeq/W4A4/Celeb-DF on rpi5/onnxruntime (onnx)"]
    assert eff.status == "passed" and "fp32_auc column" in eff.message  # 0.800 - 0.790

    root = ET.parse(failing.junit).getroot()
    fps_suite = root.find("testsuite[@name='gates.fps_min']")
    assert fps_suite.get("failures") == "6" and fps_suite.get("tests") == str(
        sum(o.gate == "fps_min" for o in failing.gates))
    case = fps_suite.find("testcase[@name='effnb4/defakeq/W4A4 on rpi5/onnxruntime (onnx)']")
    fail = case.find("failure")
    assert fail is not None and "worst FPS 25.0" in fail.get("message")
    passed_case = fps_suite.find(
        "testcase[@name='xception/defakeq/W4A4 on rpi5/onnxruntime (onnx)']")
    assert passed_case.find("failure") is None
    assert int(root.get("tests")) == len(failing.gates)
    assert int(root.get("failures")) == sum(o.status == "failed" for o in failing.gates)


def test_passing_gates(passing):
    assert passing.gates_passed is True, [o for o in passing.gates if not o.ok]
    root = ET.parse(passing.junit).getroot()
    assert root.get("failures") == "0" and root.get("errors") == "0"
    assert int(root.get("tests")) == len(passing.gates) > 100
    assert 'data-verdict="pass"' in passing.html.read_text(encoding="utf-8")


def test_gate_without_subject_is_an_error_and_store_is_untouched(db, tmp_path):
    before = db.read_bytes()
    res = build_report(db, "r5", tmp_path, gates={"fps_min": {"jetson-orin": 30}})
    assert res.gates_passed is False
    assert [(o.status, o.subject) for o in res.gates] == [("error", "(no subject)")]
    assert ET.parse(res.junit).getroot().find(".//error") is not None
    assert db.read_bytes() == before  # a report never writes to the store


def test_max_failed_trials_gate(failing, passing):
    f = [o for o in failing.gates if o.gate == "max_failed_trials"]
    assert [(o.status, o.value) for o in f] == [("failed", 1)]
    p = [o for o in passing.gates if o.gate == "max_failed_trials"]
    assert [(o.status, o.value) for o in p] == [("passed", 1)]


def test_regression_injected_in_last_run_is_flagged(failing):
    flagged = {r.subject for r in failing.regressions}
    assert flagged == {"AUC xception/defakeq/W4A4 on FF++",
                       "FPS xception/defakeq/W4A4 on rpi5/onnxruntime (onnx)"}
    html = failing.html.read_text(encoding="utf-8")
    table = html[html.index('id="regressions"'):]
    table = table[:table.index("</table>")]
    assert "AUC xception/defakeq/W4A4 on FF++" in table
    assert "AUC xception/gptq/W4A4 on DFDC_p" not in table  # noisy metric: within 3 sd
    for rid in ("r1", "r2", "r3", "r4", "r5"):
        assert f">{rid}</th>" in table
    assert ">w1</th>" not in table  # another suite


def test_history_tolerance_and_window(db, failing, tmp_path):
    res = build_report(db, "r5", tmp_path / "k0", tolerance={"k": 0})
    assert "AUC xception/gptq/W4A4 on DFDC_p" in {r.subject for r in res.regressions}
    res = build_report(db, "r4", tmp_path / "r4", gates={"no_regressions": True})
    assert res.regressions == [] and res.gates_passed
    reg = [o for o in failing.gates if o.gate == "no_regressions"]
    assert [o.status for o in reg] == ["failed", "failed"]
    conn = load.connect(db)
    runs = load.load_runs(conn)
    conn.close()
    r5 = load.run_row(runs, "r5", db)
    assert [r["run_id"] for r in history.select_runs(runs, r5, 10)] == ["r1", "r2", "r3", "r4",
                                                                       "r5"]
    assert [r["run_id"] for r in history.select_runs(runs, r5, 2)] == ["r4", "r5"]
    r3 = load.run_row(runs, "r3", db)  # later runs never count as history
    assert [r["run_id"] for r in history.select_runs(runs, r3, 10)] == ["r1", "r2", "r3"]


def test_csv_tidy_results(failing):
    rows = list(csv.DictReader(failing.csv.open(encoding="utf-8")))
    assert len(rows) == 78
    assert {r["status"] for r in rows} == {"ok", "failed", "skipped", "simulated-only"}
    r = next(r for r in rows if (r["detector"], r["method"], r["bits"], r["dataset"],
                                 r["device"]) == ("xception", "defakeq", "W4A4", "FF++", "rpi5"))
    assert float(r["fp32_ref_auc"]) == 0.96 and abs(float(r["delta_auc"]) + 0.005) < 1e-9


def test_views_numbers(db):
    conn = load.connect(db)
    df = load.load_trials(conn, ["r5"])
    conn.close()
    dep = views.deployments(df).set_index(["detector", "method", "bits", "device"])
    d = dep.loc[("xception", "defakeq", "W4A4", "rpi5")]
    samples = fx._latency(31.0)
    fps_mean = 1000 / (sum(samples) / len(samples))
    assert d["fps"] == 31.0 and d["fps_ci"][0] <= fps_mean <= d["fps_ci"][1]
    assert d["thermal_before"] == 48.5 and d["thermal_after"] == 61.0
    p = dep.loc[("xception", "fp32", "W32A32", "pixel8")]
    assert p["throttled"] is True and p["thermal_after"] == 44.0  # hottest zone
    assert dep.loc[("xception", "minmax", "W4A4", "pixel8")]["n"] == 2  # DFDC_p failed
    cells = views.accuracy_cells(df).set_index(["detector", "bits", "method", "dataset"])
    c = cells.loc[("effnb4", "W4A4", "defakeq", "FF++")]
    assert c["auc"] == 0.95 and not c["simulated"] and c["n"] == 1


def _mini_store(path: Path, rows: list[TrialRow]) -> Path:
    s = Store(path)
    s.start_run("m1", "mini", "h", "name: mini\n", "abc", {})
    for r in rows:
        s.add_trial(r)
    s.close()
    return path


def test_simulated_only_cell_and_fp32_auc_reference(tmp_path):
    db = _mini_store(tmp_path / "m.db", [
        TrialRow("m1", "det", "ds", "defakeq", "W4A4", "tflite", "phone", "litert",
                 "simulated-only", {"sim_auc": 0.91, "fp32_auc": 0.93,
                                    "method_family": "defakeq", "reason": "no delegate"}),
        TrialRow("m1", "det", "ds", "minmax", "W4A4", "onnx", "pi", "ort", "ok",
                 {"auc": 0.85, "fp32_auc": 0.93, "method_family": "baseline", "fps": 12.0}),
    ])
    res = build_report(db, "m1", tmp_path / "out", gates={"auc_drop_max": 0.05})
    html = res.html.read_text(encoding="utf-8")
    assert "FP32 (fp32_auc)" in html and "simulated only (not deployed)" in html
    got = html_marks(res.html)["main-det-w4a4"]
    assert got["best"] == {("defakeq", "ds"), ("defakeq", "Mean")}
    assert [(o.status, o.key["method"]) for o in res.gates] == [("failed", "minmax")]


def test_bad_inputs_are_named(db, tmp_path):
    with pytest.raises(load.StoreError, match="does not exist"):
        build_report(tmp_path / "nope.db", "r5", tmp_path)
    with pytest.raises(load.StoreError, match=r"run_id 'r9' is not in .*latest runs: .*r5"):
        build_report(db, "r9", tmp_path)
    with pytest.raises(ValueError, match=r"gates: unknown key\(s\) \['fps'\]"):
        build_report(db, "r5", tmp_path, gates={"fps": 30})
    with pytest.raises(ValueError, match="history must be an integer >= 1"):
        build_report(db, "r5", tmp_path, history=0)
    bad = tmp_path / "bad.db"
    with sqlite3.connect(bad) as c:
        c.execute("CREATE TABLE trials (run_id TEXT, detector TEXT)")
    with pytest.raises(load.StoreError, match="lacks contract columns"):
        build_report(bad, "r5", tmp_path)
    (tmp_path / "junk.db").write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(load.StoreError, match="not a SQLite results store"):
        build_report(tmp_path / "junk.db", "r5", tmp_path)


def test_empty_and_all_failed_runs_still_report(tmp_path):
    s = Store(tmp_path / "e.db")
    s.start_run("e1", "empty", "h", "", "c", {})
    s.start_run("e2", "empty", "h", "", "c", {})
    s.add_trial(TrialRow("e2", "det", "ds", "defakeq", "W4A4", "onnx", "pi", "ort", "failed",
                         {"reason": "ssh: connection refused"}))
    s.close()
    for rid, n in (("e1", 0), ("e2", 1)):
        res = build_report(tmp_path / "e.db", rid, tmp_path / rid, gates={"fps_min": 10})
        assert res.n_trials == n and not res.gates_passed
        assert [o.status for o in res.gates] == ["error"]  # nothing was measured
    html = res.html.read_text(encoding="utf-8")
    assert "ssh: connection refused" in html and 'data-verdict="fail"' in html
