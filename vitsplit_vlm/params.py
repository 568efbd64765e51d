"""`vitsplit-vlm params`: trainable parameters per component, built on the meta device.

Reproduces the paper's trainable-parameter counts (Tabs. 1, 4-6) and the LLaVA-1.5 connector sizes:

    vitsplit-vlm params --backbone dinov2-s --task seg --k 3 --n 4 --s 2 --classes 150 --json
    vitsplit-vlm params --backbone clip-l-336 --task vlm --connector vitsplit --llm-hidden 4096
    vitsplit-vlm params --paper          # every row of the paper's tables, with the deltas
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

COMPONENT_KEYS = ("task_head", "prior_head", "fusion", "head")
CONNECTORS = ("vitsplit", "vitsplit_dense", "mlp2x_gelu", "linear")
TASKS = ("seg", "depth", "vlm", "none")


@dataclass(frozen=True)
class Row:
    """One row of the paper's tables: arguments and the reported trainable count (millions)."""

    label: str
    backbone: str
    task: str
    paper_m: float
    k: int = 3
    n: int = 4
    s: int | None = 2
    classes: int = 150
    components: tuple[str, ...] = ("prior", "task", "fusion", "head")
    connector: str = "vitsplit"
    llm_hidden: int = 4096
    component: str | None = None  # compare one component instead of the total
    tolerance_m: float = 0.05
    note: str = ""


_ABL = ("head",), ("prior", "head"), ("task", "head"), ("prior", "task", "head")
_S_NOTE = "paper rounds 3.2 + 6.6 - 1.2; its exact rows give 3.220 + 6.566 - 1.240 = 8.546"
PAPER_ROWS: tuple[Row, ...] = (
    Row("ViT-Split-S ADE20K seg", "dinov2-s", "seg", 10.2),
    Row("ViT-Split-B ADE20K seg", "dinov2-b", "seg", 40.5),
    Row("ViT-Split-L ADE20K seg", "dinov2-l", "seg", 88.6, k=4, n=8),
    Row("ViT-Split-S NYU depth", "dinov2-s", "depth", 9.3),
    Row("ViT-Split-L NYU depth", "dinov2-l", "depth", 65.5, s=6),
    Row("Tab.6 S head", "dinov2-s", "seg", 1.2, components=_ABL[0]),
    Row("Tab.6 S prior+head", "dinov2-s", "seg", 3.2, components=_ABL[1]),
    Row("Tab.6 S task+head", "dinov2-s", "seg", 6.6, components=_ABL[2]),
    Row(
        "Tab.6 S prior+task+head",
        "dinov2-s",
        "seg",
        8.6,
        components=_ABL[3],
        tolerance_m=0.06,
        note=_S_NOTE,
    ),
    Row("Tab.6 B head", "dinov2-b", "seg", 4.84, components=_ABL[0]),
    Row("Tab.6 B prior+head", "dinov2-b", "seg", 12.6, components=_ABL[1]),
    Row("Tab.6 B task+head", "dinov2-b", "seg", 26.1, components=_ABL[2]),
    Row("Tab.6 B prior+task+head", "dinov2-b", "seg", 33.9, components=_ABL[3]),
    Row("LLaVA-1.5 vitsplit connector", "clip-l-336", "vlm", 182.5, k=1, n=1, s=None),
    Row("  task block", "clip-l-336", "vlm", 12.6, k=1, n=1, s=None, component="task_head"),
    Row("  prior head", "clip-l-336", "vlm", 10.5, k=1, n=1, s=None, component="prior_head"),
    Row("  fusion", "clip-l-336", "vlm", 159.4, k=1, n=1, s=None, component="fusion"),
    Row("LLaVA-1.5 mlp2x_gelu", "clip-l-336", "vlm", 21.0, connector="mlp2x_gelu"),
)


def count(
    *,
    backbone: str,
    task: str,
    k: int = 3,
    n: int = 4,
    s: int | None = 2,
    classes: int = 150,
    components: tuple[str, ...] = ("prior", "task", "fusion", "head"),
    connector: str = "vitsplit",
    llm_hidden: int = 4096,
    selection: str = "uniform",
) -> dict:
    """`{"trainable": int, "components": {task_head, prior_head, fusion, head}}` (no weights allocated)."""
    import torch

    from .core import ViTSplitConfig, ViTSplitHeads
    from .core.presets import backbone_config, build_on_meta
    from .core.trunk import trunk_blocks, trunk_final_norm, trunk_spec

    if task not in TASKS:
        raise ValueError(f"--task must be one of {TASKS}, got {task!r}")
    if connector not in CONNECTORS:
        raise ValueError(f"--connector must be one of {CONNECTORS}, got {connector!r}")
    trunk = build_on_meta(backbone_config(backbone))
    spec = trunk_spec(trunk)
    C = spec.hidden_size
    counts = dict.fromkeys(COMPONENT_KEYS, 0)

    def numel(module) -> int:
        return sum(p.numel() for p in module.parameters() if p.requires_grad) if module else 0

    with torch.device("meta"):
        if task == "vlm" and connector in ("mlp2x_gelu", "linear"):
            from .vlm.projectors import mlp_projector

            counts["head"] = numel(
                mlp_projector(C, llm_hidden, 2 if connector == "mlp2x_gelu" else 1)
            )
            return {"trainable": sum(counts.values()), "components": counts}
        split = tuple(c for c in components if c != "head")
        if task == "vlm" and connector == "vitsplit":
            cfg = ViTSplitConfig.llava(
                llm_hidden, k=k, n=n, s=s, components=split, selection=selection
            )
        else:
            cfg = ViTSplitConfig(k=k, n=n, s=s, components=split, selection=selection)
        heads = ViTSplitHeads(
            cfg, spec, blocks=trunk_blocks(trunk), final_norm=trunk_final_norm(trunk)
        )
        counts["task_head"] = numel(heads.task_head)
        counts["prior_head"] = numel(heads.prior_head)
        counts["fusion"] = numel(heads.fusion)
        if heads.prior_head is not None and heads.prior_head.gate is not None:
            counts["prior_head"] = numel(heads.prior_head)  # gate scores are part of the prior head
        if "head" in components:
            counts["head"] = numel(
                _downstream_head(task, connector, heads.out_channels, classes, llm_hidden)
            )
    return {"trainable": sum(counts.values()), "components": counts}


def _downstream_head(task: str, connector: str, channels: int, classes: int, llm_hidden: int):
    if task == "seg":
        from .dense.heads import SegHead

        return SegHead(channels, classes)
    if task == "depth":
        from .dense.heads import DepthHead

        return DepthHead(channels)
    if task == "vlm" and connector == "vitsplit_dense":
        from .vlm.projectors import mlp_projector

        return mlp_projector(channels, llm_hidden, 2)
    return None


def paper_report() -> list[dict]:
    """Every row of `PAPER_ROWS` with our count and the paper's."""
    rows = []
    for row in PAPER_ROWS:
        result = count(
            backbone=row.backbone,
            task=row.task,
            k=row.k,
            n=row.n,
            s=row.s,
            classes=row.classes,
            components=row.components,
            connector=row.connector,
            llm_hidden=row.llm_hidden,
        )
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
    parser.add_argument(
        "--backbone",
        default="dinov2-s",
        help="preset (dinov2-s/b/l/g, clip-l-336) or a HF config folder",
    )
    parser.add_argument("--task", default="seg", choices=TASKS)
    parser.add_argument("--k", type=int, default=3, help="blocks copied into the task head")
    parser.add_argument("--n", type=int, default=4, help="frozen layers read by the prior head")
    parser.add_argument("--s", type=int, default=None, help="first prior block (uniform selection)")
    parser.add_argument("--selection", default="uniform", choices=("uniform", "sparse_gate"))
    parser.add_argument("--classes", type=int, default=150)
    parser.add_argument(
        "--components",
        default="prior,task,fusion,head",
        help="subset of prior,task,fusion,head (paper Tab. 6 ablations)",
    )
    parser.add_argument("--connector", default="vitsplit", choices=CONNECTORS)
    parser.add_argument("--llm-hidden", type=int, default=4096)
    parser.add_argument(
        "--paper", action="store_true", help="check every row of the paper's tables"
    )
    parser.add_argument("--json", action="store_true", help="print JSON")


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
    s = args.s
    if s is None and args.task != "vlm":
        s = 2
    components = tuple(c.strip() for c in args.components.split(",") if c.strip())
    result = count(
        backbone=args.backbone,
        task=args.task,
        k=args.k,
        n=args.n,
        s=s,
        classes=args.classes,
        components=components,
        connector=args.connector,
        llm_hidden=args.llm_hidden,
        selection=args.selection,
    )
    if args.json:
        print(json.dumps(result))
    else:
        for name, value in result["components"].items():
            print(f"{name:<11} {value:>14,d}  ({value / 1e6:.2f}M)")
        print(f"{'trainable':<11} {result['trainable']:>14,d}  ({result['trainable'] / 1e6:.2f}M)")
    return 0
