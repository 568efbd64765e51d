"""`vitsplit-vlm convert`: checkpoints of the LLaVA family in, llava-hf out.

    vitsplit-vlm convert --from official-vitsplit SRC --out DIR [--vision-tower PATH]
    vitsplit-vlm convert --from llava SRC --out DIR [--vision-tower PATH]
    vitsplit-vlm convert --from llava-hf SRC --out DIR
    vitsplit-vlm convert --to llava-hf SRC --out DIR        # mlp2x_gelu models only

Sources (`sources.py` reads them):

- ``official-vitsplit``: the official ViT-Split LLaVA code (a LLaVA fork), ``mm_projector_type
  vitsplit``; its list ``mm_vision_select_layer``, ``mm_frozen_select_layer`` and
  ``mm_tuned_layers_num`` become a `ViTSplitConfig` (`sources.official_split_config`).
- ``llava``: LLaVA-1.5 (``LlavaLlamaForCausalLM``, ``mlp2x_gelu`` or ``linear``).
- ``llava-hf``: transformers' ``LlavaForConditionalGeneration`` folders (either key layout).

The vision tower comes from the checkpoint when it holds one, else from ``--vision-tower`` (a
local copy of the tower the config names, e.g. ``openai/clip-vit-large-patch14-336``), which also
gives the tower's config and image processor when the checkpoint has only weights. The tokenizer
gets ``<image>`` and the embeddings grow as the model builder does (`builder.assemble_vlm`);
it splits text as LLaVA's ``tokenizer_image_token`` does (`sources.read_tokenizer`). The output
is a model folder with its processor, like a stage-2 output, plus ``conversion_report.json``:
every source key used, renamed, ignored (and why) or taken from ``--vision-tower``.

``--to llava-hf`` writes a folder that plain transformers loads with
``LlavaForConditionalGeneration`` / ``AutoProcessor`` (no import of this package).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .checkpoints import KeyReport

SOURCES = ("official-vitsplit", "llava", "llava-hf")
TARGETS = ("llava-hf",)
REPORT = "conversion_report.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    way = parser.add_mutually_exclusive_group(required=True)
    way.add_argument("--from", dest="source", choices=SOURCES, help="convert SRC into this project")
    way.add_argument("--to", dest="target", choices=TARGETS, help="convert this project's SRC out")
    parser.add_argument("src", type=Path, help="checkpoint folder to convert")
    parser.add_argument("--out", type=Path, required=True, help="new folder to write")
    parser.add_argument(
        "--vision-tower",
        type=Path,
        help="vision tower folder (config, image processor; weights when SRC has none)",
    )
    parser.add_argument(
        "--image-aspect-ratio",
        choices=("pad", "square"),
        help="override the source's image handling (LLaVA-1.5 pads to a square)",
    )


def run(args: argparse.Namespace) -> int:
    try:
        check_out(args.out)
        if args.target:
            if args.vision_tower or args.image_aspect_ratio:
                raise ValueError("--vision-tower / --image-aspect-ratio are for --from only")
            from .export_hf import export_llava_hf

            report = export_llava_hf(args.src, args.out)
        else:
            report = convert(
                args.source,
                args.src,
                args.out,
                vision_tower=args.vision_tower,
                image_aspect_ratio=args.image_aspect_ratio,
            )
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"vitsplit-vlm convert: {err}") from err
    way = f"--to {args.target}" if args.target else f"--from {args.source}"
    print(f"converted {args.src} ({way}) -> {args.out}: {report.summary()} (see {REPORT})")
    return 0


def check_out(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"--out {out} is not empty: choose a new folder")


def convert(
    source: str,
    src: str | Path,
    out: str | Path,
    *,
    vision_tower: str | Path | None = None,
    image_aspect_ratio: str | None = None,
) -> KeyReport:
    """Convert the `source`-layout checkpoint `src` into a model folder `out`; returns the report.

    Every refusal (unknown layout, shape or connector mismatch, missing tower) is one
    `ValueError` naming the key, shape or flag and what to do.
    """
    from .builder import assemble_vlm, load_connector_weights
    from .readers import READERS

    src, out = Path(src), Path(out)
    if source not in READERS:
        raise ValueError(f"--from {source!r} is unknown; choose one of {', '.join(READERS)}")
    if not (src / "config.json").is_file():
        raise FileNotFoundError(f"{src}: no config.json (pass the checkpoint folder itself)")
    read = READERS[source](src, vision_tower=vision_tower)
    built = assemble_vlm(
        llm=read.llm,
        tower=read.tower,
        tokenizer=read.tokenizer,
        image_processor=read.image_processor,
        mm_projector_type=read.projector_type,
        mm_vision_select_layer=read.feature_layer,
        vitsplit_config=read.vitsplit_config,
        conv_template="vicuna_v1",
        image_aspect_ratio=image_aspect_ratio or read.image_aspect_ratio,
        dtype=read.dtype,
    )
    load_connector_weights(built.model, read.connector_weights, source=str(src))
    built.model.save_pretrained(out)
    built.processor.save_pretrained(out)
    write_report(out, read.report, source=source, src=src)
    return read.report


def write_report(out: Path, report: KeyReport, **about: object) -> None:
    data = {key: str(value) for key, value in about.items()} | report.to_dict()
    (out / REPORT).write_text(json.dumps(data, indent=2) + "\n")
