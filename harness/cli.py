"""The `defakeq` command: run, plan, report, devices, list."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

# Before torch loads: OpenMP threads that spin-wait collapse when a shared machine is busy
# (measured here: 2-thread training steps 4-8x slower under load); sleeping threads do not.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from rich.console import Console
from rich.table import Table

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def _load(args) -> tuple:
    from devices.inventory import InventoryError, load_inventory

    from .suite import SuiteError, load_suite

    try:
        suite, text = load_suite(args.suite, profile=getattr(args, "profile", None))
        inventory = load_inventory(suite.devices)
    except (SuiteError, InventoryError) as exc:
        Console(stderr=True).print(f"[red]error:[/] {exc}", highlight=False)
        raise SystemExit(EXIT_BAD_INPUT) from None
    return suite, text, inventory


def cmd_plan(args) -> int:
    from .plan import make_plan
    from .suite import SuiteError

    suite, _, inventory = _load(args)
    try:
        plan = make_plan(suite, inventory)
    except SuiteError as exc:
        Console(stderr=True).print(f"[red]error:[/] {args.suite}: {exc}", highlight=False)
        return EXIT_BAD_INPUT
    done = _done_trial_keys(suite, getattr(args, "resume", None))
    console = Console(width=None if sys.stdout.isatty() else 160)
    table = Table(title=f"{suite.name}: {len(plan.quant)} quantizations, {len(plan.export)} artifacts, {len(plan.trials)} trials")
    for col in ("detector", "method", "bits", "format", "dataset", "device", "runtime", "state"):
        table.add_column(col)
    for t in plan.trials:
        q = t.export.quant
        state = "done" if t.key in done else "todo"
        table.add_row(q.detector, q.label, q.bits, t.export.format, t.dataset, t.device, t.runtime, state)
    console.print(table)
    for w in plan.warnings:
        console.print(f"[yellow]warning:[/] {w}")
    return EXIT_OK


def _done_trial_keys(suite, run_id: str | None) -> set[str]:
    if not run_id or not Path(suite.store).is_file():
        return set()
    from .store import Store

    store = Store(suite.store)
    try:
        return {
            f"{r['detector']}/{r['method']}/{r['bits']}/{r['format']}/{r['dataset']}/{r['device']}/{r['runtime']}"
            for r in store.rows(run_id)
            if r["status"] != "failed"
        }
    finally:
        store.close()


def cmd_run(args) -> int:
    from .pipeline import SuiteRunner, resolve_run_id
    from .store import Store
    from .suite import SuiteError

    suite, text, inventory = _load(args)
    console = Console(stderr=True, soft_wrap=True)
    try:
        from .plan import make_plan

        make_plan(suite, inventory)  # cross-file checks before anything is written
        store = Store(suite.store)
        run_id, resumed = resolve_run_id(suite, store, args.run_id, args.resume, args.fresh)
        runner = SuiteRunner(suite, text, inventory, run_id, console=console,
                             show_progress=not args.no_progress and sys.stderr.isatty(),
                             executor=args.executor, address=args.address, workers=args.workers, resumed=resumed, store=store)
    except SuiteError as exc:
        console.print(f"[red]error:[/] {args.suite}: {exc}", highlight=False)
        return EXIT_BAD_INPUT
    summary = runner.run()
    console.print(f"run {summary.run_id}: {summary.rows} trials recorded ({summary.failed} failed"
                  + (f", {summary.skipped_done} already done" if summary.skipped_done else "")
                  + (f"; quarantined: {', '.join(summary.quarantined)}" if summary.quarantined else "") + f") in {summary.store}")
    if summary.report:
        print(summary.report)  # stdout: the one thing scripts want
    if summary.gates_passed is False:
        console.print("[red]gates failed[/] (see the report's summary and gates.xml)")
        return EXIT_FAILED
    return EXIT_OK


def cmd_report(args) -> int:
    import reports

    store = Path(args.store)
    if not store.is_file():
        Console(stderr=True).print(f"[red]error:[/] store not found: {store} (--store)")
        return EXIT_BAD_INPUT
    gates, history, tol = {}, 10, None
    if args.suite:
        suite, _, _ = _load(args)
        gates, history = suite.gates, suite.report.history
        tol = {"auc": suite.report.auc_tolerance, "fps": suite.report.fps_tolerance}
    out = Path(args.out) if args.out else store.parent / args.run_id
    try:
        res = reports.build_report(store, args.run_id, out, gates=gates, history=history, tolerance=tol)
    except KeyError as exc:
        Console(stderr=True).print(f"[red]error:[/] {exc}")
        return EXIT_BAD_INPUT
    print(res.html)
    return EXIT_OK if res.gates_passed is not False else EXIT_FAILED


def cmd_list(args) -> int:
    from quant import METHODS

    from .datasets import DATASETS
    from .detectors import DETECTORS
    from .export import EXPORTERS

    reg = {"methods": METHODS, "detectors": DETECTORS, "datasets": DATASETS, "formats": EXPORTERS}[args.what]
    for name in sorted(reg):
        item = reg[name]
        desc = getattr(item, "description", "") or ""
        print(f"{name:24s} {desc.splitlines()[0] if desc else ''}")
    return EXIT_OK


def cmd_devices(args) -> int:
    from devices.inventory import InventoryError, load_inventory

    try:
        if args.suite:
            _, _, inventory = _load(args)
        else:
            inventory = load_inventory(args.devices)
    except InventoryError as exc:
        Console(stderr=True).print(f"[red]error:[/] {exc}", highlight=False)
        return EXIT_BAD_INPUT
    console = Console(width=None if sys.stdout.isatty() else 160)
    if args.action == "list":
        table = Table(title="devices")
        for col in ("name", "transport", "address", "runtimes", "threads", "tags"):
            table.add_column(col)
        for d in inventory.devices:
            addr = getattr(d, "address", "") or ""
            table.add_row(d.name, d.transport, str(addr), ", ".join(d.runtimes), str(d.threads or "default"), ", ".join(d.tags))
        console.print(table)
        return EXIT_OK
    from devices.health import check_all

    ok = True
    table = Table(title="device check")
    for col in ("name", "reachable", "os", "cpu / soc", "runtimes", "temp °C", "problems"):
        table.add_column(col)
    for d, f in zip(inventory.devices, check_all(inventory.devices)):  # in parallel: a dead device costs only its own timeouts
        ok &= bool(f.get("reachable")) and not f.get("problems")
        osf, cpu = f.get("os") or {}, f.get("cpu") or {}
        runtimes = "\n".join(
            f"{'✓' if r.get('available') else '✗'} {name} {r.get('version') or ''}".strip()
            for name, r in (f.get("runtimes") or {}).items()
        )
        cpu_text = " / ".join(str(x) for x in (cpu.get("model"), cpu.get("soc")) if x) + (f" ({cpu['count']} cores)" if cpu.get("count") else "")
        problems = "; ".join([*(f.get("problems") or []), *([f["error"]] if f.get("error") else [])])
        table.add_row(d.name, "yes" if f.get("reachable") else "[red]no[/]", str(osf.get("name") or osf.get("kernel") or ""),
                      cpu_text, runtimes, "" if f.get("max_temp_c") is None else f"{f['max_temp_c']:.0f}", problems)
    console.print(table)
    return EXIT_OK if ok else EXIT_FAILED


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="defakeq", description="Benchmark quantized deepfake detectors on real devices.")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run a suite and write its report")
    r.add_argument("suite")
    r.add_argument("--profile", help="a profile of the suite file (e.g. paper, nightly)")
    r.add_argument("--run-id", help="name of the run (default: <suite>-<time>-<hash>)")
    r.add_argument("--resume", metavar="RUN", help="continue RUN: recorded trials are kept, the rest is run")
    r.add_argument("--fresh", action="store_true", help="start a new run even if an unfinished run of this suite exists")
    r.add_argument("--executor", choices=["local", "ray"], default="local", help="where quantization and trials run")
    r.add_argument("--address", help="Ray cluster address (with --executor ray; default: start a local one)")
    r.add_argument("--workers", type=int, help="local worker processes for quantization/export (default: by cores and memory)")
    r.add_argument("--no-progress", action="store_true")
    r.set_defaults(fn=cmd_run)
    pl = sub.add_parser("plan", help="print the expanded job matrix without running it")
    pl.add_argument("suite")
    pl.add_argument("--profile")
    pl.add_argument("--resume", metavar="RUN", help="mark the trials RUN already finished")
    pl.set_defaults(fn=cmd_plan)
    rp = sub.add_parser("report", help="rebuild the report of a finished run from the store")
    rp.add_argument("run_id")
    rp.add_argument("--store", default="runs/results.db")
    rp.add_argument("--out", help="output folder (default: next to the store, named after the run)")
    rp.add_argument("--suite", help="suite file for gates and history settings")
    rp.add_argument("--profile")
    rp.set_defaults(fn=cmd_report)
    d = sub.add_parser("devices", help="list or check the device inventory")
    d.add_argument("action", choices=["list", "check"])
    d.add_argument("--devices", help="devices.yaml (default: the built-in local-only inventory)")
    d.add_argument("--suite", help="take the inventory from this suite")
    d.add_argument("--profile")
    d.set_defaults(fn=cmd_devices)
    ls = sub.add_parser("list", help="list registered methods, detectors, datasets or formats")
    ls.add_argument("what", choices=["methods", "detectors", "datasets", "formats"])
    ls.set_defaults(fn=cmd_list)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
