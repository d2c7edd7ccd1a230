"""``harnet bench``: every preset and torchvision's RetinaNet measured side by side."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harnet.config.model import PRESETS
from harnet.deploy.formats import BENCH_FORMATS
from harnet.tools.bench import TORCHVISION, cpu_peak_memory, run_benchmark
from harnet.tools.bench_run import bench_run
from harnet.tools.cli import main


def test_benchmark_rows_and_ratios() -> None:
    result = run_benchmark("resnet18", sizes=(64,), repeats=1, warmup=0, train_size=64, num_classes=3, memory=False)
    models = [r["model"] for r in result.rows]
    assert models == [TORCHVISION, *PRESETS]
    tv = result.rows[0]
    assert tv["latency_ratio"] == 1.0 and tv["train_ratio"] == 1.0
    by_name = {r["model"]: r for r in result.rows}
    # The retinanet preset is torchvision's network: same parameters and FLOPs.
    assert abs(by_name["retinanet"]["params_m"] - tv["params_m"]) < 1e-9
    assert abs(by_name["retinanet"]["gflops"] - tv["gflops"]) < 1e-9
    assert by_name["hybrid"]["gflops"] > tv["gflops"]
    assert "| hybrid | 64 | fp32 |" in result.markdown()
    assert all(r["precision"] == "fp32" for r in result.rows), "AMP rows only on CUDA"


def test_cpu_peak_memory_is_measured_in_a_fresh_process() -> None:
    peaks = cpu_peak_memory("resnet18", 128, 3, ["retinanet", "hybrid"], train=True, threads=1)
    assert peaks["retinanet"] is not None and peaks["hybrid"] is not None
    assert 1 < peaks["retinanet"] < peaks["hybrid"] < 2000


def test_bench_cli_writes_json_and_table(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    argv = ["bench", "--backbone", "resnet18", "--sizes", "64", "--repeats", "1", "--warmup", "0",
            "--train-size", "0", "--no-memory", "--out", str(out)]
    assert main(argv) == 0
    data = json.loads(out.read_text())
    assert len(data["rows"]) == 1 + len(PRESETS) and data["rows"][0]["train_ms"] is None
    assert out.with_suffix(".md").is_file()


def test_bench_formats_come_from_the_formats_table(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "RUN", "--formats", "onnx,torchscript"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown formats ['torchscript']; choose from " + ", ".join(BENCH_FORMATS) in err


@pytest.mark.slow
def test_bench_run_measures_the_checkpoint_and_an_export(trained_run: Path) -> None:
    result = bench_run(trained_run, ["torch", "onnx"], size=64, threads=1, repeats=1, warmup=0)
    torch_row, onnx_row = result.rows
    assert (torch_row["format"], onnx_row["format"]) == ("torch", "onnx") and onnx_row["latency_ratio"] == 1.0
    assert all(0 <= row["ap"] <= 1 and row["file_mb"] > 0 and row["val_images"] > 0 for row in result.rows)
