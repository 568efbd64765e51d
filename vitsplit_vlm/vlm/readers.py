"""The three source layouts of `vitsplit-vlm convert`, one reader each (`READERS`).

The official ViT-Split LLaVA layout (``llava/model/multimodal_projector/vitsplit.py`` and
``multimodal_encoder/clip_encoder.py`` of its LLaVA fork) in terms of `ViTSplitConfig`:

- the tower hands the projector a list, the patch tokens (CLS dropped) of every hidden state in
  ``mm_vision_select_layer`` (e.g. ``[-18, ..., -1]``);
- ``tuned_head`` copies blocks ``N-k-1 .. N-2`` (``k = mm_tuned_layers_num``): they end at the
  penultimate state, so the feature layer is -2 (``f = N-1``), and they are fed list element
  ``-k-2``, which must be hidden state ``f-k``, the input of those blocks, as in this project;
- ``frozen_conv`` reads list elements ``mm_frozen_select_layer`` (indices into that list, e.g.
  ``[-2]``), concatenated in that order: the prior layers (`prior_layers`, block = hidden - 1);
- ``fusion_conv`` takes ``concat(frozen, tuned)`` (prior first, as `ViTSplitHeads`) to the LLM
  width.

So the official scripts' layout (a list ending at -1, frozen ``[-2]`` or ``[-3, -2]``, any k)
is exactly expressible with today's fields (k, n, prior_layers, task_input="patch",
feature_layer=-2, out_channels); other lists are refused with the reason.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..core import ViTSplitConfig
from ..core.trunk import trunk_spec
from .checkpoints import KeyReport, connector_keys, read_weights
from .configuration import ASPECT_RATIOS
from .sources import (
    HF_ROUTES,
    LLAVA_ARCHITECTURES,
    LLAVA_ONLY_KEYS,
    LLAVA_ONLY_PREFIXES,
    LLAVA_ROUTES,
    SourceModel,
    final_key,
    load_part,
    load_tower,
    read_tokenizer,
    route_weights,
    tower_config_and_processor,
)

# mm_projector_type -> the --from that reads it
PROJECTOR_SOURCES = {"vitsplit": "official-vitsplit", "mlp2x_gelu": "llava", "linear": "llava"}


def read_llava(src: Path, *, vision_tower: Path | None = None) -> SourceModel:
    """LLaVA-1.5 (``LlavaLlamaForCausalLM``, ``mm_projector_type`` mlp2x_gelu or linear)."""
    return _read_llava_family(src, vision_tower, official=False)


def read_official(src: Path, *, vision_tower: Path | None = None) -> SourceModel:
    """The official ViT-Split LLaVA code's checkpoints (``mm_projector_type vitsplit``)."""
    return _read_llava_family(src, vision_tower, official=True)


def _read_llava_family(src: Path, vision_tower: Path | None, *, official: bool) -> SourceModel:
    from transformers import LlamaConfig

    raw = json.loads((src / "config.json").read_text())
    projector = _check_llava_config(raw, src, official=official)
    report = KeyReport()
    parts = route_weights(read_weights(src), LLAVA_ROUTES, report, source=str(src))
    llm_keys = {k: v for k, v in raw.items() if not _llava_only(k)}
    if llm_keys.get("rope_scaling", False) is None:  # transformers 4.x's "no scaling"
        del llm_keys["rope_scaling"]
    text_config = LlamaConfig(**llm_keys)
    llm = load_part(text_config, parts["llm"], report, name="llm", source=str(src))
    vision_config, image_processor = tower_config_and_processor(
        raw.get("mm_vision_tower"), vision_tower, source=str(src)
    )
    tower = load_tower(vision_config, parts["tower"], vision_tower, report, source=str(src))
    spec = trunk_spec(tower)
    if raw.get("mm_hidden_size", spec.hidden_size) != spec.hidden_size:
        raise ValueError(
            f"{src}/config.json: mm_hidden_size {raw['mm_hidden_size']} but the vision tower is "
            f"{spec.hidden_size} wide; is --vision-tower the tower it was trained with?"
        )
    if official:
        split = official_split_config(raw, num_blocks=spec.num_blocks, source=f"{src}/config.json")
        feature_layer = split.feature_layer
    else:
        split, feature_layer = None, raw.get("mm_vision_select_layer", -1)
    return SourceModel(
        llm=llm,
        tower=tower,
        tokenizer=read_tokenizer(src, raw.get("tokenizer_model_max_length") or 2048, text_config),
        image_processor=image_processor,
        projector_type=projector,
        feature_layer=feature_layer,
        vitsplit_config=split,
        image_aspect_ratio=raw.get("image_aspect_ratio") or "square",
        connector_weights=_connector(parts["connector"], projector, report, source=str(src)),
        dtype=llm.dtype,
        report=report,
    )


def _llava_only(key: str) -> bool:
    return key in LLAVA_ONLY_KEYS or key.startswith(LLAVA_ONLY_PREFIXES)


def _check_llava_config(raw: dict, src: Path, *, official: bool) -> str:
    """The projector type, after refusing what this project does not implement."""
    where = f"{src}/config.json"
    architectures = raw.get("architectures") or []
    if "LlavaForConditionalGeneration" in architectures:
        raise ValueError(f"{where}: a transformers (llava-hf) checkpoint; use --from llava-hf")
    if not set(architectures) & set(LLAVA_ARCHITECTURES):
        raise ValueError(
            f"{where}: architectures {architectures}; --from llava / official-vitsplit read "
            f"LLaVA's {', '.join(LLAVA_ARCHITECTURES)} (a Llama / Vicuna LLM)"
        )
    projector = raw.get("mm_projector_type", "linear")  # LLaVA's default
    if projector not in PROJECTOR_SOURCES:
        raise ValueError(
            f"{where}: mm_projector_type {projector!r} has no counterpart here (convertible: "
            f"{', '.join(PROJECTOR_SOURCES)})"
        )
    if PROJECTOR_SOURCES[projector] != ("official-vitsplit" if official else "llava"):
        raise ValueError(
            f"{where}: mm_projector_type {projector!r}; convert it with "
            f"--from {PROJECTOR_SOURCES[projector]}"
        )
    for key, ok in (
        ("mm_use_im_start_end", (None, False)),
        ("mm_patch_merge_type", (None, "flat")),
        ("mm_vision_select_feature", (None, "patch")),
        ("image_aspect_ratio", (None, *ASPECT_RATIOS)),
    ):
        if raw.get(key) not in ok:
            raise ValueError(
                f"{where}: {key} {raw[key]!r} is not supported (LLaVA-1.5 uses {ok[-1]!r})"
            )
    return projector


def _connector(part: dict, projector: str, report: KeyReport, *, source: str) -> dict:
    """Connector weights under this project's names (LLaVA-format names mapped)."""
    if not part:
        raise ValueError(f"{source}: no projector weights (model.mm_projector.*)")
    names = connector_keys(list(part), projector, source=source)
    for key, (origin, _) in part.items():
        report.take(origin, final_key("connector", names[key]))
    return {names[k]: t for k, (_, t) in part.items()}


def official_split_config(raw: dict, *, num_blocks: int, source: str) -> ViTSplitConfig:
    """The `ViTSplitConfig` of an official ViT-Split LLaVA config (see the module docstring);
    `prior_layers` stays None when it equals the preset's choice, so the config is a native
    model's. ``out_channels`` is left to the model config (the LLM width)."""
    select = raw.get("mm_vision_select_layer")
    frozen = raw.get("mm_frozen_select_layer")
    k = raw.get("mm_tuned_layers_num")
    if not isinstance(select, list) or not all(isinstance(i, int) for i in select):
        raise ValueError(f"{source}: mm_vision_select_layer {select!r} should be a list of ints")
    if not isinstance(frozen, list) or not frozen or not isinstance(k, int) or k < 1:
        raise ValueError(
            f"{source}: mm_frozen_select_layer {frozen!r} / mm_tuned_layers_num {k!r}: this "
            "project implements the official projector with a tuned head (k >= 1) and frozen "
            "layers; its frozen-only / tuned-only ablations have other layers (proj, pad-0 convs)"
        )

    def hidden(position: int, what: str) -> int:
        """The HF hidden-state index (0..N) of mm_vision_select_layer[position]."""
        if not -len(select) <= position < len(select):
            raise ValueError(
                f"{source}: the official projector reads mm_vision_select_layer[{position}] for "
                f"the {what}, but the list has {len(select)} entries"
            )
        index = select[position]
        index = index if index >= 0 else num_blocks + 1 + index
        if not 0 <= index <= num_blocks:
            raise ValueError(
                f"{source}: mm_vision_select_layer has {select[position]}, outside 0..{num_blocks}"
            )
        return index

    task_input = hidden(-k - 2, "tuned head's input")
    if task_input != num_blocks - 1 - k:
        raise ValueError(
            f"{source}: the tuned head copies blocks {num_blocks - k - 1}..{num_blocks - 2} but is "
            f"fed hidden state {task_input} (mm_vision_select_layer[{-k - 2}]), not their input "
            f"{num_blocks - 1 - k}; this layout has no ViTSplitConfig equivalent"
        )
    prior = tuple(hidden(i, "frozen layers") - 1 for i in frozen)
    base = dict(k=k, n=len(frozen), feature_layer=-2)
    explicit = ViTSplitConfig.llava(prior_layers=prior, **base)
    try:
        resolved = explicit.resolve(num_blocks)
    except ValueError as err:
        raise ValueError(f"{source}: mm_frozen_select_layer {frozen} -> {err}") from err
    preset = ViTSplitConfig.llava(**base)
    try:
        same = preset.resolve(num_blocks) == resolved
    except ValueError:  # the preset's uniform choice does not fit: only explicit layers do
        same = False
    return preset if same else explicit


def read_llava_hf(src: Path, *, vision_tower: Path | None = None) -> SourceModel:
    """transformers' ``LlavaForConditionalGeneration`` folders (v4 or v5 key layout)."""
    from transformers import AutoProcessor, LlavaConfig

    if vision_tower is not None:
        raise ValueError("--vision-tower: a llava-hf folder holds its own vision tower")
    config = LlavaConfig.from_pretrained(src)
    problems = [
        f"{name} {value!r} (this project: {ok!r})"
        for name, value, ok in (
            ("projector_hidden_act", config.projector_hidden_act, "gelu"),
            ("multimodal_projector_bias", config.multimodal_projector_bias, True),
            ("vision_feature_select_strategy", config.vision_feature_select_strategy, "default"),
            ("vision_feature_layer type", type(config.vision_feature_layer).__name__, "int"),
        )
        if value != ok
    ]
    if problems:
        raise ValueError(
            f"{src}/config.json: not LLaVA-1.5's mlp2x_gelu connector: {'; '.join(problems)}"
        )
    report = KeyReport()
    parts = route_weights(read_weights(src), HF_ROUTES, report, source=str(src))
    llm = load_part(config.text_config, parts["llm"], report, name="llm", source=str(src))
    tower = load_part(config.vision_config, parts["tower"], report, name="tower", source=str(src))
    for key, (origin, _) in parts["connector"].items():
        report.take(origin, final_key("connector", key))
    image_processor = AutoProcessor.from_pretrained(src).image_processor
    return SourceModel(
        llm=llm,
        tower=tower,
        tokenizer=read_tokenizer(src, 2048, config),
        image_processor=image_processor,
        projector_type="mlp2x_gelu",
        feature_layer=config.vision_feature_layer,
        vitsplit_config=None,
        image_aspect_ratio="pad" if getattr(image_processor, "do_pad", False) else "square",
        connector_weights={k: t for k, (_, t) in parts["connector"].items()},
        dtype=llm.dtype,
        report=report,
    )


# --from value -> reader (explicit registry)
READERS = {
    "official-vitsplit": read_official,
    "llava": read_llava,
    "llava-hf": read_llava_hf,
}
