"""`vitsplit-vlm dense {train,eval,predict}`: dense prediction on a frozen trunk.

    vitsplit-vlm dense train --task seg --preset playground  # tiny DINOv2 + playground sets
    vitsplit-vlm dense train --task seg --backbone PATH --data ADEChallengeData2016 \\
        --k 3 --n 4 --s 2 --method vitsplit --out runs/ade-s
    vitsplit-vlm dense eval --checkpoint runs/ade-s/checkpoint.pt [--data ROOT]
    vitsplit-vlm dense predict --checkpoint runs/ade-s/checkpoint.pt --images DIR --out preds/
    vitsplit-vlm dense predict --adapters seg.pt,depth.pt,det.pt --images DIR --out preds/

``dense train`` needs ``--backbone`` and ``--data``, except with ``--preset playground``, which
fills a missing one with the tiny DINOv2 of ``make-tiny`` (built if missing) or the task's
playground set of ``make-data dense`` (generated if missing) and prints which it used.
Hyper-parameters come from the task's preset (`vitsplit_vlm.dense.tasks`): the paper's recipe
on real data, a few-minute CPU run on playground sets (``--preset auto`` tells them apart from
the data); every flag given overrides one value. The ViT-Split settings start from the paper's
layers for the task and trunk, and each `ViTSplitConfig` flag (`vitsplit_vlm.core.flags`)
overrides one field. Task flags come from the registered tasks; a task rejects another's.
"""

from __future__ import annotations

import argparse
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
    dense_spec,
    eval_config,
    first_size,
    normalization,
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
    p.add_argument("--seed", type=int, default=0, help="head init, shuffling and augmentation")
    p.add_argument("--log-every", type=int, default=50, help="log a JSON line every N steps")
    _add_common(p)


def _add_schedule(p: argparse.ArgumentParser) -> None:
    """Flags of the fields every task's `Preset` has."""
    preset = "default: the task's preset"
    g = p.add_argument_group("training recipe", f"Each flag overrides one value ({preset}).")
    g.add_argument("--iters", type=int, help="optimiser steps")
    g.add_argument("--batch-size", type=int, help="images per step")
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


def _load_split(
    task: DenseTask,
    data: Path,
    split: str,
    preset: Preset,
    mean,
    std,
    *,
    train: bool,
    seed: int = 0,
    action: str = "train",
):
    """`build_dataset`, with a wrong layout or an unusable set as one line naming the cause."""
    try:
        return build_dataset(task, data, split, preset, mean, std, train=train, seed=seed)
    except ValueError as err:
        raise _usage_error(err, action) from None


def _build_model(args: argparse.Namespace, plan: TrainPlan, train_set):
    """(model, trunk reference) through `dense_spec`, the factory benchmarks share."""
    import torch

    from .checkpoint import TrunkRef, fingerprint, load_trunk
    from .model import DenseModel

    trunk = load_trunk(plan.backbone)
    try:
        spec, origin = dense_spec(
            plan.task, args.method, trunk.config, plan.preset, overrides=flags.overrides(args),
            num_classes=getattr(train_set, "num_classes", None),
            class_names=getattr(train_set, "class_names", None),
        )  # fmt: skip
    except ValueError as err:
        raise _usage_error(err) from None
    if args.method == "vitsplit":
        cfg = spec.split
        print(f"layers: k={cfg.k} n={cfg.n} s={cfg.s} ({origin} unless given as flags)")
    c = trunk.config
    ref = TrunkRef(str(plan.backbone), fingerprint(trunk), c.model_type, c.num_hidden_layers,
                   c.hidden_size)  # fmt: skip
    torch.manual_seed(args.seed)
    return DenseModel(trunk, spec), ref


def _train_config(args: argparse.Namespace, preset: Preset):
    from .engine import TrainConfig

    return TrainConfig(
        iters=preset.iters, batch_size=preset.batch_size, lr=preset.lr,
        weight_decay=preset.weight_decay, task_head_lr_mult=args.task_head_lr_mult,
        schedule=preset.schedule, warmup_iters=preset.warmup_iters, grad_clip=preset.grad_clip,
        checkpoint_head=args.checkpoint_head, num_workers=args.workers, seed=args.seed,
        log_every=args.log_every,
    )  # fmt: skip


def run_train(args: argparse.Namespace) -> int:
    from .checkpoint import save_checkpoint
    from .engine import evaluate, train
    from .model import count_parameters

    try:
        plan = plan_train(args)
    except ValueError as err:
        raise _usage_error(err) from None
    task, preset, data, out = plan.task, plan.preset, plan.data, plan.out
    out.mkdir(parents=True, exist_ok=True)
    mean, std = normalization(plan.backbone)
    train_set = _load_split(task, data, "train", preset, mean, std, train=True, seed=args.seed)
    model, ref = _build_model(args, plan, train_set)
    cfg = _train_config(args, preset)
    params = count_parameters(model)
    val_set = eval_cfg = untrained = None
    if args.eval_untrained or not args.no_eval:
        val_set = _load_split(task, data, "val", preset, mean, std, train=False)
        eval_cfg = eval_config(task, preset, first_size(val_set), max_images=args.max_eval_images)
    if args.eval_untrained:  # the baseline for "metrics improve over the untrained model"
        untrained = evaluate(model, val_set, eval_cfg)
        print(f"untrained: {json.dumps(_summary(untrained))}")
    print(f"{task.name} / {args.method} on {plan.backbone} ({ref.fingerprint}); data {data} "
          f"({plan.kind})")  # fmt: skip
    print(f"trainable parameters: {json.dumps(params)}")
    with open(out / "train_log.jsonl", "w") as log_file:

        def log(line: str) -> None:
            print(line)
            log_file.write(line + "\n")
            log_file.flush()

        result = train(model, train_set, cfg, log=log)
    print(result.skips.summary())
    opts = {**preset.to_dict(), "max_eval_images": args.max_eval_images}
    info = {
        "data": str(data), "task": task.name, "train": cfg.__dict__, "opts": _jsonable(opts),
        "test_scale": preset.scale, "steps": result.steps, "seconds": round(result.seconds, 1),
        "first_loss": result.first_loss, "last_loss": result.last_loss,
        "skipped": result.skips.as_dict(), "params": params,
    }  # fmt: skip
    if untrained is not None:
        info["eval_untrained"] = untrained
    ckpt = save_checkpoint(out / "checkpoint.pt", model, trunk=ref, mean=mean, std=std, info=info)
    print(f"checkpoint: {ckpt}")
    if not args.no_eval:
        metrics = evaluate(model, val_set, eval_cfg)
        info["eval"] = metrics
        print(json.dumps(_summary(metrics)))
    (out / "metrics.json").write_text(json.dumps(_jsonable(info), indent=1) + "\n")
    return 0


# --------------------------------------------------------------------------- eval, predict


def run_eval(args: argparse.Namespace) -> int:
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
    val_set = _load_split(
        task, data, "val", preset, norm["mean"], norm["std"], train=False, action="eval"
    )
    cfg = eval_config(task, preset, first_size(val_set), max_images=args.max_eval_images)
    metrics = evaluate(model, val_set, cfg)
    text = json.dumps(_jsonable(metrics), indent=1)
    print(json.dumps(_summary(metrics)))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from .predict import SharedTrunkPredictor, list_images, predict_folder

    paths = (
        [args.checkpoint] if args.checkpoint else [Path(p) for p in args.adapters.split(",") if p]
    )
    predictor = SharedTrunkPredictor.from_checkpoints(paths, trunk_path=args.backbone)
    scale = args.scale
    if scale is None:
        recorded = predictor.adapters[0].info.get("test_scale")
        scale = tuple(recorded) if recorded else None
    written = predict_folder(predictor, list_images(args.images), args.out, scale=scale)
    print(f"{len(written)} overlay(s) in {args.out} (trunk layers {list(predictor.layers)})")
    return 0


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
