"""scripts/*.sh keep the global batch on any number of processes.

Every test runs the real script with bash and `DRY_RUN=1`: the script prints the launcher command
line it would run (one shell-quoted line) instead of running it, and does not build the
playground. `NUM_GPUS` is always set, so no script imports torch to count GPUs.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = ("pretrain", "finetune", "finetune_lora")
# (script, preset) -> global batch: the paper's stage 1 and stage 2 (official ViT-Split), LLaVA-1.5's
# LoRA recipe, and the playground's 32 x 1 x 1 on one process.
GLOBAL = {
    ("pretrain", "paper"): 256,
    ("finetune", "paper"): 256,
    ("finetune_lora", "paper"): 128,
    **{(script, "playground"): 32 for script in SCRIPTS},
}
# what the scripts passed on 8 GPUs before the global batch was kept: (per device, accumulation)
BEFORE_ON_8_GPUS = {
    ("pretrain", "paper"): (32, 1),
    ("finetune", "paper"): (16, 2),
    ("finetune_lora", "paper"): (16, 1),
}
OWN_VARS = ("NUM_GPUS", "NPROC", "HOSTFILE", "GLOBAL_BATCH", "PER_DEVICE_BATCH", "PRESET", "STEPS")


@dataclass
class Launch:
    """A printed launcher command, read back."""

    launcher: str  # deepspeed, torchrun or python
    world: int  # processes the launcher starts (a hostfile's: its slots, given by the test)
    launcher_args: list[str]
    train_args: dict[str, str]  # trainer flags, the last occurrence winning as in argparse

    @property
    def global_batch(self) -> int:
        per_device = int(self.train_args["--per_device_train_batch_size"])
        return per_device * self.world * int(self.train_args["--gradient_accumulation_steps"])


def run_script(script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in OWN_VARS}
    clean.update(DRY_RUN="1", **env)
    return subprocess.run(
        ["bash", f"scripts/{script}.sh", *args],
        cwd=REPO,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )


def dry_run(script: str, *args: str, hostfile_slots: int = 0, **env: str) -> Launch:
    proc = run_script(script, *args, **env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout  # the command only: nothing built, nothing run
    return parse_launch(lines[0], hostfile_slots)


def parse_launch(line: str, hostfile_slots: int) -> Launch:
    argv = shlex.split(line)
    if argv[0] == "env":  # `env VAR=value ... COMMAND`
        argv = argv[1:]
        while "=" in argv[0]:
            argv = argv[1:]
    end = argv.index("vitsplit_vlm.vlm.train")
    launcher_args, rest = argv[: end + 1], argv[end + 1 :]
    assert len(rest) % 2 == 0 and all(flag.startswith("--") for flag in rest[::2]), rest
    train_args = dict(zip(rest[::2], rest[1::2], strict=True))
    name = Path(launcher_args[0]).name
    if name == "deepspeed":
        if "--hostfile" in launcher_args:
            world = hostfile_slots
        else:
            world = int(launcher_args[launcher_args.index("--num_gpus") + 1])
        assert launcher_args[-2:] == ["--module", "vitsplit_vlm.vlm.train"]
    elif name == "torchrun":
        world = int(launcher_args[launcher_args.index("--nproc_per_node") + 1])
        assert launcher_args[-2:] == ["-m", "vitsplit_vlm.vlm.train"]
    else:
        assert name.startswith("python"), launcher_args
        assert launcher_args[1:] == ["-m", "vitsplit_vlm.vlm.train"]
        world = 1
    return Launch(name, world, launcher_args, train_args)


# --------------------------------------------------------------------------- the global batch


@pytest.mark.parametrize("gpus", [1, 2, 4, 8, 16])
@pytest.mark.parametrize(("script", "preset"), sorted(GLOBAL))
def test_global_batch_is_kept_on_gpus(script, preset, gpus):
    launch = dry_run(script, PRESET=preset, NUM_GPUS=str(gpus))
    assert launch.launcher == "deepspeed" and launch.world == gpus
    assert launch.global_batch == GLOBAL[script, preset]


@pytest.mark.parametrize(("script", "preset"), sorted(GLOBAL))
def test_global_batch_is_kept_on_two_nodes(script, preset, tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("# two nodes\nworker-1 slots=8\n\nworker-2 slots=8\n")
    launch = dry_run(script, PRESET=preset, HOSTFILE=str(hostfile), hostfile_slots=16)
    assert launch.launcher_args[:3] == ["deepspeed", "--hostfile", str(hostfile)]
    assert "--num_gpus" not in launch.launcher_args
    assert launch.global_batch == GLOBAL[script, preset]


@pytest.mark.parametrize(("nproc", "launcher"), [(1, "python"), (2, "torchrun"), (4, "torchrun")])
@pytest.mark.parametrize(("script", "preset"), sorted(GLOBAL))
def test_global_batch_is_kept_on_cpu_processes(script, preset, nproc, launcher):
    launch = dry_run(script, PRESET=preset, NUM_GPUS="0", NPROC=str(nproc))
    assert launch.launcher == launcher and launch.world == nproc
    assert launch.global_batch == GLOBAL[script, preset]
    # NUM_GPUS=0 once divided by zero and the paper preset lost its hyper-parameters silently
    assert "--learning_rate" in launch.train_args


def test_detected_world_without_gpus_is_nproc():
    """NUM_GPUS unset: the script counts GPUs itself (none here) and uses NPROC CPU processes."""
    import torch

    if torch.cuda.device_count():
        pytest.skip("needs a machine without GPUs")
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    launch = dry_run("finetune", PRESET="paper", NPROC="2", PATH=path)
    assert launch.launcher == "torchrun" and launch.world == 2 and launch.global_batch == 256


@pytest.mark.parametrize(("script", "preset"), sorted(BEFORE_ON_8_GPUS))
def test_paper_presets_on_8_gpus_are_unchanged(script, preset):
    launch = dry_run(script, PRESET=preset, NUM_GPUS="8")
    per_device, accumulation = BEFORE_ON_8_GPUS[script, preset]
    assert launch.train_args["--per_device_train_batch_size"] == str(per_device)
    assert launch.train_args["--gradient_accumulation_steps"] == str(accumulation)


@pytest.mark.parametrize("script", SCRIPTS)
def test_playground_on_one_process_is_unchanged(script):
    launch = dry_run(script, NUM_GPUS="0")
    assert launch.launcher == "python"
    assert launch.train_args["--per_device_train_batch_size"] == "32"
    assert launch.train_args["--gradient_accumulation_steps"] == "1"


def test_llava_stage2_batch_is_selectable():
    launch = dry_run("finetune", PRESET="paper", NUM_GPUS="8", GLOBAL_BATCH="128")
    assert launch.global_batch == 128 and launch.train_args["--per_device_train_batch_size"] == "16"


def test_per_device_batch_from_env_or_extra_args_keeps_the_global_batch():
    launch = dry_run("pretrain", PRESET="paper", NUM_GPUS="4", PER_DEVICE_BATCH="8")
    assert launch.train_args["--gradient_accumulation_steps"] == "8"
    launch = dry_run(
        "pretrain", "--per_device_train_batch_size", "16", PRESET="paper", NUM_GPUS="4"
    )
    assert launch.global_batch == 256 and launch.train_args["--gradient_accumulation_steps"] == "4"


def test_extra_args_still_override():
    launch = dry_run(
        "finetune",
        "--learning_rate",
        "1e-4",
        "--gradient_accumulation_steps",
        "3",
        PRESET="paper",
        NUM_GPUS="8",
    )
    assert launch.train_args["--learning_rate"] == "1e-4"
    assert launch.train_args["--gradient_accumulation_steps"] == "3"


def test_scripts_say_how_the_global_batch_is_made():
    proc = run_script("pretrain", PRESET="paper", NUM_GPUS="4")
    assert "global batch 256 = per-device 32 x world size 4 (NUM_GPUS=4) x accumulation 2" in (
        proc.stderr
    )


# --------------------------------------------------------------------------- clear errors


def assert_fails(script: str, *needles: str, **env: str) -> str:
    proc = run_script(script, **env)
    assert proc.returncode != 0 and not proc.stdout, (proc.returncode, proc.stdout)
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr)
    return proc.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_world_size_that_does_not_divide_the_global_batch_is_an_error(script):
    assert_fails(
        script,
        f"GLOBAL_BATCH={GLOBAL[script, 'paper']}",
        "per-device batch",
        "world size 3 (NUM_GPUS=3)",
        "Fix: make GLOBAL_BATCH a multiple of the world size",
        PRESET="paper",
        NUM_GPUS="3",
    )


def test_per_device_batch_that_does_not_divide_is_an_error_naming_one_that_does():
    assert_fails(
        "pretrain",
        "GLOBAL_BATCH=256",
        "per-device batch is 24 (from PER_DEVICE_BATCH)",
        "world size 2 (NUM_GPUS=2)",
        "Fix: set PER_DEVICE_BATCH=16 (accumulation 8)",
        PRESET="paper",
        NUM_GPUS="2",
        PER_DEVICE_BATCH="24",
    )


def test_global_batch_smaller_than_the_world_is_an_error():
    assert_fails(
        "finetune",
        "GLOBAL_BATCH=4",
        "world size 8",
        "GLOBAL_BATCH=8",
        GLOBAL_BATCH="4",
        NUM_GPUS="8",
    )


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"NUM_GPUS": "two"}, "NUM_GPUS=two: expected a whole number"),
        ({"NUM_GPUS": "0", "NPROC": "0"}, "NPROC=0: expected"),
        ({"NUM_GPUS": "8", "GLOBAL_BATCH": "x"}, "GLOBAL_BATCH=x: expected a whole number"),
        ({"NUM_GPUS": "8", "PER_DEVICE_BATCH": "0"}, "PER_DEVICE_BATCH=0: expected"),
        ({"HOSTFILE": "/nonexistent/hostfile"}, "HOSTFILE=/nonexistent/hostfile: no such file"),
    ],
)
def test_bad_settings_are_named(env, needle):
    assert_fails("pretrain", needle, **env)


def test_hostfile_without_slots_is_an_error(tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("worker-1 slots=8\nworker-2\n")
    assert_fails("pretrain", "line 2 has no slots=N", "HOST slots=N", HOSTFILE=str(hostfile))


@pytest.mark.parametrize("script", [*SCRIPTS, "_common"])
def test_scripts_parse(script):
    subprocess.run(["bash", "-n", f"scripts/{script}.sh"], cwd=REPO, check=True)


@pytest.mark.parametrize("script", SCRIPTS)
def test_quickstart_recipe_is_the_scripts_playground_preset(script):
    """`make quickstart` runs the trainer's module with `recipes.stage_flags`; the scripts are what
    users read and edit: both must pass the same flags, value for value."""
    from vitsplit_vlm.playground.recipes import stage_flags

    launch = dry_run(script, NUM_GPUS="0", NPROC="1")
    assert launch.launcher == "python" and launch.world == 1
    assert launch.train_args == stage_flags(script)


@pytest.mark.parametrize("projector", ["vitsplit_dense", "mlp2x_gelu"])
@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_and_recipe_give_other_connectors_the_same_flags(script, projector):
    """With PROJECTOR set, the scripts keep the ViT-Split settings exactly where
    `recipes.stage_argv` does (ViT-Split connectors) and drop them for the others."""
    from vitsplit_vlm.playground.recipes import stage_argv

    launch = dry_run(script, NUM_GPUS="0", NPROC="1", PROJECTOR=projector)
    argv = stage_argv(script, mm_projector_type=projector)
    assert launch.train_args == dict(zip(argv[::2], argv[1::2], strict=True))


def test_scripts_build_the_playground_the_quickstart_builds():
    """`prepare_playground` (scripts) and `recipes.prepare` (quickstart) must build the same
    shapes set and towers, or running the scripts after the quickstart would rebuild the data
    (the shapes manifest holds every argument). The CLI is replaced by `echo` to read the calls."""
    from vitsplit_vlm.playground.recipes import FINETUNE_STEPS, SHAPES_ARGS, stage_flags

    clean = {k: v for k, v in os.environ.items() if k not in OWN_VARS and not k.startswith("PLAY")}
    proc = subprocess.run(
        ["bash", "-c", 'source scripts/_common.sh; vitsplit-vlm() { echo "$*"; }; prepare_playground'],
        cwd=REPO, env={**clean, "NUM_GPUS": "0"}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    make_tiny, make_data = proc.stdout.splitlines()
    assert {"--pretrain-llm", "--pretrain-clip"} <= set(make_tiny.split())
    args = make_data.split()
    assert args[:2] == ["make-data", "shapes"]
    flags = dict(zip(args[2::2], args[3::2], strict=True))
    assert {
        k.removeprefix("--").replace("-", "_"): int(v) for k, v in flags.items() if k != "--out"
    } == SHAPES_ARGS
    # stage 2 reads finetune.json once, in order
    assert SHAPES_ARGS["num_finetune"] == FINETUNE_STEPS * int(
        stage_flags("finetune")["--per_device_train_batch_size"]
    )
    assert stage_flags("finetune")["--train_sampling_strategy"] == "sequential"
