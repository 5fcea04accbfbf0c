"""`lemevit benchmark` and the measurement pieces under it, on tiny settings."""
import csv
import json

import pytest
import torch

from lemevit.bench import BenchmarkConfig, count_macs, measure_interleaved, run_benchmark
from lemevit.bench.suite import CSV_COLUMNS
from lemevit.cli import main


def test_mac_count_of_a_hand_made_model():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, 10))
    conv = 8 * 8 * 4 * 3 * 9
    linear = 4 * 8 * 8 * 10
    assert count_macs(model, 8) == conv + linear


def test_mac_count_of_attention_grows_with_the_square_of_the_tokens():
    # What our models run: projections and scaled_dot_product_attention (not nn.MultiheadAttention, whose fused
    # inference path some torch releases hide from the counter).
    projection = torch.nn.Linear(8, 3 * 8)

    class Tokens(torch.nn.Module):
        def forward(self, x):  # (1, 8, H, W) -> attention over the H*W tokens
            q, k, v = projection(x.flatten(2).transpose(1, 2)).chunk(3, dim=-1)
            return torch.nn.functional.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])

    small, large = (count_macs(Tokens(), s, in_chans=8) for s in (4, 8))
    n_small, n_large = 16, 64
    # the projection costs N * 8 * 24 MACs, the two attention products 2 * N^2 * 8
    assert small == n_small * 8 * 24 + 2 * n_small**2 * 8
    assert large == n_large * 8 * 24 + 2 * n_large**2 * 8


def test_an_out_of_memory_model_is_dropped_and_the_others_are_measured():
    def oom():
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    errors = {}
    results = measure_interleaved({"ok": lambda: None, "big": oom}, batch_size=4, img_size=64, rounds=3, warmup=1,
                                  progress=False, errors=errors)
    assert list(results) == ["ok"] and len(results["ok"].seconds) == 3
    assert errors == {"big": "out of memory at batch 4, 64 px"}


def test_a_dtype_the_device_cannot_run_is_skipped_and_the_rest_measured(monkeypatch):
    real = torch.amp.is_autocast_available
    monkeypatch.setattr(torch.amp, "is_autocast_available", lambda kind: False if kind == "cpu" else real(kind))
    logged = []
    cfg = BenchmarkConfig(models=["resnet10t"], img_sizes=[32], batch_sizes=[2], dtypes=["fp16", "fp32"],
                          device="cpu", latency=False, memory=False, rounds=1, warmup=0)
    record = run_benchmark(cfg, progress=False, log=logged.append)
    skipped = [r for r in record["rows"] if r["dtype"] == "fp16"]
    assert len(skipped) == 1 and "autocast is not available on cpu" in skipped[0]["error"]
    measured = [r for r in record["rows"] if r["dtype"] == "fp32"]
    assert len(measured) == 1 and measured[0]["img_per_s"] > 0
    assert any("skipping dtype fp16" in line for line in logged)
    # two CPUs of one model name rank models differently with and without AVX-512: the record says which it was
    assert record["environment"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()


def test_config_rejects_what_cannot_be_measured():
    with pytest.raises(ValueError, match="img_sizes"):
        BenchmarkConfig(models=["resnet10t"], img_sizes=[0])
    with pytest.raises(ValueError, match="ours:peer"):
        BenchmarkConfig(models=["resnet10t"], pairs=["resnet10t"])
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            BenchmarkConfig(models=["resnet10t"], device="cuda")


def test_cli_without_cuda_says_so(capsys, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert main(["benchmark", "--models", "resnet10t", "--device", "cuda", "--output", str(tmp_path)]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_cli_writes_tables_and_plots_for_every_model_and_setting(tmp_path, capsys):
    out = tmp_path / "bench"
    # Peak memory, a fresh process per row, is measured by the next test on one row.
    code = main(["benchmark", "--models", "lemevit_tiny", "resnet10t", "lemevit_tinny", "--img-sizes", "32", "48",
                 "--batch-sizes", "2", "--mode", "both", "--rounds", "2", "--warmup", "1", "--no-memory",
                 "--pairs", "lemevit_tiny:resnet10t", "--quiet", "--output", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "did you mean lemevit_tiny" in printed

    record = json.loads((out / "benchmark.json").read_text())
    assert record["mac_counter"].startswith("torch.utils.flop_counter")
    assert record["models"]["lemevit_tiny"]["params"] == 8_635_816
    assert 0 < record["models"]["resnet10t"]["macs"]["32"] < record["models"]["resnet10t"]["macs"]["48"]
    measured = [r for r in record["rows"] if r["error"] is None]
    # 2 models x 2 sizes x (inference, train, latency)
    assert len(measured) == 12
    for r in measured:
        assert len(r["seconds"]) == 2
        assert r["img_per_s"] == pytest.approx(r["batch_size"] / (r["ms_median"] / 1e3))
        assert r["ms_p10"] <= r["ms_median"] <= r["ms_p90"]
        assert r["peak_mib"] is None
    train = [r for r in measured if r["measure"] == "train"]
    assert {r["batch_size"] for r in measured if r["measure"] == "latency"} == {1}
    [unknown] = [r for r in record["rows"] if r["model"] == "lemevit_tinny"]
    assert "unknown model 'lemevit_tinny'" in unknown["error"]

    ratio = next(r for r in record["ratios"] if (r["measure"], r["img_size"]) == ("train", 48))
    ours, peer = (next(r for r in train if (r["model"], r["img_size"]) == (name, 48))
                  for name in ("lemevit_tiny", "resnet10t"))
    per_round = sorted(p / o for o, p in zip(ours["seconds"], peer["seconds"], strict=True))
    assert ratio["median"] == pytest.approx(sum(per_round) / 2)

    with (out / "benchmark.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == CSV_COLUMNS and len(rows) == len(record["rows"])
    for name in ("throughput_vs_cost.png", "scaling.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| lemevit_tiny / resnet10t |" in (out / "benchmark.md").read_text()


def test_peak_memory_is_measured_for_training_steps_in_a_fresh_process(tmp_path):
    out = tmp_path / "bench"
    assert main(["benchmark", "--models", "resnet10t", "--img-sizes", "32", "--batch-sizes", "2", "--mode", "train",
                 "--rounds", "1", "--warmup", "0", "--no-latency", "--quiet", "--output", str(out)]) == 0
    [row] = json.loads((out / "benchmark.json").read_text())["rows"]
    assert row["measure"] == "train" and row["peak_mib"] > 0


def test_the_runtime_axis_measures_onnxruntime_entries_beside_eager_ones(tmp_path):
    pytest.importorskip("onnxruntime", reason="the export extra (onnx, onnxruntime) is not installed")
    with pytest.raises(ValueError, match="NAME@onnxruntime"):
        BenchmarkConfig(models=["resnet10t"], pairs=["resnet10t@onnxruntime:resnet10t"])
    with pytest.raises(ValueError, match="runtimes"):
        BenchmarkConfig(models=["resnet10t"], runtimes=["tensorrt"])
    out = tmp_path / "bench"
    assert main(["benchmark", "--models", "resnet10t", "--runtimes", "torch", "onnxruntime", "--img-sizes", "32",
                 "--batch-sizes", "2", "--mode", "both", "--rounds", "2", "--warmup", "1", "--no-latency",
                 "--pairs", "resnet10t@onnxruntime:resnet10t", "--quiet", "--output", str(out)]) == 0
    record = json.loads((out / "benchmark.json").read_text())
    rows = {(r["model"], r["measure"]): r for r in record["rows"]}
    assert rows["resnet10t@onnxruntime", "inference"]["runtime"] == "onnxruntime"
    assert rows["resnet10t@onnxruntime", "inference"]["img_per_s"] > 0
    assert "fp32 inference only" in rows["resnet10t@onnxruntime", "train"]["error"]
    assert rows["resnet10t", "train"]["img_per_s"] > 0
    assert [(r["ours"], r["peer"], r["measure"]) for r in record["ratios"]] == [
        ("resnet10t@onnxruntime", "resnet10t", "inference")]
    header = (out / "benchmark.csv").read_text().splitlines()[0].split(",")
    assert header == CSV_COLUMNS and "runtime" in header
