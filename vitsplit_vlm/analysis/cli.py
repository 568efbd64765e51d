"""`vitsplit-vlm analyze {cka,feature-maps}`: the paper's evidence (Figs. 3-4) on any backbone.

    vitsplit-vlm analyze cka                                   # tiny DINOv2, scikit-image photos
    vitsplit-vlm analyze cka --backbone PATH --images DIR --out runs/cka --tokens patch
    vitsplit-vlm analyze feature-maps --checkpoint runs/dense/seg-vitsplit/checkpoint.pt
    vitsplit-vlm analyze feature-maps --model-path checkpoints/vitsplit-tiny

Without ``--backbone`` the tiny DINOv2 of ``make-tiny`` is used: the briefly pretrained one
(``make-tiny --pretrain``) when it exists, since a random ViT has no layer hierarchy, else the
random one (built if missing). Without ``--images``: the photos scikit-image ships.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from vitsplit_vlm.commands import Command, add_subcommands, run_subcommand

from .layer_cka import TOKEN_MODES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_subcommands(parser, ACTIONS, dest="action")


def run(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(max(1, args.threads or int(os.environ.get("OMP_NUM_THREADS", "1"))))
    try:
        return run_subcommand(args, ACTIONS, dest="action")
    except ValueError as err:
        raise SystemExit(f"vitsplit-vlm analyze {args.action}: error: {err}") from None


def _add_common(p: argparse.ArgumentParser, out: str, max_images: int | None = None) -> None:
    p.add_argument(
        "--images", type=Path, default=None,
        help="a folder of images (or one image); default: the photos scikit-image ships",
    )  # fmt: skip
    p.add_argument(
        "--max-images", type=int, default=max_images,
        help="use the first N images (default: %s)" % (max_images or "all"),
    )  # fmt: skip
    p.add_argument(
        "--out", type=Path, default=Path(out), help="output folder (default %(default)s)"
    )
    p.add_argument("--device", default="auto", help="auto (CUDA when visible), cpu, cuda:0, ...")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


# ---- cka ------------------------------------------------------------------------------------


def add_cka_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--backbone", type=Path, default=None,
        help="Hugging Face vision model folder (CLIP / SigLIP / DINOv2 / ViT, or any AutoModel "
        "with hidden states); default: the tiny DINOv2",
    )  # fmt: skip
    p.add_argument(
        "--tokens", default="patch", choices=tuple(TOKEN_MODES),
        help="what one example is: " + "; ".join(f"{k}: {v}" for k, v in TOKEN_MODES.items()),
    )  # fmt: skip
    p.add_argument("--batch-size", type=int, default=8, help="images per minibatch (default 8)")
    p.add_argument(
        "--tokens-per-image", type=int, default=None,
        help="--tokens patch: keep this many random patch positions per image (bounds memory: "
        "the Gram matrices take layers x (batch x tokens)^2 x 8 bytes)",
    )  # fmt: skip
    p.add_argument("--include-embeddings", action="store_true", help="add layer 0 (embeddings)")
    p.add_argument("--seed", type=int, default=0, help="seed of --tokens-per-image's positions")
    _add_common(p, "runs/analysis/cka")


def run_cka(args: argparse.Namespace) -> int:
    from .inputs import image_source, load_backbone, pick_device
    from .layer_cka import run_layer_cka
    from .plots import cka_heatmap

    images = image_source(args.images, limit=args.max_images)
    backbone = load_backbone(args.backbone or default_backbone(), pick_device(args.device))
    layers = backbone.num_blocks + int(args.include_embeddings)
    print(
        f"CKA of {layers} layers of {backbone.path} over {len(images)} image(s) from "
        f"{images.origin}, --tokens {args.tokens}; Gram matrices per batch: "
        f"{_per_batch_memory(args, backbone, layers)}"
    )
    with _bar(len(images), args.no_progress) as bar:
        result = run_layer_cka(
            backbone, images, tokens=args.tokens, batch_size=args.batch_size,
            tokens_per_image=args.tokens_per_image, include_embeddings=args.include_embeddings,
            seed=args.seed, progress=bar.update,
        )  # fmt: skip
        bar.update(len(result.skipped))  # unreadable files count as handled
    args.out.mkdir(parents=True, exist_ok=True)
    record = result.to_json(
        backbone=_shown(backbone.path),
        model_type=backbone.model.config.model_type,
        images=images.origin,
        batch_size=args.batch_size,
        tokens_per_image=args.tokens_per_image,
    )
    (args.out / "cka.json").write_text(json.dumps(record, indent=1) + "\n")
    title = f"{Path(backbone.path).name}: linear CKA, {result.images} images, {args.tokens} tokens"
    cka_heatmap(result.matrix.numpy(), result.layers, title, args.out / "cka.png")
    _report_skipped(result.skipped)
    print(
        f"{result.images} images, {result.examples} examples in {result.batches} batches -> "
        f"{args.out / 'cka.json'}, {args.out / 'cka.png'}"
    )
    return 0


def _shown(path: str) -> str:
    """`path` relative to the working folder when inside it (no machine paths in the JSON)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _report_skipped(skipped: list[str]) -> None:
    if skipped:
        print(f"skipped {len(skipped)} unreadable image(s), e.g. {skipped[0]}")


def _per_batch_memory(args, backbone, layers: int) -> str:
    """The Gram matrices of one minibatch, from the model's configured image size."""
    from .layer_cka import gram_bytes

    size = getattr(backbone.model.config, "image_size", None)
    per_image = 1
    if args.tokens == "patch" and isinstance(size, int):
        per_image = (size // backbone.patch_size) ** 2
        per_image = min(per_image, args.tokens_per_image or per_image)
    elif args.tokens == "patch":
        return "unknown (no image_size in the config)"
    examples = args.batch_size * per_image
    return f"{examples} examples, {gram_bytes(layers, examples) / 2**20:.1f} MiB"


def default_backbone() -> Path:
    """The tiny DINOv2: the pretrained one if `make-tiny --pretrain` wrote it, else the random
    one (built now if missing); says which."""
    from vitsplit_vlm.playground import paths

    if (paths.TINY_DINOV2_PRETRAINED / "config.json").is_file():
        print(f"--backbone {paths.TINY_DINOV2_PRETRAINED} (the briefly pretrained tiny DINOv2)")
        return paths.TINY_DINOV2_PRETRAINED
    if not (paths.TINY_DINOV2 / "config.json").is_file():
        from vitsplit_vlm.playground.tiny import make_tiny

        make_tiny(paths.TINY)
    print(
        f"--backbone {paths.TINY_DINOV2} (the random tiny DINOv2: its layers barely differ; "
        "`vitsplit-vlm make-tiny --pretrain` builds one with a layer hierarchy)"
    )
    return paths.TINY_DINOV2


# ---- feature-maps ---------------------------------------------------------------------------

DENSE_PLAYGROUND_CHECKPOINT = Path("runs/dense/seg-vitsplit/checkpoint.pt")  # dense train's default


def add_feature_map_arguments(p: argparse.ArgumentParser) -> None:
    from .feature_maps import REDUCTIONS

    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--checkpoint", type=Path, default=None,
        help="a dense checkpoint (`vitsplit-vlm dense train`): its task head beside its trunk; "
        f"default {DENSE_PLAYGROUND_CHECKPOINT} when it exists",
    )  # fmt: skip
    source.add_argument(
        "--model-path", type=Path, default=None,
        help="a VLM model folder (stage 2 / merge-lora): its connector's task head",
    )  # fmt: skip
    p.add_argument(
        "--backbone", type=Path, default=None,
        help="the frozen trunk: alone (no task head), or where a checkpoint's trunk now lives",
    )  # fmt: skip
    p.add_argument(
        "--map", default="pca", choices=tuple(REDUCTIONS),
        help="one number per patch token: first principal component (pca), the first channel "
        "(channel0, the paper's), or the token norm",
    )  # fmt: skip
    p.add_argument(
        "--size", type=int, default=None,
        help="square input size, a multiple of the patch size (default: the model's own "
        "preprocessing); larger gives finer maps",
    )  # fmt: skip
    _add_common(p, "runs/analysis/feature-maps", max_images=4)


def run_feature_map_command(args: argparse.Namespace) -> int:
    from .feature_maps import run_feature_maps
    from .inputs import image_source, pick_device
    from .plots import map_grid

    images = image_source(args.images, limit=args.max_images)
    source = _task_head_source(args, pick_device(args.device))
    backbone = source.backbone if source else _frozen_only(args, pick_device(args.device))
    if args.size is not None:
        backbone.resize_to(args.size)
    print(f"feature maps ({args.map}) of {backbone.path}"
          f"{f' beside the task head of {source.label}' if source else ''}: {len(images)} image(s)")  # fmt: skip
    with _bar(len(images), args.no_progress) as bar:
        run = run_feature_maps(backbone, images, heads=source.heads if source else None,
                               reduce=args.map, progress=bar.update)  # fmt: skip
        bar.update(len(run.skipped))  # unreadable files count as handled
    args.out.mkdir(parents=True, exist_ok=True)
    record = {
        "backbone": _shown(backbone.path),
        "task_head": source.label if source else None,
        "map": args.map,
        "grid": list(run.images[0].frozen[run.layers[0]].shape),  # of the first image
        "layers": run.layers,
        "layer_index": "hidden_states index: i = output of block i (task head: of its copy)",
        "task_head_layers": run.task_layers,
        "task_head_cka_with_frozen": {str(k): round(v, 6) for k, v in run.task_cka.items()},
        "images": [m.name for m in run.images],
        "images_skipped": run.skipped,
    }
    (args.out / "feature_maps.json").write_text(json.dumps(record, indent=1) + "\n")
    rows, thumbs = [], []
    for maps in run.images:
        rows.append((f"{maps.name}\nfrozen", [maps.frozen[i] for i in run.layers]))
        thumbs.append(maps.thumbnail)
        if source:
            rows.append(("task head", [maps.task.get(i) for i in run.layers]))
            thumbs.append(None)
    title = f"{Path(backbone.path).name}: {args.map} of patch tokens per layer"
    if source:
        title += f"; task head of {source.label}"
    png = map_grid(
        rows, [f"L{i}" for i in run.layers], thumbs, title, args.out / "feature_maps.png"
    )
    if run.task_cka:
        drift = ", ".join(f"L{k} {v:.3f}" for k, v in run.task_cka.items())
        print(f"task head vs frozen layer, linear CKA of patch tokens: {drift}")
    _report_skipped(run.skipped)
    print(f"{len(run.images)} image(s) -> {args.out / 'feature_maps.json'}, {png}")
    return 0


def _task_head_source(args: argparse.Namespace, device):
    from .feature_maps import load_dense_source, load_vlm_source

    if args.model_path is not None:
        if args.backbone is not None:
            raise ValueError(
                "--backbone: a VLM folder holds its own vision tower; give one of them"
            )
        return load_vlm_source(args.model_path, device=device)
    checkpoint = args.checkpoint
    if checkpoint is None and args.backbone is None and DENSE_PLAYGROUND_CHECKPOINT.is_file():
        checkpoint = DENSE_PLAYGROUND_CHECKPOINT
        print(f"--checkpoint {checkpoint} (the playground's dense seg run)")
    if checkpoint is None:
        return None
    if not checkpoint.is_file():
        raise ValueError(f"--checkpoint {checkpoint}: no such file")
    return load_dense_source(checkpoint, trunk_path=args.backbone, device=device)


def _frozen_only(args: argparse.Namespace, device):
    from .inputs import load_backbone

    backbone = load_backbone(args.backbone or default_backbone(), device)
    print("no --checkpoint / --model-path: frozen layers only")
    return backbone


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def _bar(total: int, disabled: bool):
    if disabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="images", unit="img")


ACTIONS: dict[str, Command] = {
    "cka": Command(
        "linear CKA between all layer pairs (paper Fig. 3): JSON + heat map",
        add_cka_arguments,
        run_cka,
    ),
    "feature-maps": Command(
        "per-layer feature maps, the frozen trunk beside a trained task head (paper Fig. 4)",
        add_feature_map_arguments,
        run_feature_map_command,
    ),
}
