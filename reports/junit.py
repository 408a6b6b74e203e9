"""JUnit XML of the gates: one <testsuite> per gate, one <testcase> per gate x subject.

CI systems show failed gates as failed tests: status failed -> <failure>, error -> <error>
(the gate could not be evaluated), skipped -> <skipped>.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from reports.gates import GateOutcome


def _fmt(v: float | None) -> str:
    return "" if v is None else f"{v:g}"


def to_xml(outcomes: list[GateOutcome], run_id: str) -> str:
    root = ET.Element("testsuites", name=f"defakeq gates {run_id}")
    suites: dict[str, ET.Element] = {}
    counts: dict[str, dict[str, int]] = {}
    for o in outcomes:
        if o.gate not in suites:
            suites[o.gate] = ET.SubElement(root, "testsuite", name=f"gates.{o.gate}")
            props = ET.SubElement(suites[o.gate], "properties")
            ET.SubElement(props, "property", name="run_id", value=run_id)
            counts[o.gate] = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
        c = counts[o.gate]
        case = ET.SubElement(suites[o.gate], "testcase", classname=f"gates.{o.gate}",
                             name=o.subject, time="0")
        c["tests"] += 1
        msg = o.message or o.status
        if o.status == "failed":
            el = ET.SubElement(case, "failure", message=msg, type="GateFailed")
            el.text = f"value={_fmt(o.value)} threshold={_fmt(o.threshold)}\n{msg}"
            c["failures"] += 1
        elif o.status == "error":
            el = ET.SubElement(case, "error", message=msg, type="GateError")
            el.text = msg
            c["errors"] += 1
        elif o.status == "skipped":
            ET.SubElement(case, "skipped", message=msg)
            c["skipped"] += 1
        else:
            ET.SubElement(case, "system-out").text = msg
    total = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for gate, el in suites.items():
        for k, v in counts[gate].items():
            el.set(k, str(v))
            total[k] += v
    for k in ("tests", "failures", "errors"):
        root.set(k, str(total[k]))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write(outcomes: list[GateOutcome], run_id: str, path: Path) -> Path:
    path.write_text(to_xml(outcomes, run_id), encoding="utf-8")
    return path
