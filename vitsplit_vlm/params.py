"""`vitsplit-vlm params`: trainable parameters per component, built on the meta device.

The models are built by the factories training uses, with the defaults training uses: a dense
task is `DenseModel(trunk, spec)` with the `DenseSpec` of ``dense train`` (the task's paper layers
for DINOv2-S/B/L), the VLM connector is `build_connector` over a `ViTSplitLlavaConfig` holding the
connector's preset (the official LLaVA-1.5 layout for ``vitsplit``). ViT-Split flags
(``--k --n --s --components ...``, from `vitsplit_vlm.core.flags`) override single fields.
Reproduces the paper's counts (Tabs. 1, 3-6, 15) and the LLaVA-1.5 connector sizes; a task
reading several data sets (seg) takes ``--dataset`` for that data set's layers and classes:

    vitsplit-vlm params --backbone dinov2-s --task seg --json
    vitsplit-vlm params --backbone dinov2-l --task seg --dataset cityscapes
    vitsplit-vlm params --backbone clip-l-336 --task vlm --connector vitsplit --llm-hidden 4096
    vitsplit-vlm params --paper          # every row of the paper's tables, with the deltas
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .core import flags

if TYPE_CHECKING:
    from .dense.tasks import DenseTask, Preset

COMPONENT_KEYS = ("task_head", "prior_head", "fusion", "head")
VLM, NO_HEAD = "vlm", "none"


@dataclass(frozen=True)
class Row:
    """One row of the paper's tables: what to build and the reported count (millions)."""

    label: str
    backbone: str
    task: str
    paper_m: float
    split: Mapping[str, Any] = field(default_factory=dict)  # ViTSplitConfig overrides
    connector: str = "vitsplit"
    dataset: str | None = None  # a seg data set (its paper layers and classes); None: ADE20K
    component: str | None = None  # compare one component instead of the total
    tolerance_m: float = 0.05
    note: str = ""


_ABL = (), ("prior",), ("task",), ("prior", "task")  # Tab. 6: the head is always there
_S_NOTE = "paper rounds 3.2 + 6.6 - 1.2; its exact rows give 3.220 + 6.566 - 1.240 = 8.546"
PAPER_ROWS: tuple[Row, ...] = (
    Row("ViT-Split-S ADE20K seg", "dinov2-s", "seg", 10.2),
    Row("ViT-Split-B ADE20K seg", "dinov2-b", "seg", 40.5),
    Row("ViT-Split-L ADE20K seg", "dinov2-l", "seg", 88.6),
    Row("ViT-Split-B Cityscapes seg", "dinov2-b", "seg", 55.2, dataset="cityscapes"),  # Tab. 3
    Row("ViT-Split-L Cityscapes seg", "dinov2-l", "seg", 164.1, dataset="cityscapes"),
    Row("ViT-Split-B Pascal Context seg", "dinov2-b", "seg", 47.5, dataset="pascal_context"),
    Row("ViT-Split-L Pascal Context seg", "dinov2-l", "seg", 115.8, dataset="pascal_context"),
    Row("ViT-Split-S NYU depth", "dinov2-s", "depth", 9.3),
    Row("ViT-Split-L NYU depth", "dinov2-l", "depth", 65.5),
    Row("Tab.6 S head", "dinov2-s", "seg", 1.2, {"components": _ABL[0]}),
    Row("Tab.6 S prior+head", "dinov2-s", "seg", 3.2, {"components": _ABL[1]}),
    Row("Tab.6 S task+head", "dinov2-s", "seg", 6.6, {"components": _ABL[2]}),
    Row(
        "Tab.6 S prior+task+head",
        "dinov2-s",
        "seg",
        8.6,
        {"components": _ABL[3]},
        tolerance_m=0.06,
        note=_S_NOTE,
    ),
    Row("Tab.6 B head", "dinov2-b", "seg", 4.84, {"components": _ABL[0]}),
    Row("Tab.6 B prior+head", "dinov2-b", "seg", 12.6, {"components": _ABL[1]}),
    Row("Tab.6 B task+head", "dinov2-b", "seg", 26.1, {"components": _ABL[2]}),
    Row("Tab.6 B prior+task+head", "dinov2-b", "seg", 33.9, {"components": _ABL[3]}),
    Row("LLaVA-1.5 vitsplit connector", "clip-l-336", VLM, 182.5),
    Row("  task block", "clip-l-336", VLM, 12.6, component="task_head"),
    Row("  prior head", "clip-l-336", VLM, 10.5, component="prior_head"),
    Row("  fusion", "clip-l-336", VLM, 159.4, component="fusion"),
    Row("LLaVA-1.5 mlp2x_gelu", "clip-l-336", VLM, 21.0, connector="mlp2x_gelu"),
)


def tasks() -> tuple[str, ...]:
    from .dense.tasks import TASKS

    return (*TASKS, VLM, NO_HEAD)


def data_sets() -> tuple[str, ...]:
    """Every ``--dataset`` name of the dense tasks that read several data sets."""
    from .dense.tasks import TASKS

    return tuple(dict.fromkeys(name for task in TASKS.values() for name in task.data_sets))


def count(
    *,
    backbone: str,
    task: str,
    connector: str = "vitsplit",
    classes: int | None = None,
    dataset: str | None = None,
    llm_hidden: int = 4096,
    **split: Any,
) -> dict:
    """`{"trainable", "components": {task_head, prior_head, fusion, head}, "layers"}`, built on
    the meta device (no weights allocated). `split`: `ViTSplitConfig` fields to override;
    `dataset`: the data set of a task reading several (its paper layers; its class count unless
    `classes` is given; else 150)."""
    from .core.presets import backbone_config

    if task not in tasks():
        raise ValueError(f"--task must be one of {tasks()}, got {task!r}")
    vision = backbone_config(backbone)
    if task == VLM:
        if dataset is not None:
            raise ValueError(f"--dataset: --task {VLM} reads no dense data set")
        groups, layers = _vlm_groups(vision, connector, llm_hidden, split)
    else:
        groups, layers = _dense_groups(vision, task, classes, dataset, split)
    counts = {key: groups.get(key, 0) for key in COMPONENT_KEYS}
    return {"trainable": sum(counts.values()), "components": counts, "layers": layers}


def _numel(module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad) if module else 0


def _describe(cfg) -> str:
    return f"k={cfg.k} n={cfg.n} s={cfg.s} components={','.join(cfg.components) or '-'}"


def _real_preset(task: str, dataset: str | None) -> tuple[DenseTask, Preset]:
    """(the task, its ``real`` preset for `dataset`) as ``dense train --preset real`` picks them."""
    from .dense.tasks import get_task

    dense = get_task(task)
    if dataset is not None and dataset not in dense.data_sets:
        reads = f"one of {', '.join(dense.data_sets)}" if dense.data_sets else "one data set"
        raise ValueError(f"--dataset {dataset}: --task {task} reads {reads}")
    return dense, dense.preset_for("real", {"dataset": dataset})


def _dense_groups(
    vision, task: str, classes: int | None, dataset: str | None, split: Mapping
) -> tuple[dict, str]:
    """A dense task's `DenseModel` as ``dense train`` builds it, or (``none``) the heads alone."""
    import torch

    from .core import ViTSplit
    from .dense.model import DenseModel, count_parameters
    from .dense.recipes import dense_spec, split_config

    dense, preset = _real_preset("seg" if task == NO_HEAD else task, dataset)
    with torch.device("meta"):
        trunk = _trunk(vision)
        if task == NO_HEAD:
            cfg, origin = split_config(
                dense, "vitsplit", vision.num_hidden_layers, vision.hidden_size, split,
                preset=preset,
            )  # fmt: skip
            groups = {g: sum(p.numel() for p in ps) for g, ps in ViTSplit(trunk, cfg).trainable_groups().items()}  # fmt: skip
            return groups, f"{_describe(cfg)} ({origin})"
        classes = classes or getattr(preset, "num_classes", None) or 150
        spec, origin = dense_spec(
            dense, "vitsplit", vision, preset, overrides=split, num_classes=classes
        )
        counts = count_parameters(DenseModel(trunk, spec))
    counts.pop("total")
    return counts, f"{_describe(spec.split)} ({origin})"


def _vlm_groups(vision, connector: str, llm_hidden: int, split: Mapping) -> tuple[dict, str]:
    """The LLaVA connector `build_connector` makes for a `ViTSplitLlavaConfig`."""
    import torch
    from transformers import LlamaConfig

    from .vlm.configuration import ViTSplitLlavaConfig, connector_preset
    from .vlm.connector import build_connector

    preset = connector_preset(connector)
    if preset is None and split:
        given = ", ".join("--" + name.replace("_", "-") for name in split)
        raise ValueError(f"{given}: --connector {connector} has no ViT-Split settings")
    config = ViTSplitLlavaConfig(
        vision_config=vision.to_dict(),
        text_config=LlamaConfig(hidden_size=llm_hidden, num_hidden_layers=1).to_dict(),
        mm_projector_type=connector,
        vitsplit_config=preset.with_(**split) if preset is not None else None,
    )
    with torch.device("meta"):
        module = build_connector(config, _trunk(vision))
    heads = getattr(module, "heads", None)
    groups = {"head": _numel(module.proj)}
    if heads is None:
        return groups, _baseline_layers(config, vision)
    groups.update({name: _numel(getattr(heads, name)) for name in COMPONENT_KEYS[:3]})
    return groups, f"{_describe(config.vitsplit)} (preset of --connector {connector})"


def _baseline_layers(config, vision) -> str:
    """What a LLaVA-side connector reads, and how many image tokens it gives the LLM."""
    from .vlm.configuration import dci_halves, extra_image_tokens, hidden_index

    kind, layers = config.mm_projector_type, config.mm_projector_layers
    grid = (vision.image_size // vision.patch_size) ** 2
    tokens = f"{grid + extra_image_tokens(kind, grid)} image tokens"
    if kind == "vipllava":
        return f"vipllava on hidden states {', '.join(map(str, layers))}; {tokens}"
    reads = f"{kind} on the feature layer {config.vision_feature_layer}"
    if kind == "dc_dci":  # the two halves of hidden states 0 .. f, averaged
        low, high = dci_halves(hidden_index(config.vision_feature_layer, vision.num_hidden_layers))
        reads += f" and the means of hidden states {low[0]}-{low[-1]} and {high[0]}-{high[-1]}"
    elif layers:
        reads += f" and hidden states {', '.join(map(str, layers))}"
    return f"{reads}; {tokens}"


def _trunk(vision):
    from transformers import AutoModel

    return AutoModel.from_config(vision)


def paper_report() -> list[dict]:
    """Every row of `PAPER_ROWS` with our count and the paper's."""
    rows = []
    for row in PAPER_ROWS:
        result = count(
            backbone=row.backbone, task=row.task, connector=row.connector, dataset=row.dataset,
            **row.split,
        )  # fmt: skip
        ours = result["components"][row.component] if row.component else result["trainable"]
        rows.append(
            {
                "label": row.label,
                "ours_m": round(ours / 1e6, 3),
                "paper_m": row.paper_m,
                "delta_m": round(ours / 1e6 - row.paper_m, 3),
                "ours": ours,
                "ok": abs(ours / 1e6 - row.paper_m) <= row.tolerance_m,
                "note": row.note,
            }
        )
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .vlm.configuration import PROJECTOR_TYPES

    parser.add_argument(
        "--backbone",
        default="dinov2-s",
        help="preset (dinov2-s/b/l/g, clip-l-336) or a HF config folder",
    )
    parser.add_argument(
        "--task",
        default="seg",
        choices=tasks(),
        help="a dense task (with its head), the LLaVA connector, or none (the ViT-Split parts)",
    )
    parser.add_argument(
        "--classes", type=int, default=None, help="seg / det classes (default: --dataset's, or 150)"
    )
    parser.add_argument(
        "--dataset",
        default=None,
        choices=data_sets(),
        help="the data set of a task reading several (seg; default ade20k): its paper layers "
        "and classes",
    )
    parser.add_argument("--connector", default="vitsplit", choices=PROJECTOR_TYPES)
    parser.add_argument("--llm-hidden", type=int, default=4096, help="the LLM width (--task vlm)")
    parser.add_argument(
        "--paper", action="store_true", help="check every row of the paper's tables"
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    flags.add_arguments(
        parser, preset_note="default: the task's, as training builds it (paper layers for dense)"
    )


def run(args: argparse.Namespace) -> int:
    if args.paper:
        rows = paper_report()
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            print(f"{'row':<30} {'ours (M)':>9} {'paper (M)':>9} {'delta':>7}  ok")
            for r in rows:
                note = f"  ({r['note']})" if r["note"] else ""
                print(
                    f"{r['label']:<30} {r['ours_m']:>9.3f} {r['paper_m']:>9.2f} "
                    f"{r['delta_m']:>+7.3f}  {'yes' if r['ok'] else 'NO'}{note}"
                )
        return 0 if all(r["ok"] for r in rows) else 1
    try:
        result = count(
            backbone=args.backbone,
            task=args.task,
            connector=args.connector,
            classes=args.classes,
            dataset=args.dataset,
            llm_hidden=args.llm_hidden,
            **flags.overrides(args),
        )
    except ValueError as err:  # a bad flag or config: one line, no traceback
        print(f"vitsplit-vlm params: error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"layers: {result['layers']}")
    for name, value in result["components"].items():
        print(f"{name:<11} {value:>14,d}  ({value / 1e6:.3f}M)")
    print(f"{'trainable':<11} {result['trainable']:>14,d}  ({result['trainable'] / 1e6:.3f}M)")
    return 0
