"""LLaVA-1.5 two-stage training (`vitsplit_vlm.vlm.train`) with real DeepSpeed steps on CPU.

Every run is a subprocess (`python -m vitsplit_vlm.vlm.train ...`), so each one starts with a
clean distributed state. Module fixtures run stage 1 (ZeRO-2, connector only, `plain`) and
stage 2 (ZeRO-3, connector + LLM, `vicuna_v1`, gradient checkpointing) once on the tiny CLIP and
Llama and a 16-image shapes set; the tests share their output folders and read their output.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from vitsplit_vlm.playground.shapes import write_llava_dataset
from vitsplit_vlm.vlm.builder import CONNECTOR_PREFIX, build_vlm, connector_state_dict

REPO = Path(__file__).resolve().parents[1]
ZERO2, ZERO3 = REPO / "scripts" / "zero2.json", REPO / "scripts" / "zero3.json"
TOWER, LLM = "model.vision_tower.", "model.language_model."
LR, STAGE1_STEPS, STAGE2_STEPS = 1e-3, 4, 3
DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


# --------------------------------------------------------------------------- helpers


def run_train(*args, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m vitsplit_vlm.vlm.train ARGS` on CPU in a fresh process (no inherited rank)."""
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    env.update(
        DS_ACCELERATOR="cpu",
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    cmd = [sys.executable, "-m", "vitsplit_vlm.vlm.train", *map(str, args)]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def train_logged(*args) -> tuple[dict, str]:
    """Run a training that must succeed; return its train_summary.json and its stdout + stderr."""
    proc = run_train(*args)
    assert proc.returncode == 0, f"training failed:\n{proc.stderr[-4000:]}"
    out = Path(args[args.index("--output_dir") + 1])
    return json.loads((out / "train_summary.json").read_text()), proc.stdout + proc.stderr


def train_ok(*args) -> dict:
    """Run a training that must succeed; return its train_summary.json."""
    return train_logged(*args)[0]


def train_fails(*args) -> str:
    """Run a training that must fail; return its stderr."""
    proc = run_train(*args)
    assert proc.returncode != 0, f"expected a failure, got rc 0:\n{proc.stdout[-2000:]}"
    return proc.stderr


def common(tiny, data, out: Path, data_path: Path, *, steps: int) -> list:
    """Flags every run shares (LLaVA's names), tiny sizes."""
    return [
        "--model_name_or_path",
        tiny.llama,
        "--vision_tower",
        tiny.clip,
        "--data_path",
        data_path,
        "--image_folder",
        data.image_folder,
        "--output_dir",
        out,
        "--mm_projector_type",
        "vitsplit",
        "--vitsplit_k",
        "1",
        "--vitsplit_n",
        "1",
        "--mm_vision_select_layer",
        "-2",
        "--mm_use_im_start_end",
        "False",
        "--mm_use_im_patch_token",
        "False",
        "--image_aspect_ratio",
        "pad",
        "--per_device_train_batch_size",
        "2",
        "--max_steps",
        steps,
        "--learning_rate",
        LR,
        "--weight_decay",
        "0.",
        "--model_max_length",
        "256",
        "--logging_steps",
        "1",
        "--save_strategy",
        "no",
        "--dataloader_num_workers",
        "0",
        "--report_to",
        "none",
        "--lazy_preprocess",
        "True",
        "--seed",
        "0",
    ]


def assert_trained(summary: dict, steps: int) -> None:
    assert summary["steps"] == steps
    losses = summary["first_losses"] + summary["last_losses"]
    assert losses and all(math.isfinite(x) for x in losses), losses


def sub_dict(weights: dict, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def changed(a: dict, b: dict) -> list[str]:
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k])]


def snapshot(folder: Path) -> dict:
    """Every path under `folder` (folders too) -> (mtime, sha256) of files, None for folders."""
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).digest())
        if p.is_file()
        else None
        for p in sorted(folder.rglob("*"))
    }


def heldout_question(data) -> tuple[Image.Image, str]:
    first = json.loads(data.heldout.read_text().splitlines()[0])
    return Image.open(data.image_folder / first["image"]).convert("RGB"), first["text"]


def fresh_build(tiny, seed: int):
    """What `train` builds before its first step (same builder, same seed)."""
    from transformers import set_seed

    set_seed(seed)
    return build_vlm(model_name_or_path=tiny.llama, vision_tower=tiny.clip)


# --------------------------------------------------------------------------- fixtures


@dataclass
class Stage:
    out: Path
    summary: dict
    output: str  # the run's stdout + stderr


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("vlm_train_data")
    return write_llava_dataset(root, num_train=16, num_heldout=2, image_size=112, seed=0)


# Stage 1 as scripts/pretrain.sh runs it (ZeRO-2, connector only), checkpointing every 2 steps.
STAGE1_FLAGS = (
    "--deepspeed", ZERO2, "--version", "plain", "--tune_mm_mlp_adapter", "True",
    "--save_strategy", "steps", "--save_steps", "2",
)  # fmt: skip


@pytest.fixture(scope="module")
def stage1(tiny, data, tmp_path_factory) -> Stage:
    """ZeRO-2, connector only, `plain`; checkpoints at steps 2 and 4 (full model in each)."""
    out = tmp_path_factory.mktemp("stage1")
    summary, output = train_logged(
        *common(tiny, data, out, data.pretrain, steps=STAGE1_STEPS),
        *STAGE1_FLAGS,
    )
    return Stage(out, summary, output)


@pytest.fixture(scope="module")
def stage2(tiny, data, stage1, tmp_path_factory) -> Stage:
    """ZeRO-3, connector + LLM, `vicuna_v1`, gradient checkpointing, from stage 1's connector.

    Seed 1 (stage 1 used 0): a connector that silently failed to load would start far away.
    """
    out = tmp_path_factory.mktemp("stage2")
    summary, output = train_logged(*stage2_flags(tiny, data, stage1, out), "--deepspeed", ZERO3)
    return Stage(out, summary, output)


def stage2_flags(tiny, data, stage1, out: Path) -> list:
    """The `stage2` fixture's flags but DeepSpeed's."""
    return [
        *common(tiny, data, out, data.finetune, steps=STAGE2_STEPS),
        "--version", "vicuna_v1",
        "--pretrain_mm_mlp_adapter", stage1.out / "mm_projector.safetensors",
        "--gradient_checkpointing", "True",
        "--group_by_modality_length", "True",
        "--warmup_ratio", "0.03",
        "--lr_scheduler_type", "cosine",
        "--seed", "1",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def lora(tiny, data, stage1, tmp_path_factory) -> Stage:
    """Stage 2 with LoRA on the LLM (no DeepSpeed, to keep it short)."""
    out = tmp_path_factory.mktemp("lora")
    summary, output = train_logged(
        *common(tiny, data, out, data.finetune, steps=2),
        "--version",
        "vicuna_v1",
        "--pretrain_mm_mlp_adapter",
        stage1.out / "mm_projector.safetensors",
        "--lora_enable",
        "True",
        "--lora_r",
        "8",
        "--lora_alpha",
        "16",
        "--mm_projector_lr",
        "1e-3",
    )
    return Stage(out, summary, output)


@pytest.fixture(scope="module")
def fresh(tiny):
    """Stage 1's starting point: the built model (with its processor) for seed 0."""
    return fresh_build(tiny, seed=0)


@pytest.fixture(scope="module")
def clip_weights(tiny) -> dict:
    from transformers import AutoModel

    return AutoModel.from_pretrained(tiny.clip).state_dict()


# --------------------------------------------------------------------------- stage 1


def test_stage1_zero2_trains_only_the_connector(stage1, fresh):
    s = stage1.summary
    assert_trained(s, STAGE1_STEPS)
    assert s["stage"] == 1 and s["template"] == "plain" and s["precision"] == "fp32"
    assert Path(s["deepspeed"]).name == "zero2.json" and s["world_size"] == 1
    assert s["trainable"]["vision_tower"] == s["trainable"]["llm"] == 0
    assert s["trainable"]["connector"] == sum(p.numel() for p in fresh.model.connector.parameters())

    saved = load_file(str(stage1.out / "mm_projector.safetensors"))
    initial = {k: v.detach() for k, v in connector_state_dict(fresh.model).items()}
    moved = changed(saved, initial)
    assert moved, "stage 1 did not change the connector"
    # the rebuild is stage 1's start: a few Adam steps at lr 1e-3 move a weight < 0.05
    assert max_diff(saved, initial) < 0.05


def test_stage1_output_is_connector_and_config_only(stage1, fresh):
    files = {p.name for p in stage1.out.iterdir() if p.is_file()}
    assert files == {"mm_projector.safetensors", "config.json", "train_summary.json"}
    assert {p.name for p in stage1.out.iterdir() if p.is_dir()} == {"checkpoint-2", "checkpoint-4"}
    saved = load_file(str(stage1.out / "mm_projector.safetensors"))
    assert all(k.startswith(CONNECTOR_PREFIX) for k in saved)
    expected = connector_state_dict(fresh.model)
    assert saved.keys() == expected.keys()
    assert all(saved[k].shape == expected[k].shape for k in saved)
    config = json.loads((stage1.out / "config.json").read_text())
    assert config["model_type"] == "vitsplit_llava" and config["mm_projector_type"] == "vitsplit"


def test_stage1_keeps_tower_and_llm_bit_identical(stage1, fresh, clip_weights):
    ckpt = load_file(str(stage1.out / "checkpoint-4" / "model.safetensors"))
    tower = sub_dict(ckpt, TOWER)
    assert not changed(tower, clip_weights)
    initial = {k: v.detach() for k, v in fresh.model.state_dict().items()}
    for prefix in (LLM, "lm_head."):
        assert not changed(sub_dict(ckpt, prefix), sub_dict(initial, prefix)), prefix
    final = load_file(str(stage1.out / "mm_projector.safetensors"))
    assert not changed({k: ckpt[k] for k in final}, final)


def test_resume_continues_from_last_checkpoint(stage1, tiny, data, tmp_path):
    """A run that stopped after checkpoint-2 resumes and ends where the uninterrupted one did."""
    out = tmp_path / "interrupted"
    shutil.copytree(stage1.out / "checkpoint-2", out / "checkpoint-2")
    state_file = out / "checkpoint-2" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state["log_history"][0]["loss"] = 99.0  # marker: only a resumed run reports it
    state_file.write_text(json.dumps(state))
    summary = train_ok(
        *common(tiny, data, out, data.pretrain, steps=STAGE1_STEPS),
        *STAGE1_FLAGS,
        "--resume_from_checkpoint",
        "True",
    )
    assert summary["steps"] == STAGE1_STEPS and summary["first_losses"][0] == 99.0
    assert summary["resumed_at_step"] == 2  # seconds_per_step counts this run's 2 steps only
    assert summary["seconds_per_step"] == pytest.approx(summary["train_runtime_s"] / 2, abs=0.01)
    assert (out / "checkpoint-4").is_dir()
    resumed = load_file(str(out / "mm_projector.safetensors"))
    straight = load_file(str(stage1.out / "mm_projector.safetensors"))
    assert max_diff(resumed, straight) < 1e-6


def test_existing_output_dir_is_refused_and_untouched(stage1, tiny, data, tmp_path):
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    for p in stage1.out.iterdir():
        if p.is_file():
            shutil.copy2(p, earlier / p.name)
    before = snapshot(earlier)
    err = train_fails(
        *common(tiny, data, earlier, data.pretrain, steps=STAGE1_STEPS),
        "--deepspeed",
        ZERO2,
        "--version",
        "plain",
        "--tune_mm_mlp_adapter",
        "True",
    )
    assert "--output_dir" in err and "--resume_from_checkpoint" in err
    assert snapshot(earlier) == before


# --------------------------------------------------------------------------- stage 2


def test_stage2_zero3_trains_connector_and_llm(stage2, stage1, fresh, clip_weights, tiny):
    s = stage2.summary
    assert_trained(s, STAGE2_STEPS)
    assert s["stage"] == 2 and s["template"] == "vicuna_v1"
    assert Path(s["deepspeed"]).name == "zero3.json"
    assert s["trainable"]["vision_tower"] == 0
    assert s["trainable"]["llm"] > 0 and s["trainable"]["connector"] > 0

    model = load_file(str(stage2.out / "model.safetensors"))
    assert not changed(sub_dict(model, TOWER), clip_weights)  # frozen tower, bit-identical
    initial = {k: v.detach() for k, v in fresh.model.state_dict().items()}
    moved = changed(sub_dict(model, LLM), sub_dict(initial, LLM))
    assert len(moved) > len(sub_dict(initial, LLM)) // 2, moved  # the LLM trained

    connector = sub_dict(model, CONNECTOR_PREFIX)
    file = sub_dict(load_file(str(stage2.out / "mm_projector.safetensors")), CONNECTOR_PREFIX)
    assert not changed(connector, file)
    start = sub_dict(load_file(str(stage1.out / "mm_projector.safetensors")), CONNECTOR_PREFIX)
    assert changed(connector, start) and max_diff(connector, start) < 0.05  # from stage 1's
    seed1 = {
        k: v.detach() for k, v in fresh_build(tiny, seed=1).model.connector.state_dict().items()
    }
    assert max_diff(seed1, start) > 0.1  # what stage 2 would have started from without it


def test_stage2_under_zero2_trains_what_zero3_trains(stage2, stage1, tiny, data, tmp_path):
    """The playground recipe runs stage 2 under ZeRO-2 (one process: ZeRO-3 only costs time);
    the two must compute the same run: same losses, same weights at the end."""
    out = tmp_path / "zero2"
    summary = train_ok(*stage2_flags(tiny, data, stage1, out), "--deepspeed", ZERO2)
    assert Path(summary["deepspeed"]).name == "zero2.json"
    assert summary["first_losses"] == pytest.approx(stage2.summary["first_losses"], rel=1e-5)
    zero2 = load_file(str(out / "model.safetensors"))
    zero3 = load_file(str(stage2.out / "model.safetensors"))
    assert zero2.keys() == zero3.keys()
    assert max_diff(zero2, zero3) < 1e-5


def test_stage2_folder_loads_and_answers(stage2, data):
    from transformers import AutoModelForImageTextToText

    # importing vitsplit_vlm.vlm registers `vitsplit_llava` with the Auto classes
    from vitsplit_vlm.vlm import ViTSplitLlavaForConditionalGeneration
    from vitsplit_vlm.vlm.engine import GenerationSettings, Request, VLMEngine

    model = AutoModelForImageTextToText.from_pretrained(stage2.out)
    assert isinstance(model, ViTSplitLlavaForConditionalGeneration)
    saved = load_file(str(stage2.out / "model.safetensors"))
    assert not changed({k: v for k, v in model.state_dict().items() if k in saved}, saved)
    assert model.config.conv_template == "vicuna_v1"

    engine = VLMEngine.from_pretrained(stage2.out, device="cpu")
    image, question = heldout_question(data)
    answers = engine.generate(
        [Request(image, [(engine.template.user, question)])], GenerationSettings(max_new_tokens=8)
    )
    assert len(answers) == 1 and isinstance(answers[0], str)


# --------------------------------------------------------------------------- readable output

# A warning or log line says "warn" (any case) or has a log-level prefix: Python logging's
# `LEVEL:name:`, DeepSpeed's `[time] [LEVEL]`, torch's `W1201 03:02:49.473 pid file]`,
# transformers' `[transformers] `. Progress-bar redraws are not; time stamps and process ids are
# masked so that one message printed twice counts twice.
LOG_PREFIX = re.compile(
    r"(^|\s)((\[[^\]]*\] )?\[?(DEBUG|INFO|WARNING|ERROR|CRITICAL)[\]:]"
    r"|[DIWEF]\d{4} \d\d:\d\d|\[transformers\] )"
)
PROGRESS_BAR = re.compile(r"\d+%\|[^|\n]*\|[^\]\n]*\]")  # ` 88%|████▊ | 7/8 [00:04<00:00, 1.8it/s]`
TIME_OR_PID = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[,.]\d+|\d\d:\d\d:\d\d\.\d+ \d+")
PY_WARNING = re.compile(r"\.py:\d+: \w*Warning: ")  # `file.py:83: FutureWarning: message`


def warning_lines(output: str) -> list[str]:
    """The warning and log lines of `output`, in order, progress bars cut out, time stamps masked.
    A Python warning is one entry with the source line `warnings` prints under it."""
    lines = [PROGRESS_BAR.sub("", line).strip() for line in re.split(r"[\r\n]", output)]
    found, i = [], 0
    while i < len(lines):
        line = lines[i]
        if PY_WARNING.search(line) and i + 1 < len(lines):
            found.append(f"{line}  <source:> {lines[i + 1]}")
            i += 1
        elif line and ("warn" in line.lower() or LOG_PREFIX.search(line)):
            found.append(TIME_OR_PID.sub("<time>", line))
        i += 1
    return found


def repeated_warnings(output: str) -> dict[str, int]:
    return {line: n for line, n in Counter(warning_lines(output)).items() if n > 1}


def test_repeated_warnings_finds_repeats_not_progress_bars():
    """The definition, on lines shaped like the stage-2 output before the filters."""
    scatter = (
        "/venv/torch/distributed/c10d_logger.py:83: FutureWarning: "
        "`torch.distributed.reduce_scatter_tensor` is deprecated."
    )
    ds = "[{}] [WARNING] [utils.py:197:apply_to_tensors_only] A module has unknown inputs"
    output = "\n".join(
        [
            f"  0%|          | 0/8 [00:00<?, ?it/s]{scatter}",
            "  return func(*args, **kwargs)",
            " 12%|█▎        | 1/8 [00:00<00:03,  1.96it/s]",
            " 12%|█▎        | 1/8 [00:00<00:03,  1.96it/s]",
            "{'loss': '7.147', 'grad_norm': '12.49'}",
            "{'loss': '7.147', 'grad_norm': '12.49'}",
            scatter,
            "  return func(*args, **kwargs)",
            ds.format("2026-12-01 03:02:53,147"),
            ds.format("2026-12-01 03:02:54,001"),
            "Loading weights: 100%|██████████| 71/71 [00:00<00:00, 3403.65it/s]INFO:x:once",
            "/venv/transformers/training_args.py:1541: FutureWarning: `gradient_checkpointing`",
            '  warnings.warn(f"`{old}` is deprecated", FutureWarning)',
            "W1201 03:02:49.473000 14578 torch/utils/cpp_extension.py:183] No CUDA runtime",
        ]
    )
    assert repeated_warnings(output) == {
        f"{scatter}  <source:> return func(*args, **kwargs)": 2,
        ds.format("<time>"): 2,
    }
    assert len(warning_lines(output)) == 7


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_training_output_repeats_no_warning(stage, request):
    """Stage 1 (ZeRO-2, two checkpoints) and stage 2 (ZeRO-3, gradient checkpointing): no
    warning or log line twice (ZeRO-3 printed torch's reduce_scatter_tensor deprecation on every
    collective), while the progress bar and the summary line stay."""
    output = request.getfixturevalue(stage).output
    repeated = repeated_warnings(output)
    assert not repeated, "repeated warning/log lines:\n" + "\n".join(
        f"{n} x {line}" for line, n in repeated.items()
    )
    assert PROGRESS_BAR.search(output)
    assert f"[vitsplit-vlm train] stage {stage[-1]}: " in output


def test_zero3_sees_into_the_heads_output(stage2):
    """The heads return a ModelOutput (a dict), which ZeRO-3's hooks traverse; a dataclass made
    DeepSpeed warn that the hooks cannot see its tensors."""
    assert Path(stage2.summary["deepspeed"]).name == "zero3.json"
    assert "unknown inputs or outputs type" not in stage2.output
    assert "ViTSplitOutput" not in stage2.output


# --------------------------------------------------------------------------- LoRA


def test_lora_merge_matches_adapter_and_wraps_only_the_llm(lora, stage1, fresh, tiny, data):
    from peft import PeftModel

    from vitsplit_vlm.vlm.merge_lora import merge_lora

    assert_trained(lora.summary, 2)
    torch.manual_seed(123)  # merge_lora rebuilds the base: it must not depend on the RNG
    merged, processor = merge_lora(lora.out)
    torch.manual_seed(456)
    base = build_vlm(
        model_name_or_path=tiny.llama,
        vision_tower=tiny.clip,
        pretrain_mm_mlp_adapter=lora.out / "mm_projector.safetensors",
    ).model
    adapter = PeftModel.from_pretrained(base, lora.out).eval()

    wrapped = [n for n, m in adapter.named_modules() if hasattr(m, "lora_A")]
    assert wrapped and all(n.startswith("base_model.model." + LLM) for n in wrapped)
    targets = json.loads((lora.out / "adapter_config.json").read_text())["target_modules"]
    frozen_parts = [
        n
        for n, _ in fresh.model.named_modules()
        if n.startswith((TOWER, CONNECTOR_PREFIX, "lm_head"))
    ]
    assert not [(t, n) for t in targets for n in frozen_parts if n == t or n.endswith("." + t)]
    adapter_keys = load_file(str(lora.out / "adapter_model.safetensors")).keys()
    assert adapter_keys and all("." + LLM in k and "lora_" in k for k in adapter_keys)

    image, question = heldout_question(data)
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(msgs, add_generation_prompt=True)
    batch = processor(images=[image], text=[prompt], return_tensors="pt")
    with torch.no_grad():
        want = adapter(**batch).logits
        got = merged.eval()(**batch).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)

    trained = load_file(str(lora.out / "mm_projector.safetensors"))
    start = load_file(str(stage1.out / "mm_projector.safetensors"))
    assert changed(trained, start), "the connector did not train in the LoRA run"


@pytest.mark.slow  # ~15-40 s on two shared cores; `make test-slow`
def test_lora_under_zero3(tiny, data, stage1, tmp_path):
    """scripts/finetune_lora.sh's setting: LoRA + ZeRO-3 + gradient checkpointing."""
    out = tmp_path / "lora3"
    summary = train_ok(
        *common(tiny, data, out, data.finetune, steps=2),
        "--deepspeed",
        ZERO3,
        "--version",
        "vicuna_v1",
        "--pretrain_mm_mlp_adapter",
        stage1.out / "mm_projector.safetensors",
        "--lora_enable",
        "True",
        "--lora_r",
        "8",
        "--lora_alpha",
        "16",
        "--gradient_checkpointing",
        "True",
    )
    assert_trained(summary, 2)
    adapter = load_file(str(out / "adapter_model.safetensors"))
    assert adapter and all(v.numel() > 0 and 8 in v.shape for v in adapter.values())
    assert any(v.abs().max() > 0 for k, v in adapter.items() if "lora_B" in k)  # B starts at 0
    connector = load_file(str(out / "mm_projector.safetensors"))
    start = load_file(str(stage1.out / "mm_projector.safetensors"))
    assert all(connector[k].shape == start[k].shape for k in start)  # gathered, not partitioned
    assert changed(connector, start)


# --------------------------------------------------------------------------- bad input


def bad_dataset(data, folder: Path, *, no_reply: bool) -> Path:
    """Four good finetune samples plus one with a missing image (and one with no reply)."""
    good = [r for r in json.loads(data.finetune.read_text()) if "image" in r][:4]
    bad = [{**good[0], "id": "bad_missing_image", "image": "no_such_file.png"}]
    if no_reply:
        bad.append(
            {
                "id": "bad_no_reply",
                "image": good[1]["image"],
                "conversations": [{"from": "human", "value": "<image>\nWhat is this?"}],
            }
        )
    path = folder / "bad.json"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(good + bad))
    return path


def test_bad_samples_are_skipped_and_counted(tiny, data, tmp_path):
    path = bad_dataset(data, tmp_path, no_reply=True)
    out = tmp_path / "run"
    summary = train_ok(*common(tiny, data, out, path, steps=3), "--version", "vicuna_v1")
    assert_trained(summary, 3)  # 3 batches of 2 visit all 6 samples
    skipped = summary["skipped"]
    assert skipped["total"] == 2
    assert skipped["by_reason"] == {"missing_image": 1, "no_assistant_turn": 1}
    assert skipped["ids"] == {
        "missing_image": ["bad_missing_image"],
        "no_assistant_turn": ["bad_no_reply"],
    }
    assert (out / "skipped_samples.jsonl").is_file()


def test_fail_fast_names_the_sample(tiny, data, tmp_path):
    path = bad_dataset(data, tmp_path, no_reply=False)
    err = train_fails(
        *common(tiny, data, tmp_path / "run", path, steps=3),
        "--version",
        "vicuna_v1",
        "--fail_fast",
        "True",
    )
    assert "bad_missing_image" in err and "missing_image" in err


# --------------------------------------------------------------------------- in process


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("True", True),
        ("true", True),
        ("False", False),
        ("false", False),
        (None, None),
        ("out/checkpoint-2", "out/checkpoint-2"),
    ],
)
def test_resume_flag_spellings(value, expected, tmp_path):
    from vitsplit_vlm.vlm.arguments import ModelArguments, TrainingArguments
    from vitsplit_vlm.vlm.train import _check_args, resume_arg

    (tmp_path / "train_summary.json").write_text("{}")  # an earlier run
    args = TrainingArguments(
        output_dir=str(tmp_path), resume_from_checkpoint=value, report_to="none"
    )
    assert resume_arg(args) == expected
    if expected:
        _check_args(ModelArguments(model_name_or_path="llm", vision_tower="tower"), args)
    else:  # `--resume_from_checkpoint false` must not slip past the guard
        with pytest.raises(SystemExit, match="--output_dir"):
            _check_args(ModelArguments(model_name_or_path="llm", vision_tower="tower"), args)


def _stage2_dataset(fresh, data):
    """The stage-2 (vicuna_v1) dataset of the module's data for the `fresh` model."""
    from vitsplit_vlm.vlm.conversation import get_template
    from vitsplit_vlm.vlm.data import LazySupervisedDataset

    return LazySupervisedDataset(
        data.finetune,
        data.image_folder,
        fresh.tokenizer,
        fresh.image_processor,
        get_template("vicuna_v1"),
        model_max_length=256,
        num_image_tokens=fresh.model.config.image_seq_length,
        image_token_id=fresh.model.config.image_token_id,
    )


def test_trainer_groups_by_modality_and_sets_connector_lr(fresh, data, tmp_path):
    from vitsplit_vlm.vlm.arguments import ModelArguments, TrainingArguments
    from vitsplit_vlm.vlm.data import DataCollator
    from vitsplit_vlm.vlm.sampler import LengthGroupedSampler
    from vitsplit_vlm.vlm.train import set_trainable
    from vitsplit_vlm.vlm.trainer import CONNECTOR_MARK, VLMTrainer

    model = fresh.model
    args = TrainingArguments(
        output_dir=str(tmp_path),
        group_by_modality_length=True,
        learning_rate=1e-3,
        mm_projector_lr=1e-4,
        weight_decay=0.1,
        per_device_train_batch_size=2,
        report_to="none",
    )
    counts = set_trainable(
        model, ModelArguments(model_name_or_path="llm", vision_tower="tower"), args
    )  # stage 2: connector + LLM
    assert counts["vision_tower"] == 0 and counts["connector"] > 0 and counts["llm"] > 0
    dataset = _stage2_dataset(fresh, data)
    trainer = VLMTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=DataCollator(fresh.tokenizer.pad_token_id, 256),
    )
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, LengthGroupedSampler)
    assert sorted(sampler) == list(range(len(dataset)))

    optimizer = trainer.create_optimizer()
    names = {id(p): n for n, p in model.named_parameters()}
    for group in optimizer.param_groups:
        connector = {CONNECTOR_MARK in names[id(p)] for p in group["params"]}
        assert len(connector) == 1  # a group is all connector or all LLM
        assert group["lr"] == (1e-4 if connector.pop() else 1e-3)
    grouped = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
    assert grouped == sum(counts.values())


def test_trainer_reads_the_file_in_order_when_asked(fresh, data, tmp_path):
    """The playground's stage 2 relies on HF's ``--train_sampling_strategy sequential`` reaching
    the sampler (its finetune.json is written in training order): without LLaVA's modality
    grouping, `VLMTrainer` leaves the choice to HF."""
    from vitsplit_vlm.vlm.arguments import TrainingArguments
    from vitsplit_vlm.vlm.trainer import VLMTrainer

    dataset = _stage2_dataset(fresh, data)
    orders = {}
    for strategy in ("sequential", "random"):
        args = TrainingArguments(
            output_dir=str(tmp_path), train_sampling_strategy=strategy, report_to="none"
        )
        trainer = VLMTrainer(model=fresh.model, args=args, train_dataset=dataset)
        orders[strategy] = list(trainer._get_train_sampler())
    assert orders["sequential"] == list(range(len(dataset)))
    assert sorted(orders["random"]) == orders["sequential"] != orders["random"]


# Argument errors stop before any distributed setup or weight loading, so they run in process
# through the `vitsplit-vlm` entry point itself.


def vitsplit_vlm(*args) -> None:
    from vitsplit_vlm.cli import main

    main(["train", *map(str, args)])


@pytest.mark.parametrize("flag", ["--mm_projector_type", "--version"])
def test_unknown_choice_names_the_flag(flag, tiny, data, tmp_path):
    args = common(tiny, data, tmp_path / "run", data.finetune, steps=1)
    with pytest.raises((SystemExit, ValueError), match=flag) as err:
        vitsplit_vlm(*args, flag, "no_such_choice")
    assert "no_such_choice" in str(err.value)
    assert not (tmp_path / "run" / "train_summary.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="bf16 / fp16 are allowed on CUDA")
@pytest.mark.parametrize("flag", ["--bf16", "--fp16"])
def test_half_precision_refused_on_cpu(tiny, data, tmp_path, flag):
    with pytest.raises(SystemExit, match=f"{flag} True needs a CUDA GPU"):
        vitsplit_vlm(*common(tiny, data, tmp_path / "run", data.finetune, steps=1), flag, "True")


def test_train_help_lists_llava_flags(capsys):
    with pytest.raises(SystemExit) as exit_:
        vitsplit_vlm("--help")
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "usage: vitsplit-vlm train" in text
    for flag in (
        "--tune_mm_mlp_adapter",
        "--pretrain_mm_mlp_adapter",
        "--vitsplit_k",
        "--group_by_modality_length",
        "--mm_projector_type",
        "--lora_enable",
        "--mm_projector_lr",
        "--model_max_length",
        "--fail_fast",
        "--deepspeed",
    ):
        assert flag in text, flag
