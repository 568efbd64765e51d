"""Trunk truncation: the frozen trunk stopping at the deepest hidden state the heads read vs
running every block (what ``output_hidden_states=True`` on the whole model costs).

Both sides run `vitsplit_vlm.core.trunk.frozen_hidden_states` (the function the VLM's
`get_image_features` and the dense `ViTSplit` call) on the same random pixels, with the layers
the connector / dense model reads (`required_layers`) or with the last layer; rounds alternate
(A B A B ...), and each side's time is the median over rounds (a small trunk repeats its forward
within one measurement, so that each lasts at least half a second). Configurations: LLaVA-1.5's
connector on CLIP ViT-L/14-336 (reads up to the penultimate state: one block of 24 skipped) and
dense ViT-Split-S on DINOv2-S at 512 (its prior head reads the last block: nothing to skip, the
ratio shows the measurement's noise). ``--quick``: the playground's tiny CLIP and DINOv2 instead.

    python benchmarks/truncation.py --out benchmarks/results/truncation.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

MIN_SECONDS = 0.5  # the shortest timed measurement (small trunks repeat their forward)


def _towers(quick: bool, folder: Path, tiny=None) -> list[tuple[str, object, tuple[int, ...], int]]:
    """(name, vision model, required layers, input side) of each configuration."""
    import torch
    from transformers import AutoModel

    from vitsplit_vlm.core import ViTSplitConfig
    from vitsplit_vlm.core.presets import backbone_config
    from vitsplit_vlm.core.trunk import trunk_spec
    from vitsplit_vlm.vlm.configuration import connector_preset

    torch.manual_seed(0)
    if quick:
        from vitsplit_vlm.playground.tiny import make_tiny

        tiny = tiny or make_tiny(folder / "tiny")
        clip, dino = AutoModel.from_pretrained(tiny.clip), AutoModel.from_pretrained(tiny.dinov2)
        clip = getattr(clip, "vision_model", clip)
        sides = (trunk_spec(clip).image_size, 112)
        names = ("tiny CLIP, LLaVA-1.5 connector", "tiny DINOv2, dense ViT-Split")
    else:
        clip = AutoModel.from_config(backbone_config("clip-l-336"))
        dino = AutoModel.from_config(backbone_config("dinov2-s"))
        sides = (336, 518)  # 512 crops padded to 37 patches, as dense training
        names = ("CLIP ViT-L/14-336, LLaVA-1.5 connector", "DINOv2-S, dense ViT-Split-S seg")
    llava = connector_preset("vitsplit", feature_layer=-2).resolve(trunk_spec(clip).num_blocks)
    dense = ViTSplitConfig(k=3, n=4, s=2).resolve(trunk_spec(dino).num_blocks)
    return [
        (names[0], clip.eval(), llava.required_layers, sides[0]),
        (names[1], dino.eval(), dense.required_layers, sides[1]),
    ]


def measure(
    model, layers: tuple[int, ...], side: int, *, batch: int, rounds: int, device: str
) -> dict:
    import torch

    from vitsplit_vlm.core.trunk import frozen_hidden_states, trunk_spec

    spec = trunk_spec(model)
    model.to(device)
    pixels = torch.randn(batch, spec.num_channels, side, side, device=device)
    sides = {"needed": tuple(layers), "full": (spec.num_blocks,)}

    def once(wanted, repeat: int = 1) -> float:
        """Seconds per forward, averaged over `repeat` forwards."""
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeat):
            frozen_hidden_states(model, pixels, wanted)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / repeat

    # warm-up; a small trunk repeats its forward so that one measurement lasts >= MIN_SECONDS
    repeat = max(1, math.ceil(MIN_SECONDS / min(once(w) for w in sides.values())))
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(rounds):
        for name, wanted in sides.items():
            times[name].append(once(wanted, repeat))
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    out = {
        "blocks_run": {"needed": max(layers), "full": spec.num_blocks},
        "required_layers": list(layers),
        "input": [batch, spec.num_channels, side, side],
        "forwards_per_measurement": repeat,
        "seconds_median": medians,
        "seconds": times,
        "speedup": round(medians["full"] / medians["needed"], 4),
        "block_ratio_ceiling": round(spec.num_blocks / max(layers), 4),
    }
    if device.startswith("cuda"):
        out["cuda_max_memory_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    model.to("cpu")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the tiny trunks instead")
    parser.add_argument("--tiny", type=Path, default=None,
                        help="--quick: a make-tiny folder to reuse (default: build one)")  # fmt: skip
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if present)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/truncation.json"))
    args = parser.parse_args(argv)
    import tempfile

    import torch

    torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    results = []
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        tiny = None
        if args.tiny is not None:
            from vitsplit_vlm.playground.tiny import make_tiny

            tiny = make_tiny(args.tiny)  # a no-op where the models are current
        for name, model, layers, side in _towers(args.quick, Path(tmp), tiny):
            record = {"config": name, **measure(model, layers, side, batch=args.batch,
                                                rounds=args.rounds, device=device)}  # fmt: skip
            results.append(record)
            print(f"{name}: needed {record['seconds_median']['needed']:.3f} s, full "
                  f"{record['seconds_median']['full']:.3f} s -> {record['speedup']:.2f}x", flush=True)  # fmt: skip
    report = {"setup": {"quick": args.quick, "batch": args.batch, "rounds": args.rounds,
                        "device": device, "threads": args.threads}, "results": results}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
