"""`vitsplit-vlm dense {train,eval,predict}`: dense prediction on a frozen trunk.

    vitsplit-vlm dense train --task seg --preset playground  # tiny DINOv2 + playground sets
    vitsplit-vlm dense train --task seg --backbone PATH --data ADEChallengeData2016 \\
        --k 3 --n 4 --s 2 --method vitsplit --out runs/ade-s
    vitsplit-vlm dense eval --checkpoint runs/ade-s/checkpoint.pt [--data ROOT]
    vitsplit-vlm dense predict --checkpoint runs/ade-s/checkpoint.pt --images DIR --out preds/
    vitsplit-vlm dense predict --adapters seg.pt,depth.pt,det.pt --images DIR --out preds/
    torchrun --nproc-per-node 8 -m vitsplit_vlm dense train --task seg ... --precision bf16 \
        --global-batch 16 --save-every 2000 --resume auto --eval-every 4000

``dense train`` needs ``--backbone`` and ``--data``, except with ``--preset playground``, which
fills a missing one with the tiny DINOv2 of ``make-tiny`` (built if missing) or the task's
playground set of ``make-data dense`` (generated if missing) and prints which it used.
Hyper-parameters come from the task's preset (`vitsplit_vlm.dense.tasks`): the paper's recipe
on real data, a few-minute CPU run on playground sets (``--preset auto`` tells them apart from
the data); every flag given overrides one value. The ViT-Split settings start from the paper's
layers for the task and trunk, and each `ViTSplitConfig` flag (`vitsplit_vlm.core.flags`)
overrides one field. Task flags come from the registered tasks; a task rejects another's.

Several processes run through torchrun + DDP (`vitsplit_vlm.dense.runtime`): ``--global-batch``
is split over processes and ``--accumulation`` steps, evaluation is sharded; only rank 0 prints
and writes files. ``--save-every`` / ``--resume`` / ``--eval-every`` / ``--report-to`` are the long
run's services (`vitsplit_vlm.dense.longrun`, `vitsplit_vlm.dense.resume`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from vitsplit_vlm.core import flags

from .engine import SCHEDULES
from .inference import SEG_MODES
from .model import METHODS
from .recipes import (
    PRESET_CHOICES,
    build_dataset,
    eval_config,
    first_size,
    preset_kind,
)
from .tasks import TASKS, DenseTask, Preset, TaskOption, get_task
from .tasks.base import parse_pair


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    train = sub.add_parser("train", help="train an adapter + head; writes OUT/checkpoint.pt")
    _add_train(train)
    ev = sub.add_parser("eval", help="metrics of a checkpoint on a validation split")
    _add_eval(ev)
    pred = sub.add_parser("predict", help="PNG overlays (masks, depth, boxes) for images")
    _add_predict(pred)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: OMP_NUM_THREADS or 1)"
    )


def _add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", required=True, choices=tuple(TASKS))
    needed = "required unless --preset playground"
    p.add_argument("--backbone", type=Path, default=None, help=f"HF vision model folder ({needed})")
    p.add_argument(
        "--data", type=Path, default=None, help=f"data set root in its public layout ({needed})"
    )
    p.add_argument(
        "--out", type=Path, default=None, help="run folder (default runs/dense/TASK-METHOD)"
    )
    p.add_argument(
        "--preset",
        default="auto",
        choices=PRESET_CHOICES,
        help="hyper-parameter defaults: the paper's recipe (real) or a few-minute CPU run "
        "(playground: also fills a missing --backbone / --data with the tiny DINOv2 and the "
        "playground sets); auto: playground for sets written by make-data dense",
    )
    p.add_argument(
        "--method",
        default="vitsplit",
        choices=METHODS,
        help="vitsplit: frozen trunk + heads; linear: frozen last layer + head; full: fine-tune all",
    )
    flags.add_arguments(
        p,
        preset_note="default: the task's paper layers on DINOv2-S/B/L (detection: the official "
        "code's), else k=3 n=4 s=2",
    )
    _add_schedule(p)
    _add_task_options(p)
    p.add_argument(
        "--eval-untrained", action="store_true",
        help="also evaluate the model before training (metrics.json: eval_untrained)",
    )  # fmt: skip
    p.add_argument(
        "--checkpoint-head", action="store_true",
        help="seg/depth: recompute the head's upsampling in backward (less memory, ~5%% compute)",
    )  # fmt: skip
    p.add_argument("--max-eval-images", type=int, default=None, help="evaluate on the first N")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation after training")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument(
        "--cache-features", type=Path, default=None, metavar="DIR",
        help="vitsplit / linear with --no-augment: compute the frozen trunk's hidden states once "
        "into DIR (safetensors) and train on them",
    )  # fmt: skip
    p.add_argument(
        "--augment", action=argparse.BooleanOptionalAction, default=True,
        help="random rescale / crop / flip / colour in training (--no-augment: fixed rescale and "
        "centre crop)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="head init, shuffling and augmentation")
    p.add_argument("--log-every", type=int, default=50, help="log a JSON line every N steps")
    _add_device(p)
    _add_long_run(p)
    _add_common(p)


def _add_device(p: argparse.ArgumentParser) -> None:
    from .runtime import DEVICES, PRECISIONS

    g = p.add_argument_group(
        "devices and processes",
        "Several processes: torchrun --nproc-per-node N -m vitsplit_vlm dense ... (one per GPU, "
        "nccl; or N CPU processes, gloo); multi-node through torchrun's own flags.",
    )
    g.add_argument("--device", default="auto", choices=DEVICES,
                   help="auto: CUDA when a GPU is visible (cuda:LOCAL_RANK under torchrun)")  # fmt: skip
    g.add_argument(
        "--precision", default="fp32", choices=PRECISIONS,
        help="bf16 / fp16: autocast, the frozen trunk cast to it; fp16 adds a gradient scaler "
        "(CUDA only)",
    )  # fmt: skip
    g.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=True,
                   help="CUDA: TF32 matmuls / convolutions in fp32")  # fmt: skip
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="CUDA: NHWC weights in the seg / depth heads' convolutions")  # fmt: skip


def _add_long_run(p: argparse.ArgumentParser) -> None:
    from .longrun import REPORT_TO

    g = p.add_argument_group("long runs")
    g.add_argument("--accumulation", type=int, default=1,
                   help="micro-steps per optimiser step (global batch = per device x processes "
                   "x this)")  # fmt: skip
    g.add_argument("--save-every", type=int, default=0,
                   help="resumable checkpoint every N steps in OUT/checkpoints (0: none)")  # fmt: skip
    g.add_argument("--keep-last", type=int, default=0,
                   help="keep the newest N resumable checkpoints (0: all)")  # fmt: skip
    g.add_argument("--resume", default=None, metavar="auto|PATH",
                   help="continue from the newest complete checkpoint in OUT (auto) or PATH")  # fmt: skip
    g.add_argument("--eval-every", type=int, default=0,
                   help="evaluate every N steps (OUT/eval_log.jsonl), best in OUT/best.pt")  # fmt: skip
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar with ETA on stderr (default: when it is a terminal)")  # fmt: skip
    g.add_argument("--report-to", default="none", choices=REPORT_TO,
                   help="also log to TensorBoard (OUT/tensorboard) or W&B (offline unless "
                   "WANDB_MODE=online)")  # fmt: skip


def _add_schedule(p: argparse.ArgumentParser) -> None:
    """Flags of the fields every task's `Preset` has."""
    preset = "default: the task's preset"
    g = p.add_argument_group("training recipe", f"Each flag overrides one value ({preset}).")
    g.add_argument("--iters", type=int, help="optimiser steps")
    g.add_argument(
        "--global-batch", "--batch-size", dest="batch_size", type=int,
        help="images per optimiser step over all processes and --accumulation steps",
    )  # fmt: skip
    g.add_argument("--lr", type=float, help="AdamW base lr")
    g.add_argument("--weight-decay", type=float, help="AdamW weight decay")
    g.add_argument(
        "--task-head-lr-mult", type=float, default=0.1,
        help="task head lr = lr x this (paper 0.1; random tiny trunks may want 1)",
    )  # fmt: skip
    g.add_argument("--schedule", choices=SCHEDULES, help="lr schedule")
    g.add_argument("--warmup-iters", type=int, help="linear warmup steps")
    g.add_argument("--grad-clip", type=float, help="max grad norm (0 = off)")
    g.add_argument(
        "--scale",
        type=parse_pair,
        help="keep-ratio resize LONG,SHORT at test time (tasks that rescale in training: the "
        "scale their random ratios multiply)",
    )


def task_options() -> dict[str, tuple[TaskOption, list[str]]]:
    """``{flag: (option, names of the tasks using it)}`` over the registry; a flag shared by
    several tasks must be one `TaskOption` (declared once)."""
    found: dict[str, tuple[TaskOption, list[str]]] = {}
    for task in TASKS.values():
        for option in task.options:
            first, users = found.setdefault(option.flag, (option, []))
            if first != option:
                raise ValueError(
                    f"{option.flag}: {task.name} declares it again differently from {users}; "
                    "share one TaskOption"
                )
            users.append(task.name)
    return found


def _add_task_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("task options", "Each applies to the tasks in brackets.")
    for flag, (option, users) in task_options().items():
        g.add_argument(
            flag, dest=option.field, type=option.type, choices=option.choices, default=None,
            help=f"[{', '.join(users)}] {option.help}",
        )  # fmt: skip


def check_task_options(args: argparse.Namespace, task: DenseTask) -> None:
    """Refuse a task flag given for a task that does not use it."""
    own = {option.flag for option in task.options}
    for flag, (option, users) in task_options().items():
        if flag not in own and getattr(args, option.field, None) is not None:
            raise ValueError(f"{flag} is a {'/'.join(users)} option; --task {task.name} has none")


def _add_eval(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--data", type=Path, default=None, help="default: the data the run used")
    p.add_argument("--backbone", type=Path, default=None, help="default: the recorded trunk path")
    p.add_argument("--eval-mode", choices=SEG_MODES, help="seg inference (default: the run's)")
    p.add_argument("--max-eval-images", type=int, default=None, help="evaluate on the first N")
    p.add_argument("--out", type=Path, default=None, help="also write the metrics JSON here")
    _add_device(p)
    _add_common(p)


def _add_predict(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--checkpoint", type=Path)
    group.add_argument(
        "--adapters", help="comma-separated checkpoints sharing one frozen trunk pass per image"
    )
    p.add_argument("--images", type=Path, required=True, help="an image or a folder of images")
    p.add_argument("--out", type=Path, default=Path("runs/dense/predictions"))
    p.add_argument("--backbone", type=Path, default=None, help="default: the recorded trunk path")
    p.add_argument(
        "--scale", type=parse_pair, default=None, help="resize LONG,SHORT (default: the run's)"
    )
    _add_common(p)


# --------------------------------------------------------------------------- setup


def _set_threads(args: argparse.Namespace) -> None:
    import torch

    n = args.threads or int(os.environ.get("OMP_NUM_THREADS", "1"))
    torch.set_num_threads(max(1, n))


# --------------------------------------------------------------------------- inputs


def resolve_inputs(args: argparse.Namespace, task: DenseTask) -> tuple[Path, Path]:
    """(backbone, data) from ``--backbone`` / ``--data``; with ``--preset playground`` a missing
    one is the playground's (built or generated on first use), and printed."""
    missing = [f for f, v in (("--backbone", args.backbone), ("--data", args.data)) if v is None]
    if missing and args.preset != "playground":
        raise ValueError(
            f"{' and '.join(missing)} required with --preset {args.preset}: give the path (a "
            "Hugging Face vision model folder; a data set root in its public layout), or pass "
            "--preset playground for the tiny DINOv2 and the playground sets"
        )
    backbone = args.backbone or _playground_backbone()
    data = args.data or _playground_data(task, task.playground_folder(vars(args)))
    return backbone, data


def _playground_backbone() -> Path:
    from vitsplit_vlm.playground import paths

    note = ""
    if not (paths.TINY_DINOV2 / "config.json").is_file():
        from vitsplit_vlm.playground.tiny import make_tiny

        make_tiny(paths.TINY)
        note = ", built now"
    print(f"--preset playground: --backbone {paths.TINY_DINOV2} (the tiny DINOv2{note})")
    return paths.TINY_DINOV2


def _playground_data(task: DenseTask, folder: str) -> Path:
    """The playground set in `folder` of ``make-data dense``'s output; missing sets are written
    first (with the arguments the folder's manifest records, the defaults when there is none)."""
    from vitsplit_vlm.playground import paths

    note = ""
    data = paths.DENSE_DATA / folder
    if not (paths.DENSE_DATA / "manifest.json").is_file() or not data.is_dir():
        from vitsplit_vlm.playground.dense_sets import complete_dense_sets

        complete_dense_sets(paths.DENSE_DATA)
        note = ", generated now"
    print(f"--preset playground: --data {data} (the playground {task.name} set{note})")
    return data


# --------------------------------------------------------------------------- train


@dataclass
class TrainPlan:
    """What ``dense train`` resolved from its flags before loading anything."""

    task: DenseTask
    kind: str  # "real" | "playground"
    preset: Preset
    backbone: Path
    data: Path
    out: Path


def plan_train(args: argparse.Namespace) -> TrainPlan:
    """Flags -> task, preset and paths; a ``ValueError`` names the flag at fault."""
    task = get_task(args.task)
    check_task_options(args, task)
    backbone, data = (path.resolve() for path in resolve_inputs(args, task))
    kind = preset_kind(args.preset, data)
    preset = task.preset_for(kind, vars(args)).override(vars(args))
    out = args.out or Path("runs/dense") / f"{task.name}-{args.method}"
    return TrainPlan(task, kind, preset, backbone, data, out)


def _usage_error(err: ValueError, action: str = "train") -> SystemExit:
    return SystemExit(f"vitsplit-vlm dense {action}: error: {err}")


def _load_eval_split(task: DenseTask, data: Path, preset: Preset, mean, std):
    """The validation set `dense eval` reads; a wrong layout or an unusable set is one line."""
    try:
        return build_dataset(task, data, "val", preset, mean, std, train=False)
    except ValueError as err:
        raise _usage_error(err, "eval") from None


def _runtime(args: argparse.Namespace, command: str):
    """The `Runtime` of ``--device`` / ``--precision`` (joins torchrun's process group)."""
    from .runtime import resolve_runtime

    try:
        return resolve_runtime(args.device, args.precision, tf32=args.tf32,
                               channels_last=args.channels_last)  # fmt: skip
    except ValueError as err:
        raise SystemExit(f"vitsplit-vlm dense {command}: error: {err}") from None


@contextlib.contextmanager
def _session(runtime):
    """Ranks other than 0 print nothing; a process group the command created is left at the end
    (after a barrier when every rank got there, at once after an error)."""
    import torch.distributed as dist

    quiet = open(os.devnull, "w") if not runtime.is_main else None
    try:
        with contextlib.redirect_stdout(quiet) if quiet else contextlib.nullcontext():
            yield
    except BaseException:
        if runtime.owns_group and dist.is_initialized():
            dist.destroy_process_group()
        raise
    finally:
        if quiet is not None:
            quiet.close()
    if runtime.owns_group:
        from .distributed import leave_group

        leave_group()


def _plan_main_first(args: argparse.Namespace, runtime) -> TrainPlan:
    """`plan_train` on rank 0 first (it may build the playground), then on the other ranks."""
    from .distributed import barrier

    if not runtime.is_main:
        barrier()
    try:
        plan = plan_train(args)
    except ValueError as err:
        raise _usage_error(err) from None
    if runtime.is_main:
        barrier()
    return plan


def run_train(args: argparse.Namespace) -> int:
    from ..quiet import quiet_third_party
    from .resume import ResumeError
    from .trainer import DenseTrainRun, UsageError

    quiet_third_party()  # known third-party warnings that would repeat in long runs
    runtime = _runtime(args, "train")
    with _session(runtime):
        plan = _plan_main_first(args, runtime)
        try:
            return DenseTrainRun(args, plan, runtime).run()
        except (UsageError, ResumeError) as err:
            raise _usage_error(err) from None


# --------------------------------------------------------------------------- eval, predict


def run_eval(args: argparse.Namespace) -> int:
    """Metrics of a checkpoint; sharded over processes under torchrun (rank 0 prints / writes)."""
    runtime = _runtime(args, "eval")
    with _session(runtime):
        return _evaluate_checkpoint(args, runtime)


def _evaluate_checkpoint(args: argparse.Namespace, runtime) -> int:
    from .checkpoint import load_dense_model
    from .engine import evaluate

    model, payload = load_dense_model(args.checkpoint, trunk_path=args.backbone)
    info = payload.get("info", {})
    task = model.task
    preset = task.preset_from_dict(info.get("opts", {}))
    if args.eval_mode:
        if "eval_mode" not in preset.to_dict():
            raise SystemExit(f"vitsplit-vlm dense eval: error: --eval-mode: {task.name} has none")
        preset = preset.override({"eval_mode": args.eval_mode})
    data = args.data or Path(info["data"])
    norm = payload["normalization"]
    val_set = _load_eval_split(task, data, preset, norm["mean"], norm["std"])
    cfg = eval_config(task, preset, first_size(val_set), max_images=args.max_eval_images)
    metrics = evaluate(model, val_set, cfg, runtime=runtime)
    if runtime.distributed:
        print(f"evaluated in {runtime.world_size} processes ({runtime.device.type})")
    text = json.dumps(_jsonable(metrics), indent=1)
    print(json.dumps(_summary(metrics)))
    if args.out and runtime.is_main:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from .datasets import SkipLog
    from .predict import SharedTrunkPredictor, list_images, predict_folder

    paths = (
        [args.checkpoint] if args.checkpoint else [Path(p) for p in args.adapters.split(",") if p]
    )
    predictor = SharedTrunkPredictor.from_checkpoints(paths, trunk_path=args.backbone)
    scale = args.scale
    if scale is None:
        recorded = predictor.adapters[0].info.get("test_scale")
        scale = tuple(recorded) if recorded else None
    images, skips = list_images(args.images), SkipLog()
    written = predict_folder(predictor, images, args.out, scale=scale, skips=skips)
    print(f"{len(written)} overlay(s) in {args.out} (trunk layers {list(predictor.layers)}); "
          f"{skips.summary()}")  # fmt: skip
    return 1 if images and skips.total == len(images) else 0


def _summary(metrics: dict) -> dict:
    keep = {k: v for k, v in metrics.items() if not isinstance(v, (list, dict))}
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in keep.items()}


def _jsonable(obj):
    return json.loads(
        json.dumps(obj, default=lambda o: list(o) if isinstance(o, tuple) else str(o))
    )


ACTIONS = {"train": run_train, "eval": run_eval, "predict": run_predict}


def run(args: argparse.Namespace) -> int:
    _set_threads(args)
    return ACTIONS[args.action](args)
