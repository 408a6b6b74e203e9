"""Do our artifacts keep the runtime's fused int8 kernels? Latency of each exporter's file vs the
file the runtime's own quantizer makes of the same detector, measured side by side.

For each detector (untrained weights with BN statistics; speed does not depend on the values)
and each quantized format:

| format         | ours (what the suite deploys)           | native (the runtime's own output)            |
| ---            | ---                                     | ---                                           |
| onnx-qdq       | minmax W8A8 codes via TensorQuantOverrides | quantize_static QDQ, per-channel, uint8 acts, MinMax on the same frames |
| onnx-qdq-trt   | minmax W8A8, act_symmetric              | quantize_static, int8 acts, ActivationSymmetric |
| onnx-qdq-w4    | minmax W4A8 (INT4 interior layers)      | quantize_static, QInt4 weights for the same layers, opset 21 |
| tflite-int8    | minmax W8A8, pinned PT2E observers      | litert-torch PT2E static per-channel, its own observers |
| tflite-dynamic | minmax W8A8 codes in hybrid kernels     | litert-torch PT2E dynamic per-channel          |
| tflite-fp16    | ai-edge-quantizer float16 weights       | (reference: tflite-fp32; not gated)            |

Both files of a pair run in this process with the same thread count, interleaved in blocks
(A B B A A B ...) so drift on this shared machine hits both alike; the medians of the single
runs are reported. Target: ours_ms <= 1.05 x native_ms for every gated row.

    python benchmarks/export_speed.py [--detectors tiny-resnet tiny-dsnet meso4] [--rounds 40]
        -> benchmarks/out/export_speed.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import Progress  # noqa: E402
from rich.table import Table  # noqa: E402

from devices.runner.defakeq_runner import open_model  # noqa: E402
from harness.detectors import DETECTORS  # noqa: E402
from harness.export import EXPORTERS, ExportRequest  # noqa: E402
from harness.export.onnx_export import OPSET_INT4, _Reader, export_float_onnx, onnx_op_counts  # noqa: E402
from harness.export.tflite_export import _convert, _quiet, tflite_op_counts  # noqa: E402
from quant import quantize  # noqa: E402

OUT = ROOT / "benchmarks" / "out" / "export_speed.json"
TARGET = 1.05
THREADS = 1
BLOCK = 10  # runs per block
console = Console(width=150)

# format -> (method options, bits, gated)
FORMATS = {
    "onnx-qdq": ({}, "W8A8", True),
    "onnx-qdq-trt": ({"act_symmetric": True}, "W8A8", True),
    "onnx-qdq-w4": ({}, "W4A8", True),
    "tflite-int8": ({}, "W8A8", True),
    "tflite-dynamic": ({}, "W8A8", True),
    "tflite-fp16": (None, "fp32", False),
}


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    info = DETECTORS[name]
    model = info.build() if name.startswith("tiny-") else info.build(variant="small")
    g = torch.Generator().manual_seed(0)
    for m in model.modules():  # untrained nets have identity BN; give them statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
    return model.eval()


def native_onnx(fmt: str, folded: torch.nn.Module, x: np.ndarray, tmp: Path, int4: list[str] = ()) -> tuple[Path, str]:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    fpath = export_float_onnx(folded, x.shape[-1], tmp / f"{fmt}-float.onnx")
    kw: dict = {"activation_type": QuantType.QUInt8, "weight_type": QuantType.QInt8, "extra_options": {}}
    label = "quantize_static QDQ per-channel, uint8 activations, MinMax"
    if fmt == "onnx-qdq-trt":
        kw.update(activation_type=QuantType.QInt8, extra_options={"ActivationSymmetric": True})
        label = "quantize_static QDQ per-channel, symmetric int8 activations, MinMax"
    if fmt == "onnx-qdq-w4":
        import onnx

        m = onnx.version_converter.convert_version(onnx.load(str(fpath)), OPSET_INT4)
        onnx.save(m, str(fpath))
        # the same layers in INT4 (quant_type only: onnxruntime picks the scales)
        names = {i.name for i in m.graph.initializer}
        kw["extra_options"] = {"TensorQuantOverrides": {
            f"{layer}.weight": [{"quant_type": QuantType.QInt4, "axis": 0}] for layer in int4 if f"{layer}.weight" in names}}
        label = "quantize_static QDQ per-channel, QInt4 weights for the same layers, uint8 activations, MinMax"
    out = tmp / f"{fmt}-native.onnx"
    logging.getLogger("root").setLevel(logging.ERROR)
    quantize_static(str(fpath), str(out), _Reader(x, "input"), quant_format=QuantFormat.QDQ, per_channel=True,
                    calibrate_method=CalibrationMethod.MinMax, **kw)
    return out, label


def native_tflite(fmt: str, folded: torch.nn.Module, x: np.ndarray, tmp: Path) -> tuple[Path, str]:
    from litert_torch.quantize.pt2e_quantizer import (
        PT2EQuantizer,
        get_symmetric_quantization_config,
    )
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    out = tmp / f"{fmt}-native.tflite"
    example = torch.from_numpy(x[:1])
    if fmt == "tflite-fp16":
        return _convert(folded, example, out), "tflite-fp32 (reference, no native fp16 path without TensorFlow)"
    dynamic = fmt == "tflite-dynamic"
    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=dynamic))
    with _quiet():
        prepared = prepare_pt2e(torch.export.export(folded, (example,)).module(), quantizer)
        with torch.no_grad():
            for i in range(min(len(x), 32)):  # calibration, one frame at a time (batch-1 export)
                prepared(torch.from_numpy(x[i : i + 1]))
        converted = convert_pt2e(prepared, fold_quantize=False)
    _convert(converted, example, out, quant_config=QuantConfig(pt2e_quantizer=quantizer))
    kind = "dynamic" if dynamic else "static, its own observers"
    return out, f"litert-torch PT2E {kind}, per-channel"


def interleaved(a, b, x1: np.ndarray, rounds: int) -> tuple[list[float], list[float]]:
    """Blocks of BLOCK runs, order A B B A A B ...: both see the same drift."""
    times: dict[int, list[float]] = {0: [], 1: []}
    models = (a, b)
    for m in models:  # warmup
        for _ in range(BLOCK):
            m(x1)
    for r in range(rounds):
        order = (0, 1) if r % 2 == 0 else (1, 0)
        for k in order:
            m = models[k]
            for _ in range(BLOCK):
                t = time.perf_counter()
                m(x1)
                times[k].append((time.perf_counter() - t) * 1000.0)
    return times[0], times[1]


def op_counts(path: Path) -> dict:
    return onnx_op_counts(path) if path.suffix == ".onnx" else tflite_op_counts(path)


def measure(detector: str, formats: list[str], rounds: int, tmp: Path, progress: Progress, task) -> list[dict]:
    model = build(detector)
    size = 64
    g = torch.Generator().manual_seed(1)
    calib = torch.randn(64, 3, size, size, generator=g)
    labels = torch.randint(0, 2, (64,), generator=g)
    x1 = calib[:1].numpy()
    rows = []
    quantized: dict = {}
    for fmt in formats:
        options, bits, gated = FORMATS[fmt]
        key = (bits, json.dumps(options, sort_keys=True))
        if key not in quantized:
            method = "fp32" if options is None else "minmax"
            quantized[key] = quantize(model, method, None if method == "fp32" else bits, calib, labels, options=options)
        res = quantized[key]
        progress.update(task, description=f"{detector} {fmt}: export")
        t = time.perf_counter()
        art = EXPORTERS[fmt].fn(ExportRequest(res, calib.numpy(), calib[:4], size, tmp / f"{detector}-{fmt}"))
        export_s = time.perf_counter() - t
        if EXPORTERS[fmt].family == "onnx":
            native_path, native_label = native_onnx(fmt, res.folded, calib.numpy(), tmp, art.info.get("int4_layers", []))
        else:
            native_path, native_label = native_tflite(fmt, res.folded, calib.numpy(), tmp)
        runtime = "onnxruntime-cpu" if art.family == "onnx" else "litert"
        progress.update(task, description=f"{detector} {fmt}: timing")
        ours = open_model(str(art.path), runtime, THREADS)
        native = open_model(str(native_path), runtime, THREADS)
        t_ours, t_native = interleaved(ours, native, x1, rounds)
        ours_ms, native_ms = float(np.median(t_ours)), float(np.median(t_native))
        n_counts = op_counts(native_path)
        rows.append({
            "detector": detector,
            "format": fmt,
            "bits": res.bits,
            "ours_ms": round(ours_ms, 4),
            "native_ms": round(native_ms, 4),
            "ratio": round(ours_ms / native_ms, 4),
            "gated": gated,
            "ok": (ours_ms / native_ms <= TARGET) if gated else None,
            "native": native_label,
            "runs_each": len(t_ours),
            "ours_p90_ms": round(float(np.percentile(t_ours, 90)), 4),
            "native_p90_ms": round(float(np.percentile(t_native, 90)), 4),
            "ours_ops": {k: art.op_counts.get(k) for k in ("int8_convs", "hybrid_convs", "float_convs") if k in art.op_counts},
            "native_ops": {k: n_counts.get(k) for k in ("int8_convs", "hybrid_convs", "float_convs") if k in n_counts},
            "codes_exact": art.codes_exact,
            "ours_bytes": art.size_bytes,
            "native_bytes": native_path.stat().st_size,
            "export_s": round(export_s, 2),
        })
        progress.advance(task)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--detectors", nargs="+", default=["tiny-resnet", "tiny-dsnet"])
    p.add_argument("--formats", nargs="+", default=list(FORMATS), choices=list(FORMATS))
    p.add_argument("--rounds", type=int, default=40, help="A/B block pairs per format (each block: 10 runs)")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    unknown = [d for d in args.detectors if d not in DETECTORS]
    if unknown:
        p.error(f"unknown detector(s) {unknown}; allowed: {sorted(DETECTORS)}")
    torch.set_num_threads(1)
    rows: list[dict] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, Progress(console=console) as progress:
        task = progress.add_task("export speed", total=len(args.detectors) * len(args.formats))
        for det in args.detectors:
            rows += measure(det, args.formats, args.rounds, Path(tmp), progress, task)
    import ai_edge_litert
    import onnxruntime

    doc = {
        "name": "export_speed",
        "target_ratio": TARGET,
        "threads": THREADS,
        "block_runs": BLOCK,
        "rounds": args.rounds,
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()},
        "versions": {"onnxruntime": onnxruntime.__version__, "ai_edge_litert": getattr(ai_edge_litert, "__version__", "?"),
                     "torch": torch.__version__},
        "wall_s": round(time.perf_counter() - t0, 1),
        "all_gated_ok": all(r["ok"] for r in rows if r["gated"]),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1))
    table = Table(title=f"export speed (median ms, {THREADS} thread, interleaved)")
    for col in ("detector", "format", "ours_ms", "native_ms", "ratio", "ours int8/hyb/float", "native int8/hyb/float"):
        table.add_column(col)
    for r in rows:
        fmt_ops = lambda d: "/".join(str(d.get(k, "-")) for k in ("int8_convs", "hybrid_convs", "float_convs"))  # noqa: E731
        mark = "" if not r["gated"] else (" ok" if r["ok"] else " SLOW")
        table.add_row(r["detector"], r["format"], f"{r['ours_ms']:.3f}", f"{r['native_ms']:.3f}", f"{r['ratio']:.3f}{mark}",
                      fmt_ops(r["ours_ops"]), fmt_ops(r["native_ops"]))
    console.print(table)
    console.print(f"wrote {args.out} in {doc['wall_s']} s; every gated ratio <= {TARGET}: {doc['all_gated_ok']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
