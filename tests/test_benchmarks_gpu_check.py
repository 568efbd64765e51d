"""`benchmarks/gpu_check.sh`: refuses without a GPU; its Python parts run on CPU at tiny sizes
(the smoke runs through the real command line, the measurement for every task, the tables)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import dense_speed  # noqa: E402
import gpu_check  # noqa: E402


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the check would run")
def test_refuses_clearly_without_a_gpu():
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(BENCHMARKS / "gpu_check.sh")], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 3
    assert "no CUDA GPU is visible" in done.stderr and "refuses to run on CPU" in done.stderr


def test_smoke_runs_the_real_command_line(tiny, tmp_path):
    from vitsplit_vlm.cli import main

    def in_process(args, cwd):
        assert main(list(args)) == 0

    records = gpu_check.smoke(tmp_path, device="cpu", precisions=("bf16",), iters=2,
                              backbone=tiny.dinov2, runner=in_process)  # fmt: skip
    assert [(r["task"], r["precision"]) for r in records] == [
        ("seg", "bf16"), ("depth", "bf16"), ("det", "bf16")]  # fmt: skip
    assert all(r["finite"] and r["steps"] == 2 and r["eval"] for r in records)
    assert records[0]["runtime"]["precision"] == "bf16"


def test_measurement_covers_every_task_and_the_tables(monkeypatch):
    records = []
    for task in gpu_check.TASKS:
        r = dense_speed.measure("dinov2-s", "vitsplit", "default", steps=1, warmup=0, batch=1,
                                crop=56, device="cpu", task=task, flops=task == "det")  # fmt: skip
        assert r["task"] == task and r["images_per_second"] > 0 and r["input_hw"] == [56, 56]
        records += [r, {**r, "method": "full", "seconds_per_step": 2 * r["seconds_per_step"],
                        "images_per_second": r["images_per_second"] / 2,
                        "peak_memory_mib": 2 * r["peak_memory_mib"] + 1}]  # fmt: skip
    assert records[-2]["gflops_per_step"] > 0
    assert dense_speed.paper_shape("depth") == (416, 544)
    ratios = {dense_speed.ratio_key("dinov2-s", "default", t, "fp32"):
              dense_speed.ratios_for(records, "dinov2-s", "default", t, "fp32")
              for t in gpu_check.TASKS}  # fmt: skip
    assert all(r["speedup"] == pytest.approx(2.0) for r in ratios.values())
    report = {"environment": {"gpu": "cpu", "capability": "-", "memory_gib": 0, "torch": "x"},
              "speed": records, "ratios": ratios}  # fmt: skip
    table = gpu_check.tables(report)
    assert table.count("| dinov2-s |") == 0 and table.count("| S | fp32 |") == 3
