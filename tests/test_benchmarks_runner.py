"""`python -m benchmarks` / `vitsplit-vlm bench`: the runner records the machine, draws the PNG,
collects the headline rows and regenerates the README section; timings are not asserted."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import runner  # noqa: E402


def test_a_case_through_the_runner(tiny, tmp_path):
    options = runner.Options(
        quick=True, threads=1, dense_sizes=None, cuda=False, assets=lambda: (tiny, None)
    )
    case = runner.run_case("truncation", options, tmp_path)
    report = json.loads((tmp_path / "truncation.json").read_text())
    assert report["runner"]["machine"]["cores"] >= 1 and report["runner"]["quick"] is True
    assert "torch" in report["runner"]["machine"] and "cuda" in report["runner"]["machine"]
    assert (tmp_path / "truncation.png").stat().st_size > 0
    rows = case["rows"]
    assert [r["a"] for r in rows] == ["needed", "needed"]
    clip = report["results"][0]
    assert clip["blocks_run"]["needed"] < clip["blocks_run"]["full"]  # LLaVA skips the last block
    assert rows[0]["ratio"] == pytest.approx(clip["speedup"], abs=1e-3)


def test_cached_epoch_reports_equal_losses(tmp_path):
    import cached_epoch

    out = tmp_path / "cached.json"
    argv = ["--quick", "--cases", "dense", "--rounds", "1", "--dense-images", "4",
            "--dense-batch", "2", "--threads", "1", "--out", str(out)]  # fmt: skip
    assert cached_epoch.main(argv) == 0
    report = json.loads(out.read_text())
    for method in ("vitsplit", "linear"):
        r = report["dense"][method]
        assert r["max_loss_difference"] <= 1e-6
        assert len(r["runs"]["cached"][0]["losses"]) == 2
    rows = runner._cached_rows(report)
    assert [r["target"] for r in rows] == [">= 3x", ">= 3x"]


def test_readme_section_is_regenerated(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n\n{runner.BEGIN}\nold table\n{runner.END}\n\nafter\n")
    machine = {"cpu": "CPU X", "cores": 2, "torch_threads": 2, "torch": "2.x", "cuda": None}
    rows = [runner.row("a thing", "fast", 1.0, "slow", 3.0, "s", 3.0, ">= 3x")]
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"cases": {"c": {"title": "T", "quick": True, "rows": rows,
                                                    "machine": machine}}}))  # fmt: skip
    runner.rewrite_readme(summary, readme)
    text = readme.read_text()
    assert "old table" not in text and text.startswith("# x\n\nbefore") and "after" in text
    assert "| a thing | fast | slow | 1 / 3 s | 3.00x | >= 3x |" in text
    assert "CPU X, 2 cores" in text and "quick sizes" in text
    runner.rewrite_readme(summary, readme)
    assert readme.read_text() == text  # idempotent


def test_unknown_case_and_missing_markers_are_one_line(tmp_path):
    parser = argparse.ArgumentParser()
    runner.add_arguments(parser)
    with pytest.raises(SystemExit, match="--cases: unknown \\['nope'\\]"):
        runner.run(parser.parse_args(["--cases", "nope", "--results", str(tmp_path)]))
    (tmp_path / "summary.json").write_text(json.dumps({"cases": {}}))
    readme = tmp_path / "README.md"
    readme.write_text("no markers\n")
    with pytest.raises(SystemExit, match="no <!-- benchmarks:begin -->"):
        runner.rewrite_readme(tmp_path / "summary.json", readme)


def test_dense_learning_is_opt_in_and_its_rows_compare_with_full():
    parser = argparse.ArgumentParser()
    runner.add_arguments(parser)
    assert "dense_learning" not in parser.parse_args([]).cases.split(",")
    report = {"table": {"random": {"linear": 50.0, "vitsplit": 90.0, "full": 60.0}}}
    rows = runner._learning_rows(report)
    assert [(r["a"], r["ratio"]) for r in rows] == [("linear", 0.833), ("vitsplit", 1.5)]


def test_logits_comparison_runs_both_settings_of_the_trainer(tiny, tmp_path):
    """`vlm_stage1.py --compare logits`: the trainer with --supervised_logits_only True, then
    False, alternating; the runner's row compares their medians (not asserted: timings)."""
    import vlm_stage1

    from vitsplit_vlm.playground.shapes import write_llava_dataset

    data = write_llava_dataset(tmp_path / "shapes", num_train=8, num_heldout=1, image_size=112,
                               seed=0)  # fmt: skip
    out = tmp_path / "vlm_logits.json"
    argv = ["--llm", str(tiny.llama), "--vision", str(tiny.clip), "--data", str(data.pretrain),
            "--images", str(data.image_folder), "--batch-size", "4", "--steps", "1",
            "--warmup", "1", "--repeats", "1", "--threads", "1", "--compare", "logits",
            "--out", str(out)]  # fmt: skip
    assert vlm_stage1.main(argv) == 0
    report = json.loads(out.read_text())
    assert [r["variant"] for name in ("supervised", "all") for r in report["runs"][name]] == [
        "supervised",
        "all",
    ]
    assert report["logits"]["supervised"]["trainable"] == report["logits"]["all"]["trainable"]
    (only,) = runner.CASES["vlm_logits"].rows(report)
    assert only["a"] == "supervised positions" and only["b"] == "all positions"
    assert only["ratio"] == pytest.approx(
        report["logits"]["all"]["median_step_s"] / report["logits"]["supervised"]["median_step_s"],
        abs=1e-3,
    )
