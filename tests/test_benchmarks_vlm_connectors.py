"""`benchmarks/vlm_connectors.py`: the trainer argv it runs and the seeds' mean / spread table."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import vlm_connectors  # noqa: E402


def _flags(argv: list[str]) -> dict[str, str]:
    args = argv[argv.index("vitsplit_vlm.vlm.train") + 1 :]
    return dict(zip(args[::2], args[1::2], strict=True))


def test_stage_commands_are_the_recipe_with_the_connector_and_seed(tmp_path):
    from vitsplit_vlm.playground.recipes import stage_flags

    s1 = _flags(vlm_connectors.stage_command("pretrain", "mlp2x_gelu", 2, 7, tmp_path))
    s2 = _flags(vlm_connectors.stage_command("finetune", "mlp2x_gelu", 2, 9, tmp_path))
    changed = {"--mm_projector_type", "--seed", "--max_steps", "--output_dir", "--save_strategy",
               "--cache_features"}  # fmt: skip
    for stage, flags in (("pretrain", s1), ("finetune", s2)):
        recipe = stage_flags(stage)
        # ViT-Split's own settings stay with ViT-Split: the trainer refuses them for an MLP
        vitsplit = _flags(vlm_connectors.stage_command(stage, "vitsplit", 2, 7, tmp_path))
        assert vitsplit["--vitsplit_conv_init"] == recipe.pop("--vitsplit_conv_init") == "center"
        assert not [k for k in flags if k.startswith("--vitsplit_")]
        assert {
            k: v for k, v in flags.items() if k not in changed | {"--pretrain_mm_mlp_adapter"}
        } == {k: v for k, v in recipe.items() if k not in changed | {"--pretrain_mm_mlp_adapter"}}
        assert flags["--mm_projector_type"] == "mlp2x_gelu" and flags["--seed"] == "2"
        # a cache of the run's own: two connectors running at once read different layers
        assert flags["--cache_features"] == str(tmp_path / "feature-cache")
    assert s1["--max_steps"] == "7" and s2["--max_steps"] == "9"
    assert s2["--pretrain_mm_mlp_adapter"] == str(
        tmp_path / "pretrain" / "mm_projector.safetensors"
    )


def _run(connector, seed, overall):
    acc = {t: overall for t in vlm_connectors.QTYPES}
    return {"connector": connector, "seed": seed, "trainable": 10, "accuracy": acc,
            "blank": {t: 0.2 for t in vlm_connectors.QTYPES}}  # fmt: skip


def test_aggregate_and_table_report_mean_and_spread():
    runs = [_run("vitsplit", 0, 0.6), _run("mlp2x_gelu", 0, 0.5),
            _run("vitsplit", 1, 0.8), _run("mlp2x_gelu", 1, 0.5)]  # fmt: skip
    agg = vlm_connectors.aggregate(runs)
    assert list(agg) == ["vitsplit", "mlp2x_gelu"] and agg["vitsplit"]["seeds"] == [0, 1]
    overall = agg["vitsplit"]["accuracy"]["overall"]
    assert overall["mean"] == pytest.approx(0.7) and overall["std"] == pytest.approx(
        0.1414, abs=1e-4
    )
    assert (overall["min"], overall["max"]) == (0.6, 0.8)
    assert agg["mlp2x_gelu"]["accuracy"]["colour"]["std"] == 0
    report = {"chance": {t: 0.3 for t in vlm_connectors.QTYPES}, "connectors": agg}
    table = vlm_connectors.markdown_table(report).splitlines()
    assert len(table) == 2 + 1 + 2  # header, rule, chance, one row per connector
    assert table[3].startswith("| `vitsplit` | 10 | 0.700 ± 0.141 |")
    assert table[3].endswith("| 0.200 ± 0.000 |")


def test_a_stopped_benchmark_resumes_from_its_run_log(tmp_path, monkeypatch):
    """Finished runs are logged at once; the same command again trains only the missing ones,
    and a different budget trains everything again."""
    import vitsplit_vlm.playground.recipes as recipes

    monkeypatch.setattr(recipes, "prepare", lambda **_: None)
    trained = []

    def fake_train(args, connector, seed):  # the bookkeeping under test, not the training
        if (connector, seed) == ("mlp2x_gelu", 1) and not trained.count("again"):
            raise SystemExit("killed")
        trained.append((connector, seed))
        run = _run(connector, seed, 0.5 + seed / 10)
        return {**run, "budget": vlm_connectors.budget(args), "chance": run["blank"]}

    monkeypatch.setattr(vlm_connectors, "train_and_evaluate", fake_train)
    out = tmp_path / "res" / "c.json"
    argv = ["--connectors", "vitsplit", "mlp2x_gelu", "--seeds", "0", "1", "--out", str(out)]
    with pytest.raises(SystemExit, match="killed"):
        vlm_connectors.main(argv)
    log = out.with_name("c-runs.jsonl")
    assert not out.exists() and len(log.read_text().splitlines()) == 3
    trained.append("again")
    assert vlm_connectors.main(argv) == 0
    assert trained[-1] == ("mlp2x_gelu", 1) and trained.count(("vitsplit", 0)) == 1
    report = json.loads(out.read_text())
    assert [(r["connector"], r["seed"]) for r in report["runs"]] == [
        ("vitsplit", 0), ("mlp2x_gelu", 0), ("vitsplit", 1), ("mlp2x_gelu", 1)]  # fmt: skip
    vlm_connectors.main([*argv, "--stage2-steps", "5"])  # another budget: all four again
    assert trained.count(("vitsplit", 0)) == 2 and len(log.read_text().splitlines()) == 8
