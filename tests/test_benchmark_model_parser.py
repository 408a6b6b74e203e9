"""devices/benchmark_model.py against verbatim outputs of the real benchmark_model (sources in
tests/fixtures/benchmark_model/SOURCES.txt) and the command builder's flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from devices.benchmark_model import (
    BenchmarkModelError,
    build_command,
    check_settings,
    latency_from_output,
    parse_output,
)

FIX = Path(__file__).parent / "fixtures" / "benchmark_model"


def load(name: str) -> dict:
    return parse_output((FIX / name).read_text())


def test_every_fixture_is_listed_with_its_source():
    listed = (FIX / "SOURCES.txt").read_text()
    names = sorted(p.name for p in FIX.glob("*.txt") if p.name != "SOURCES.txt")
    assert len(names) >= 3
    for n in names:
        assert n in listed, f"{n} has no source in SOURCES.txt"


def test_old_format_no_stats_and_profiling_decoy():
    p = load("old_zedboard_2019_nostats.txt")
    assert p["format"] == "old"
    assert p["init_us"] == 18764 and p["warmup_avg_us"] == 395037
    assert p["inference_avg_us"] == 394183  # printed as "no stats: 394183"
    assert p["first_inference_us"] is None  # the old format has no first-inference figure
    assert p["warmup"] == {"count": 2, "first": 393500, "curr": 396574, "min": 393500,
                           "max": 396574, "avg": 395037, "std": 1537}
    # the op-profiling "Timings (microseconds): count=50 … avg=394059" line is not the run stats
    assert p["runs"]["avg"] == 394183 and p["runs"]["max"] == 417669 and p["runs"]["count"] == 50
    assert p["memory"] == {}
    lat = latency_from_output(p)
    assert lat["mean"] == pytest.approx(394.183)
    assert lat["min"] == pytest.approx(389.982) and lat["max"] == pytest.approx(417.669)
    assert lat["std"] == pytest.approx(4.373)
    assert lat["p50"] is None and lat["p90"] is None and lat["p99"] is None  # never invented
    assert lat["fps"] == pytest.approx(1000 / 394.183)
    assert lat["n"] == 50 and lat["warmup"] == 2
    assert lat["total_s"] == pytest.approx(50 * 0.394183)


def test_2020_format_with_legacy_peak_memory_line():
    p = load("mid_iccd2020_avx2_peakmem.txt")
    assert p["format"] == "new"
    assert (p["init_us"], p["first_inference_us"], p["warmup_avg_us"], p["inference_avg_us"]) == (
        413, 13641, 12417.9, 12367.8)
    assert p["warmup"]["count"] == 41 and p["runs"]["count"] == 81
    assert p["runs"]["avg"] == 12367.8  # not the profiler's avg=12366
    assert p["memory"] == {"init_mb": 4.64062, "overall_mb": 11.3984, "kind": "peak"}


def test_scientific_notation_single_warmup_run_and_memory_delta():
    p = load("new_meta_tflite_riscv64_memdelta.txt")
    assert p["inference_avg_us"] == pytest.approx(2.95034e6)
    assert p["warmup_avg_us"] == pytest.approx(3.51239e6)
    assert p["warmup"] == {"count": 1, "curr": 3512391}
    assert p["runs"]["avg"] == pytest.approx(2.95034e6) and p["runs"]["std"] == 109798
    assert p["memory"] == {"init_mb": 4.21094, "overall_mb": 46.0859, "kind": "delta"}
    lat = latency_from_output(p)
    assert lat["mean"] == pytest.approx(2950.34) and lat["first_ms"] == pytest.approx(3512.391)
    assert lat["memory_mb"]["overall_mb"] == 46.0859


def test_info_prefix():
    p = load("new_tf_issue61946_info_prefix.txt")
    assert p["init_us"] == 530 and p["inference_avg_us"] == 116066
    assert p["warmup"]["count"] == 5 and p["runs"]["count"] == 50 and p["runs"]["min"] == 111222
    assert p["memory"]["overall_mb"] == 12.1914


def test_logcat_threadtime_prefix_without_memory_line():
    p = load("new_tf_issue56301_logcat_nnapi.txt")
    assert p["init_us"] == 126059 and p["first_inference_us"] == 32942
    assert p["warmup"]["count"] == 40 and p["runs"]["count"] == 75 and p["runs"]["std"] == 325
    assert p["memory"] == {}
    assert latency_from_output(p)["memory_mb"] == {}


def test_percentiles_become_p5_p50_p95_and_p90_p99_stay_missing():
    p = load("new_logcat_percentiles_2025.txt")
    assert p["runs"]["p5"] == 140545 and p["runs"]["median"] == 141253 and p["runs"]["p95"] == 187533
    lat = latency_from_output(p)
    assert lat["p50"] == pytest.approx(141.253)
    assert lat["p5"] == pytest.approx(140.545) and lat["p95"] == pytest.approx(187.533)
    assert lat["p90"] is None and lat["p99"] is None
    assert lat["n"] == 25 and lat["warmup"] == 3
    assert p["memory"]["init_mb"] == 54.2852


def test_periodic_peak_memory_and_stat_lines_without_phase_headers():
    p = load("new_chromeos_tast_periodic_peak.txt")
    assert p["warmup"]["count"] == 9 and p["runs"]["count"] == 1061
    assert p["memory"] == {"peak_mb": 93.2383}
    assert latency_from_output(p)["mean"] == pytest.approx(56.2658)


def test_android_docs_one_line_old_format():
    # tensorflow/lite/g3doc/performance/measurement.md (Android benchmark app, logcat)
    p = parse_output("... tflite  : Average inference timings in us: Warmup: 91471, Init: 4108, Inference: 80660.1")
    assert (p["warmup_avg_us"], p["init_us"], p["inference_avg_us"]) == (91471, 4108, 80660.1)
    assert p["runs"] is None and latency_from_output(p)["n"] is None


def test_failed_run_is_an_error_naming_what_is_missing():
    text = (FIX / "new_tf_issue61946_info_prefix.txt").read_text().split("INFO: Inference timings")[0]
    with pytest.raises(BenchmarkModelError, match="Inference timings in us"):
        parse_output(text + "ERROR: Failed to apply XNNPACK delegate.\n")


def test_build_command_flags_per_runtime():
    argv = build_command("/data/local/tmp/benchmark_model", "m.tflite", "litert-xnnpack",
                         {"threads": 4, "warmup": 5, "runs": 200, "min_secs": 60, "max_secs": 300})
    assert argv[:3] == ["/data/local/tmp/benchmark_model", "--graph=m.tflite", "--num_threads=4"]
    for flag in ("--use_xnnpack=true", "--warmup_runs=5", "--num_runs=200", "--min_secs=60",
                 "--max_secs=300", "--warmup_min_secs=0.5", "--report_peak_memory_footprint=true"):
        assert flag in argv
    assert "--use_gpu=true" in build_command("b", "m.tflite", "litert-gpu")
    assert "--use_nnapi=true" in build_command("b", "m.tflite", "litert-nnapi")
    plain = build_command("b", "m.tflite", "litert", {"report_peak_memory": False})
    assert not any(a.startswith(("--use_", "--num_threads", "--report_peak")) for a in plain)
    io = build_command("b", "m.tflite", "litert", {}, {"input": "in.bin"}, "out.bin")
    assert "--input_layer_value_files=input:in.bin" in io and "--output_filepath=out.bin" in io


def test_bad_runtime_and_settings_are_clear_errors():
    with pytest.raises(ValueError, match="allowed: .*litert-gpu"):
        build_command("b", "m.onnx", "onnxruntime-cpu")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['runz'\]"):
        check_settings({"runz": 3})
    with pytest.raises(ValueError, match="min_secs"):
        check_settings({"min_secs": -1})
    with pytest.raises(ValueError, match="','"):
        build_command("b", "m.tflite", "litert", {}, {"in,put": "x.bin"})
    with pytest.raises(ValueError, match="','"):
        build_command("b", "m.tflite", "litert", {}, {"input": "a:b.bin"})
    # a ':' in a tensor name is escaped the way the tool splits its items ("name\:0:path")
    io = build_command("b", "m.tflite", "litert", {}, {"serving_default_x:0": "in.bin"})
    assert io[-1] == "--input_layer_value_files=serving_default_x\\:0:in.bin"
