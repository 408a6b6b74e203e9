"""reports/: the results store -> paper tables, figures, history, gates -> HTML, LaTeX, JUnit.

Reads the SQLite store only (never imports torch, quant, devices or harness).
"""

from reports.build import ReportResult, build_report
from reports.gates import GateOutcome

__all__ = ["GateOutcome", "ReportResult", "build_report"]
