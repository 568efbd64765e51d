"""`vitsplit-vlm dense {train,eval,predict}`: dense prediction on a frozen trunk.

    vitsplit-vlm dense train --task seg                      # embedded: tiny DINOv2 + playground
    vitsplit-vlm dense train --task seg --backbone PATH --data ADEChallengeData2016 \\
        --k 3 --n 4 --s 2 --method vitsplit --out runs/ade-s
    vitsplit-vlm dense eval --checkpoint runs/ade-s/checkpoint.pt [--data ROOT]
    vitsplit-vlm dense predict --checkpoint runs/ade-s/checkpoint.pt --images DIR --out preds/
    vitsplit-vlm dense predict --adapters seg.pt,depth.pt,det.pt --images DIR --out preds/

Without ``--backbone`` the tiny DINOv2 of ``make-tiny`` (``playground/tiny/dinov2``) is used and
built if missing; without ``--data`` the playground sets of ``make-data dense``
(``playground/data/dense/{ade,nyu,coco}``) are used and generated if missing. Hyper-parameters
default to the paper's recipe on real data (`PRESETS`) and to a few-minute CPU run on playground
sets (``--preset auto`` tells them apart; `vitsplit_vlm.dense.recipes`); every one can be
overridden.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from .recipes import (
    TASK_SETS,
    build_dataset,
    eval_config,
    first_size,
    layer_defaults,
    normalization,
    preset_kind,
    resolve_backbone,
    resolve_data,
    settings,
)


def _pair(text: str) -> tuple[int, int]:
    parts = [int(v) for v in text.replace("x", ",").split(",")]
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected N or H,W, got {text!r}")
    return parts[0], parts[1]


def _floats(text: str) -> tuple[float, float]:
    a, b = (float(v) for v in text.split(","))
    return a, b


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
    p.add_argument("--task", required=True, choices=tuple(TASK_SETS))
    p.add_argument("--backbone", type=Path, default=None, help="HF vision model folder")
    p.add_argument("--data", type=Path, default=None, help="data set root in its public layout")
    p.add_argument(
        "--out", type=Path, default=None, help="run folder (default runs/dense/TASK-METHOD)"
    )
    p.add_argument(
        "--preset",
        default="auto",
        choices=("auto", "real", "playground"),
        help="hyper-parameter defaults: the paper's recipe or a few-minute CPU run (auto: "
        "playground for sets written by make-data dense)",
    )
    p.add_argument(
        "--method",
        default="vitsplit",
        choices=("vitsplit", "linear", "full"),
        help="vitsplit: frozen trunk + heads; linear: frozen last layer + head; full: fine-tune all",
    )
    layers = "default: the paper's for the task on DINOv2-S/B/L, else 3 / 4 / 2 (PAPER_LAYERS)"
    p.add_argument(
        "--k", type=int, default=None,
        help=f"blocks copied into the task head (seg S/B 3, L 4; depth 3/4/3; det 11/11/23; {layers})",
    )  # fmt: skip
    p.add_argument(
        "--n", type=int, default=None,
        help=f"frozen layers read by the prior head (seg 4, L 8; det 5/5/8; {layers})",
    )  # fmt: skip
    p.add_argument("--s", type=int, default=None, help=f"first prior block (uniform; {layers})")
    p.add_argument(
        "--selection",
        default="uniform",
        choices=("uniform", "sparse_gate"),
        help="prior layers: uniform from --s, or a learned top-n gate over all blocks",
    )
    p.add_argument("--components", default="prior,task,fusion", help="subset of prior,task,fusion")
    p.add_argument(
        "--deform-offset-init",
        default="zero",
        choices=("zero", "default"),
        help="deformable conv offsets: zero (plain 3x3 at start) or PyTorch's default init",
    )
    p.add_argument(
        "--num-classes", type=int, default=None, help="seg: default objectInfo*.csv or 150"
    )
    preset = "default: the task's preset, see PRESETS"
    p.add_argument("--iters", type=int, help=f"optimiser steps ({preset})")
    p.add_argument("--batch-size", type=int, help=f"images per step ({preset})")
    p.add_argument("--lr", type=float, help=f"AdamW base lr ({preset})")
    p.add_argument("--weight-decay", type=float, help=f"AdamW weight decay ({preset})")
    p.add_argument(
        "--task-head-lr-mult", type=float, default=0.1,
        help="task head lr = lr x this (paper 0.1; random tiny trunks may want 1)",
    )  # fmt: skip
    p.add_argument("--schedule", choices=("poly", "onecycle", "step", "constant"), help=preset)
    p.add_argument("--warmup-iters", type=int, help=f"linear warmup steps ({preset})")
    p.add_argument("--grad-clip", type=float, help="max grad norm (0 = off)")
    p.add_argument(
        "--eval-untrained", action="store_true",
        help="also evaluate the model before training (metrics.json: eval_untrained)",
    )  # fmt: skip
    p.add_argument(
        "--checkpoint-head", action="store_true",
        help="seg/depth: recompute the head's upsampling in backward (less memory, ~5%% compute)",
    )  # fmt: skip
    p.add_argument("--crop-size", type=_pair, help="training crop N or H,W")
    p.add_argument("--scale", type=_pair, help="resize scale LONG,SHORT (seg/det)")
    p.add_argument("--ratio-range", type=_floats, help="det: random rescale range, e.g. 0.8,1.25")
    p.add_argument("--roi-batch", type=int, help="det: RoIs sampled per image (COCO 512)")
    p.add_argument("--max-depth", type=float, default=10.0, help="depth: metres (loss / metrics)")
    p.add_argument("--depth-scale", type=float, default=1000.0, help="depth PNG units per metre")
    p.add_argument("--eval-mode", choices=("whole", "slide"), help="seg inference (window = crop)")
    p.add_argument("--eval-stride", type=_pair, help="seg: sliding-window stride N or H,W")
    p.add_argument(
        "--eval-crop",
        default="auto",
        choices=("auto", "none", "eigen"),
        help="depth: NYU Eigen crop (auto: when images are 480x640)",
    )
    p.add_argument("--max-eval-images", type=int, default=None, help="evaluate on the first N")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation after training")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--seed", type=int, default=0, help="head init, shuffling and augmentation")
    p.add_argument("--log-every", type=int, default=50, help="log a JSON line every N steps")
    _add_common(p)


def _add_eval(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--data", type=Path, default=None, help="default: the data the run used")
    p.add_argument("--backbone", type=Path, default=None, help="default: the recorded trunk path")
    p.add_argument(
        "--eval-mode", choices=("whole", "slide"), help="seg inference (default: the run's)"
    )
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
        "--scale", type=_pair, default=None, help="resize LONG,SHORT (default: the run's)"
    )
    _add_common(p)


# --------------------------------------------------------------------------- setup


def _set_threads(args: argparse.Namespace) -> None:
    import torch

    n = args.threads or int(os.environ.get("OMP_NUM_THREADS", "1"))
    torch.set_num_threads(max(1, n))


# --------------------------------------------------------------------------- actions


def run_train(args: argparse.Namespace) -> int:
    import torch

    from .checkpoint import TrunkRef, fingerprint, load_trunk, save_checkpoint
    from .engine import TrainConfig, evaluate, train
    from .model import DenseModel, DenseSpec, count_parameters

    backbone = resolve_backbone(args.backbone).resolve()
    data = resolve_data(args.task, args.data).resolve()
    kind = preset_kind(args.preset, data)
    opts = settings(args, kind)
    opts.update(max_depth=args.max_depth, depth_scale=args.depth_scale, eval_crop=args.eval_crop,
                max_eval_images=args.max_eval_images)  # fmt: skip
    out = args.out or Path("runs/dense") / f"{args.task}-{args.method}"
    out.mkdir(parents=True, exist_ok=True)
    mean, std = normalization(backbone)
    train_set = build_dataset(args.task, data, "train", opts, mean, std, train=True, seed=args.seed,
                              num_classes=args.num_classes)  # fmt: skip
    num_classes = getattr(train_set, "num_classes", None)
    extra = {}
    if args.task == "det":
        extra["rcnn"] = {"box_batch_size_per_image": opts["roi_batch"], **opts.get("rcnn", {})}
    trunk = load_trunk(backbone)
    (k, n, s), origin = layer_defaults(
        args.task, trunk.config.num_hidden_layers, trunk.config.hidden_size
    )
    k, n, s = (args.k or k), (args.n or n), (s if args.s is None else args.s)
    if args.method == "vitsplit":
        print(f"layers: k={k} n={n} s={s} ({origin} unless given as flags)")
    spec = DenseSpec(
        task=args.task, method=args.method, k=k, n=n, s=s, selection=args.selection,
        components=tuple(c for c in args.components.split(",") if c),
        deform_offset_init=args.deform_offset_init, num_classes=num_classes,
        class_names=getattr(train_set, "class_names", None), max_depth=args.max_depth, extra=extra,
    )  # fmt: skip
    ref = TrunkRef(str(backbone), fingerprint(trunk), trunk.config.model_type,
                   trunk.config.num_hidden_layers, trunk.config.hidden_size)  # fmt: skip
    torch.manual_seed(args.seed)
    model = DenseModel(trunk, spec)
    cfg = TrainConfig(
        iters=opts["iters"], batch_size=opts["batch_size"], lr=opts["lr"],
        weight_decay=opts["weight_decay"], task_head_lr_mult=args.task_head_lr_mult,
        schedule=opts["schedule"], warmup_iters=opts["warmup_iters"], grad_clip=opts["grad_clip"],
        checkpoint_head=args.checkpoint_head, num_workers=args.workers, seed=args.seed,
        log_every=args.log_every,
    )  # fmt: skip
    params = count_parameters(model)
    val_set = eval_cfg = untrained = None
    if args.eval_untrained or not args.no_eval:
        val_set = build_dataset(args.task, data, "val", opts, mean, std, train=False)
        eval_cfg = eval_config(args.task, opts, first_size(val_set))
    if args.eval_untrained:  # the baseline for "metrics improve over the untrained model"
        untrained = evaluate(model, val_set, eval_cfg)
        print(f"untrained: {json.dumps(_summary(untrained))}")
    print(f"{args.task} / {args.method} on {backbone} ({ref.fingerprint}); data {data} ({kind})")
    print(f"trainable parameters: {json.dumps(params)}")
    with open(out / "train_log.jsonl", "w") as log_file:

        def log(line: str) -> None:
            print(line)
            log_file.write(line + "\n")
            log_file.flush()

        result = train(model, train_set, cfg, log=log)
    print(result.skips.summary())
    info = {
        "data": str(data), "task": args.task, "train": cfg.__dict__, "opts": _jsonable(opts),
        "test_scale": opts.get("scale"), "steps": result.steps, "seconds": round(result.seconds, 1),
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


def run_eval(args: argparse.Namespace) -> int:
    from .checkpoint import load_dense_model
    from .engine import evaluate

    model, payload = load_dense_model(args.checkpoint, trunk_path=args.backbone)
    info = payload.get("info", {})
    opts = dict(info.get("opts", {}))
    for key in ("crop_size", "scale", "eval_stride"):
        if opts.get(key) is not None:
            opts[key] = tuple(opts[key])
    if args.eval_mode:
        opts["eval_mode"] = args.eval_mode
    opts["max_eval_images"] = args.max_eval_images
    data = args.data or Path(info["data"])
    norm = payload["normalization"]
    task = model.spec.task
    val_set = build_dataset(task, data, "val", opts, norm["mean"], norm["std"], train=False)
    metrics = evaluate(model, val_set, eval_config(task, opts, first_size(val_set)))
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


def run(args: argparse.Namespace) -> int:
    _set_threads(args)
    return {"train": run_train, "eval": run_eval, "predict": run_predict}[args.action](args)
