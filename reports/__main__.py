"""python -m reports STORE RUN_ID OUT_DIR [--gates JSON] [--history N] [--tolerance JSON]"""

from __future__ import annotations

import argparse
import json
import sys

from reports.build import build_report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m reports", description=__doc__)
    ap.add_argument("store")
    ap.add_argument("run_id")
    ap.add_argument("out_dir")
    ap.add_argument("--gates", type=json.loads, default=None, help="gates as JSON")
    ap.add_argument("--history", type=int, default=10)
    ap.add_argument("--tolerance", type=json.loads, default=None, help="tolerances as JSON")
    a = ap.parse_args(argv)
    res = build_report(a.store, a.run_id, a.out_dir, a.gates, a.history, a.tolerance)
    print(f"{res.html}\n{res.tex}\n{res.csv}\n{res.junit}")
    bad = [o for o in res.gates if not o.ok]
    for o in bad:
        print(f"GATE {o.status.upper()}: {o.gate} {o.subject}: {o.message}", file=sys.stderr)
    return 0 if res.gates_passed else 1


if __name__ == "__main__":
    sys.exit(main())
