"""Readers of LLaVA-family checkpoints for `vitsplit-vlm convert`: each returns the loaded parts
(`SourceModel`) that `builder.assemble_vlm` turns into this project's model.

Key layouts (routes below, first match wins; anything else is refused by name):

================  =========================================  ==========================
source            source keys                                 part (its own names)
================  =========================================  ==========================
llava, official   ``model.mm_projector.*``                    connector (`connector_keys`)
                  ``model.vision_tower.vision_tower.``        vision tower
                  ``vision_model.*``
                  ``model.*``, ``lm_head.*``                  causal LM (same names)
llava-hf          ``[model.]multi_modal_projector.linear_1``  connector ``proj.0`` / ``proj.2``
                  / ``linear_2``
                  ``[model.]vision_tower.*``,                 vision tower
                  ``vision_tower.vision_model.*`` (hub, v4)
                  ``language_model.{model,lm_head}.*`` (as    causal LM ``model.*`` /
                  saved), ``model.language_model.*`` /       ``lm_head.*``
                  ``lm_head.*`` (module names)
================  =========================================  ==========================

transformers 5 saves Llava under its v4 names except the tower's ``vision_model.`` level;
llava-hf/llava-1.5-7b-hf on the Hub has that level too; either loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..core import ViTSplitConfig
from ..core.trunk import unwrap_vision_model
from .checkpoints import KeyReport

# keys dropped on purpose, by suffix, with the reason the report gives
IGNORED = (
    (".rotary_emb.inv_freq", "rotary frequencies: a buffer transformers recomputes"),
    ("embeddings.position_ids", "position ids: a buffer transformers recomputes"),
    ("model.image_newline", "used only by mm_patch_merge_type 'unpad' (LLaVA-NeXT); 'flat' here"),
)
# LLaVA's own config.json keys (llava/train/train.py, llava_arch.py), not the LLM's
LLAVA_ONLY_KEYS = ("architectures", "model_type", "_name_or_path", "transformers_version")
LLAVA_ONLY_PREFIXES = ("mm_", "tune_mm", "freeze_mm", "unfreeze_mm", "tokenizer_", "use_mm")
LLAVA_ONLY_PREFIXES += ("image_aspect_ratio", "image_grid_pinpoints")
LLAVA_ARCHITECTURES = ("LlavaLlamaForCausalLM",)


@dataclass(frozen=True)
class Route:
    """Source keys under `source` belong to `part`, renamed to start with `target`."""

    source: str
    part: str
    target: str


LLAVA_ROUTES = (
    Route("model.mm_projector.", "connector", ""),
    Route("model.vision_tower.vision_tower.vision_model.", "tower", ""),
    Route("model.", "llm", "model."),
    Route("lm_head.", "llm", "lm_head."),
)
HF_ROUTES = (
    Route("model.multi_modal_projector.linear_1.", "connector", "proj.0."),
    Route("model.multi_modal_projector.linear_2.", "connector", "proj.2."),
    Route("multi_modal_projector.linear_1.", "connector", "proj.0."),
    Route("multi_modal_projector.linear_2.", "connector", "proj.2."),
    Route("model.vision_tower.", "tower", ""),
    Route("vision_tower.vision_model.", "tower", ""),
    Route("vision_tower.", "tower", ""),
    Route("model.language_model.", "llm", "model."),
    Route("language_model.model.", "llm", "model."),
    Route("language_model.lm_head.", "llm", "lm_head."),
    Route("lm_head.", "llm", "lm_head."),
)


@dataclass
class SourceModel:
    """A source checkpoint, loaded: what `builder.assemble_vlm` and the connector need."""

    llm: nn.Module  # causal LM at the source's vocabulary size
    tower: nn.Module
    tokenizer: Any
    image_processor: Any
    projector_type: str
    feature_layer: int
    vitsplit_config: ViTSplitConfig | None
    image_aspect_ratio: str
    connector_weights: dict[str, torch.Tensor]  # connector names (``proj.0.weight``, ...)
    dtype: torch.dtype
    report: KeyReport


# --------------------------------------------------------------------------- keys


def final_key(part: str, key: str) -> str:
    """A part's key -> its name in `ViTSplitLlavaForConditionalGeneration`."""
    if part == "llm":
        return "model.language_model." + key[len("model.") :] if key.startswith("model.") else key
    return {"tower": "model.vision_tower.", "connector": "model.multi_modal_projector."}[part] + key


def route_weights(
    weights: dict[str, torch.Tensor], routes: tuple[Route, ...], report: KeyReport, *, source: str
) -> dict[str, dict[str, tuple[str, torch.Tensor]]]:
    """``{part: {part key: (source key, tensor)}}``; ignored keys go to `report`, unknown keys
    are one `ValueError` naming them."""
    parts: dict[str, dict[str, tuple[str, torch.Tensor]]] = {r.part: {} for r in routes}
    unknown = []
    for key, value in weights.items():
        reason = next((why for suffix, why in IGNORED if key.endswith(suffix)), None)
        route = next((r for r in routes if key.startswith(r.source)), None)
        if reason is not None:
            report.ignored[key] = reason
        elif route is None:
            unknown.append(key)
        else:
            parts[route.part][route.target + key[len(route.source) :]] = (key, value)
    if unknown:
        raise ValueError(
            f"{source}: {len(unknown)} keys fit no part of this layout, e.g. {sorted(unknown)[:4]} "
            f"(known prefixes: {', '.join(r.source for r in routes)}); is it the right --from?"
        )
    return parts


def load_part(
    config, part: dict[str, tuple[str, torch.Tensor]], report: KeyReport, *, name: str, source: str
) -> nn.Module:
    """The transformers model of `config` (causal LM or vision model) holding exactly `part`:
    a missing, unexpected or differently shaped key is one `ValueError` naming it."""
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_MAPPING

    mapping = MODEL_FOR_CAUSAL_LM_MAPPING if name == "llm" else MODEL_MAPPING
    cls = mapping[type(config)]
    with torch.device("meta"):
        expected = {k: v.shape for k, v in cls(config).state_dict().items()}
    given = {k: t.shape for k, (_, t) in part.items()}
    missing, unexpected = sorted(set(expected) - set(given)), sorted(set(given) - set(expected))
    shapes = [
        f"{part[k][0]}: {tuple(given[k])} but the {name} config needs {tuple(expected[k])}"
        for k in sorted(set(given) & set(expected))
        if given[k] != expected[k]
    ]
    if missing or unexpected or shapes:
        raise ValueError(
            f"{source}: the {name} weights do not fit its config ({type(config).__name__}): "
            f"missing {missing[:4]}, unexpected {[part[k][0] for k in unexpected[:4]]}, "
            f"shape mismatches {shapes[:4]}"
            + (
                " (is it the tower --vision-tower / mm_vision_tower names?)"
                if name == "tower"
                else ""
            )
        )
    for key, (origin, _) in part.items():
        report.take(origin, final_key(name, key))
    weights = {k: t for k, (_, t) in part.items()}
    dtype = next(iter(weights.values())).dtype
    return cls.from_pretrained(None, config=config, state_dict=weights, dtype=dtype)


# --------------------------------------------------------------------------- towers

# Towers LLaVA configs name by hub id: their config and image processor, known without a download.
KNOWN_TOWERS = {"openai/clip-vit-large-patch14-336": ("clip-l-336", 336)}


def tower_config_and_processor(name: str | None, vision_tower: Path | None, *, source: str):
    """(vision config, image processor) from ``--vision-tower`` or a `KNOWN_TOWERS` name."""
    from transformers import AutoConfig, AutoImageProcessor, CLIPImageProcessor

    if vision_tower is not None:
        config = AutoConfig.from_pretrained(vision_tower)
        config = getattr(config, "vision_config", None) or config
        return config, AutoImageProcessor.from_pretrained(vision_tower)
    if name in KNOWN_TOWERS:
        from ..core.presets import backbone_config

        preset, size = KNOWN_TOWERS[name]
        crop = {"height": size, "width": size}
        return backbone_config(preset), CLIPImageProcessor(
            size={"shortest_edge": size}, crop_size=crop
        )
    raise ValueError(
        f"{source}: the vision tower {name!r} is not one this converter knows "
        f"({', '.join(KNOWN_TOWERS)}); pass --vision-tower PATH, a local copy of it"
    )


def load_tower(
    config, part: dict, vision_tower: Path | None, report: KeyReport, *, source: str
) -> nn.Module:
    """The tower from the checkpoint's weights, else the whole ``--vision-tower`` model."""
    from transformers import AutoModel

    if part:
        return load_part(config, part, report, name="tower", source=source)
    if vision_tower is None:
        raise ValueError(
            f"{source} holds no vision tower weights (LLaVA-1.5 checkpoints do not): pass "
            "--vision-tower PATH, a local copy of the tower its config names (mm_vision_tower)"
        )
    tower = unwrap_vision_model(AutoModel.from_pretrained(vision_tower))
    for key in tower.state_dict():
        report.added[final_key("tower", key)] = f"--vision-tower {vision_tower}"
    return tower


def read_tokenizer(folder: Path, model_max_length: int, config):
    """The source's tokenizer, splitting text as LLaVA's ``tokenizer_image_token`` does.

    LLaVA tokenizes the text around each ``<image>`` separately (llava/mm_utils.py), so the text
    after an image starts a new sentencepiece text (``"\\n"`` -> ``"▁"``, ``"<0x0A>"``). This
    project tokenizes the whole prompt once; a Llama tokenizer with ``legacy=True`` puts the same
    ``"▁"`` after every special token, which gives LLaVA's ids for its prompts.
    """
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(
        folder,
        config=config,  # the source's own config.json may name a model type transformers lacks
        legacy=True,
        model_max_length=model_max_length,
        padding_side="right",
    )
