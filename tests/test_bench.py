"""`inceptionv3 bench`: the report's fields, skipped comparisons, ratios from medians, bad flags.

Tiny runs only (75 px, batch 1, one or two timed calls); speed itself is checked by benchmarks/, never here.
"""
from __future__ import annotations

import json
import statistics
import sys

import pytest
import torch

from inceptionv3.bench import harness
from inceptionv3.cli.main import main

TINY = ["bench", "--image-size", "75", "--batch-size", "1", "--repeats", "2", "--latency-repeats", "2",
        "--warmup", "0", "--threads", "1", "--precision", "fp32", "--backend", "torch"]


@pytest.fixture
def small_probe(monkeypatch):
    # The peak probe's full-size products cost seconds on one thread; the measuring code is the same.
    monkeypatch.setattr(harness, "PEAK_PROBES", {"fp32": (torch.float32, 256), "bf16": (torch.bfloat16, 256),
                                               "int8": (torch.int8, 256)})


def test_bench_writes_the_report_and_skips_a_missing_comparison(tmp_path, monkeypatch, capsys, small_probe):
    monkeypatch.setitem(sys.modules, "openvino", None)   # import openvino -> ImportError
    out = tmp_path / "harness.json"
    assert main(TINY + ["--compare", "torchvision,openvino", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    r = json.loads(out.read_text())

    assert r["config"]["image_size"] == 75 and r["threads"] == 1
    assert r["versions"]["torch"] == torch.__version__ and "openvino" in r["versions"]
    assert {"model", "cores", "flags"} <= set(r["cpu"])
    budget = r["decode_budget"]
    assert (budget["decode_workers"] + budget["compute_threads"] <= budget["cores"]
            or budget["compute_threads"] == 1)
    assert r["peak"]["fp32"]["gflops"] > 0 and "torch.mm" in r["peak"]["fp32"]["what"]
    assert r["logits_vs_torchvision"] <= harness.AGREE_TOL
    assert set(r["load_average"]) == {"start", "end"}
    assert any("openvino" in n and "skipped" in n for n in r["notes"])
    assert "openvino" in printed and "skipped" in printed

    rows = {row["name"]: row for row in r["rows"]}
    assert set(rows) == {"torchvision eager fp32", "inceptionv3 torch fp32"}   # no openvino row
    ref, ours = rows["torchvision eager fp32"], rows["inceptionv3 torch fp32"]
    assert ref["reference"] and not ours["reference"]
    for row in (ref, ours):
        assert len(row["times_ms"]) == 2
        median = statistics.median(row["times_ms"])
        assert row["ms_per_batch"] == pytest.approx(median)
        assert row["img_per_s"] == pytest.approx(1000 / median)
        assert min(row["times_ms"]) <= row["p50_ms"] <= row["p99_ms"] == max(row["times_ms"])
        assert row["gflops"] == pytest.approx(row["img_per_s"] * r["flops_per_image"] / 1e9)
        assert row["pct_peak"] == pytest.approx(100 * row["gflops"] / r["peak"]["fp32"]["gflops"])
        assert row["peak_rss_mb"] is None or row["peak_rss_mb"] >= 0
        assert row["rel_diff"] < 1e-4      # fp32 rows agree with the plain model
    # Ratios are img/s over the comparison's img/s, i.e. the inverse ratio of the medians.
    assert ref["ratios"]["torchvision eager fp32"] == pytest.approx(1.0)
    ratio = ours["ratios"]["torchvision eager fp32"]
    assert ratio == pytest.approx(ref["ms_per_batch"] / ours["ms_per_batch"])
    assert "inceptionv3 torch fp32" in printed and "x torchvision eager fp32" in printed


def test_missing_onnxruntime_is_a_note_not_a_failure(monkeypatch, small_probe):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    cfg = harness.BenchConfig(batch_sizes=(1,), image_size=75, precisions=("fp32",), backends=("torch",),
                            compare=("onnxruntime",), repeats=2, warmup=0, threads=1)
    r = harness.run_bench(cfg)
    assert [row["name"] for row in r["rows"]] == ["inceptionv3 torch fp32"]
    assert len(r["rows"][0]["times_ms"]) == 2     # --repeats holds for batch 1 unless --latency-repeats is given
    assert any("onnxruntime is not installed" in n for n in r["notes"])
    assert r["rows"][0]["ratios"] == {}


def test_a_pair_the_backend_lacks_is_noted(small_probe):
    cfg = harness.BenchConfig(batch_sizes=(1,), image_size=75, precisions=("fp32", "int8"), backends=("torch",),
                            compare=(), repeats=1, latency_repeats=1, warmup=0, threads=1)
    notes: list[str] = []
    assert harness.engine_pairs(cfg, notes) == [("torch", "fp32")]
    assert any("torch int8" in n for n in notes)


@pytest.mark.parametrize("flags, message", [
    (["--precision", "fp64"], "--precision fp64"),
    (["--backend", "tensorrt"], "--backend tensorrt"),
    (["--batch-size", "0"], "--batch-size 0"),
    (["--batch-size", "16,0"], "--batch-size 16,0"),
    (["--compare", "tflite"], "--compare tflite"),
    (["--repeats", "0"], "--repeats 0"),
])
def test_bad_flags_exit_2_with_a_message(flags, message, capsys):
    assert main(["bench"] + flags) == 2
    err = capsys.readouterr().err
    assert message in err and "error" in err


def test_unparsable_batch_list_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "--batch-size", "1,x"])
    assert e.value.code == 2
    assert "comma-separated int" in capsys.readouterr().err


def test_peak_rss_sees_a_native_allocation():
    watch = harness.PeakRSS()
    base = watch.reset()
    if base is None:
        pytest.skip("no /proc/self/clear_refs here")
    x = torch.ones(64 * 2**20 // 4)   # 64 MB, touched
    assert watch.peak() - base >= 60
    del x


def test_percentile_is_a_measured_value():
    values = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert harness._percentile(values, 50) == 3.0
    assert harness._percentile(values, 99) == 5.0
    assert harness._percentile([7.0], 99) == 7.0


def test_json_is_written_atomically_with_nan_as_null(tmp_path):
    out = harness.write_json({"a": float("nan"), "b": [1.5, float("inf")]}, tmp_path / "r.json")
    assert json.loads(out.read_text()) == {"a": None, "b": [1.5, None]}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_in_process_decoding_on_threads_keeps_order_failures_and_the_thread_budget(tmp_path):
    from PIL import Image

    from inceptionv3.data.loaders import image_batches

    paths = []
    for i in range(7):
        p = tmp_path / f"{i}.png"
        if i == 3:
            p.write_bytes(b"not an image")
        else:
            Image.new("RGB", (20 + i, 16), (10 * i, 0, 0)).save(p)
        paths.append(p)

    def transform(img):
        return torch.tensor([float(img.width), float(img.getpixel((0, 0))[0])])

    torch.set_num_threads(2)    # the compute budget; decoding runs torch single-threaded, then gives it back
    try:
        runs = {t: list(image_batches(paths, transform, batch_size=3, workers=0, decode_threads=t))
                for t in (1, 3)}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
    for batches in runs.values():
        assert [b.indices for b in batches] == [[0, 1, 2], [4, 5], [6]]
        assert [i for b in batches for i, _ in b.failures] == [3]
        assert torch.cat([b.images for b in batches])[:, 0].tolist() == [20, 21, 22, 24, 25, 26]
    with pytest.raises(ValueError, match="decode_threads"):
        next(image_batches(paths, transform, workers=0, decode_threads=0))
