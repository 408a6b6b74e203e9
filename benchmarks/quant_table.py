"""The method x budget table on the synthetic benchmark (not a timed test).

For both small detectors (tiny-resnet, tiny-dsnet), every registered quantizing method (read
from quant.METHODS, so new baselines appear by themselves), budgets W4A4, W3A3, W4A8, W8A8 and
3 seeds: frame AUC on the test split of the PyTorch simulation with a bootstrap 95% CI,
the FP32 AUC of the same detector, the packed weight bits and the wall time.

    python benchmarks/quant_table.py                      # everything (hours on 2 CPU cores)
    python benchmarks/quant_table.py --detectors tiny-resnet --methods minmax,defakeq \
        --bits W3A3 --seeds 0                             # a slice, while developing

Rows go to benchmarks/out/quant_table.json (a list of rows {detector, method, budget, seed,
auc, auc_ci_low, auc_ci_high, fp32_auc, packed_bits, wall_s, ...}) as they finish; rows already
there for the same data, model and method version are kept (resumable). Data and trained
detectors are cached under runs/cache.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from harness.datasets.base import normalise  # noqa: E402
from harness.datasets.synthetic import SyntheticSpec, load_split  # noqa: E402
from harness.detectors import DETECTORS  # noqa: E402
from harness.metrics import bootstrap_auc_ci, rank_auc  # noqa: E402
from harness.train import TrainConfig, load_or_train  # noqa: E402
from quant import METHODS, quantize  # noqa: E402

# The benchmark's data and training: fainter cues (difficulty 0.4) so that low-bit quantization
# visibly hurts, and enough training (2000 steps) that both detectors reach FP32 AUC >= 0.90
# with a margin (measured: tiny-resnet 0.963, tiny-dsnet 0.930; with 1200 steps tiny-dsnet
# reached only 0.904).
SPEC = SyntheticSpec(size=64, n_train=6000, n_calib=512, n_val=512, n_test=1000, difficulty=0.4)
TRAIN = TrainConfig(steps=2000, batch=64, lr=3e-3, weight_decay=1e-4, seed=0)
DETECTORS_DEFAULT = ("tiny-resnet", "tiny-dsnet")
BUDGETS_DEFAULT = ("W4A4", "W3A3", "W4A8", "W8A8")
SEEDS_DEFAULT = (0, 1, 2)
OUT = REPO / "benchmarks" / "out" / "quant_table.json"
CACHE = REPO / "runs" / "cache"


def scores_of(model: torch.nn.Module, x: torch.Tensor, batch: int = 250) -> np.ndarray:
    with torch.no_grad():
        logits = torch.cat([model(x[i : i + batch]) for i in range(0, len(x), batch)])
    return torch.softmax(logits.float(), dim=1)[:, 1].numpy()


def row_key(r: dict) -> tuple:
    return (r["detector"], r["method"], r["budget"], r["seed"], r["model_key"], r["spec_key"])


def load_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    try:
        rows = json.loads(path.read_text())
    except json.JSONDecodeError:
        return []
    return rows if isinstance(rows, list) else []


def save_rows(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(rows, indent=1))
    os.replace(tmp, path)


def summary(rows: list[dict]) -> str:
    """Mean AUC per (detector, budget) x method, and the FP32 AUC."""
    lines = []
    rows = [r for r in rows if r.get("auc") is not None]
    for det in sorted({r["detector"] for r in rows}):
        drows = [r for r in rows if r["detector"] == det]
        fp = drows[0]["fp32_auc"]
        budgets = [b for b in BUDGETS_DEFAULT if any(r["budget"] == b for r in drows)]
        budgets += sorted({r["budget"] for r in drows} - set(budgets))
        methods = sorted({r["method"] for r in drows})
        lines.append(f"\n{det}  (FP32 AUC {fp:.4f}); mean AUC over seeds [n seeds], mean wall s")
        lines.append(f"{'method':22s}" + "".join(f"{b:>22s}" for b in budgets))
        for m in methods:
            cells = []
            for b in budgets:
                rs = [r for r in drows if r["method"] == m and r["budget"] == b]
                if rs:
                    auc = np.mean([r["auc"] for r in rs])
                    cells.append(f"{auc:.4f} [{len(rs)}] {np.mean([r['wall_s'] for r in rs]):6.1f}s")
                else:
                    cells.append("-")
            lines.append(f"{m:22s}" + "".join(f"{c:>22s}" for c in cells))
    return "\n".join(lines)


def markdown(rows: list[dict], budgets: tuple[str, ...] = ("W4A4", "W3A3", "W4A8")) -> str:
    """Mean AUC (± std over seeds, n seeds) per method x (detector, budget), as a markdown
    table; the best mean of each column among the compared methods in bold."""
    rows = [r for r in rows if r.get("auc") is not None]
    dets = sorted({r["detector"] for r in rows})
    cols = [(d, b) for d in dets for b in budgets if any(r["detector"] == d and r["budget"] == b for r in rows)]
    methods = sorted({r["method"] for r in rows}, key=lambda m: (m.startswith("defakeq"), m))
    cell: dict[tuple, list[float]] = {}
    for r in rows:
        cell.setdefault((r["method"], r["detector"], r["budget"]), []).append(r["auc"])
    # bold: the best of the compared methods (ablations are DeFakeQ's own variants)
    best = {c: max(np.mean(v) for (m, d, b), v in cell.items() if (d, b) == c and not m.startswith("defakeq-"))
            for c in cols}
    fp = {d: next(r["fp32_auc"] for r in rows if r["detector"] == d) for d in dets}
    head = "| method | " + " | ".join(f"{d} {b}" for d, b in cols) + " |"
    lines = [head, "|" + " --- |" * (len(cols) + 1), "| FP32 | " + " | ".join(f"{fp[d]:.4f}" for d, _ in cols) + " |"]
    for m in methods:
        out = []
        for c in cols:
            v = cell.get((m, *c))
            if not v:
                out.append("–")
                continue
            txt = f"{np.mean(v):.4f}" + (f" ± {np.std(v):.4f} ({len(v)})" if len(v) > 1 else "")
            out.append(f"**{txt}**" if abs(np.mean(v) - best[c]) < 1e-12 else txt)
        lines.append(f"| {m} | " + " | ".join(out) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--detectors", default=",".join(DETECTORS_DEFAULT))
    ap.add_argument("--methods", default="all", help="comma list, or 'all' (every quantizing method)")
    ap.add_argument("--bits", default=",".join(BUDGETS_DEFAULT))
    ap.add_argument("--seeds", default=",".join(map(str, SEEDS_DEFAULT)))
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--options", default="{}", help="JSON options passed to every method (experiments)")
    ap.add_argument("--tag", default="", help="suffix of the method name in the rows (experiments)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--markdown", action="store_true", help="print the saved rows as a markdown table and exit")
    args = ap.parse_args(argv)
    if args.markdown:
        print(markdown([r for r in load_rows(Path(args.out)) if r.get("spec_key") == SPEC.key()]))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = [m for m in METHODS if METHODS[m].quantizes] if args.methods == "all" else args.methods.split(",")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        ap.error(f"unknown methods {unknown}; registered: {sorted(METHODS)}")
    options = json.loads(args.options)
    out = Path(args.out)
    rows = load_rows(out)
    done = {row_key(r) for r in rows}
    print(f"synthetic spec {asdict(SPEC)} (key {SPEC.key()}); training {asdict(TRAIN)}", flush=True)
    train = load_split(SPEC, "train", CACHE)
    calib = load_split(SPEC, "calib", CACHE)
    test = load_split(SPEC, "test", CACHE)
    for det in args.detectors.split(","):
        info = DETECTORS[det]
        model, model_key, cached = load_or_train(det, train, TRAIN, CACHE, show_progress=False)
        cx = torch.from_numpy(normalise(calib.load(size=info.small_input_size), info.mean, info.std))
        cy = torch.from_numpy(calib.labels)
        tx = torch.from_numpy(normalise(test.load(size=info.small_input_size), info.mean, info.std))
        ty = test.labels
        fp32_auc = rank_auc(scores_of(model, tx), ty)
        print(f"{det}: model {model_key} ({'cached' if cached else 'trained'}), FP32 test AUC {fp32_auc:.4f}", flush=True)
        for bits in args.bits.split(","):
            for method in methods:
                for seed in [int(s) for s in args.seeds.split(",")]:
                    name = method + args.tag
                    key = (det, name, bits, seed, model_key, SPEC.key())
                    if key in done:
                        continue
                    t0 = time.perf_counter()
                    try:
                        res = quantize(model, method, bits, cx, cy, options=dict(options), seed=seed, device=args.device)
                    except Exception as e:  # one method failing must not lose the table
                        rows.append({"detector": det, "method": name, "budget": bits, "seed": seed, "auc": None,
                                     "error": f"{type(e).__name__}: {e}", "fp32_auc": fp32_auc,
                                     "model_key": model_key, "spec_key": SPEC.key(), "family": METHODS[method].family})
                        done.add(key)
                        save_rows(out, rows)
                        print(f"  {det} {bits} {name:20s} seed {seed}: FAILED {type(e).__name__}: {e}", flush=True)
                        continue
                    wall = time.perf_counter() - t0
                    s = scores_of(res.sim, tx)
                    auc = rank_auc(s, ty)
                    lo, hi = bootstrap_auc_ci(s, ty, n=1000, seed=0)
                    row = {
                        "detector": det, "method": name, "budget": bits, "seed": seed,
                        "auc": auc, "auc_ci_low": lo, "auc_ci_high": hi, "fp32_auc": fp32_auc,
                        "delta_auc": auc - fp32_auc,
                        "packed_bits": int(res.stats["packed_weight_bits"]), "budget_bits": int(res.stats["budget_bits"]),
                        "avg_act_bits": float(np.mean([a.bits for a in res.params.acts.values()])),
                        "wall_s": wall, "family": METHODS[method].family, "code_hash": res.stats["code_hash"],
                        "model_key": model_key, "spec_key": SPEC.key(), "threads": torch.get_num_threads(),
                        "options": options,
                    }
                    rows.append(row)
                    done.add(key)
                    save_rows(out, rows)
                    print(f"  {det} {bits} {name:20s} seed {seed}: AUC {auc:.4f} [{lo:.3f}, {hi:.3f}] "
                          f"(FP32 {fp32_auc:.4f}) {row['packed_bits']} bits {wall:.1f} s", flush=True)
    print(summary([r for r in rows if r["spec_key"] == SPEC.key()]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
