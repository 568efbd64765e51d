"""`ViTSplitLlavaConfig`: transformers' `LlavaConfig` plus the connector choice.

- `mm_projector_type` (LLaVA's flag name) picks the connector: `PROJECTOR_TYPES`.
- `vitsplit_config` holds the connector's `ViTSplitConfig`, nested the way `vision_config` is:
  a `ViTSplitConfig` object in memory, its `to_dict()` in `config.json`. It exists only for the
  ViT-Split connectors; when not given it is the connector's preset (`connector_preset`), so
  `ViTSplitLlavaConfig(mm_projector_type="vitsplit", ...)` is the official LLaVA-1.5 layout.
- `vision_feature_layer` (default -2, LLaVA-1.5's penultimate state) is ViT-Split's feature
  layer; the two must agree, and the fusion width must be the LLM width.
- `mm_projector_layers`: the other hidden states a multi-layer baseline reads (`dc_sti` /
  `dc_sci`: two; `vipllava`: every layer it concatenates), HF indices; filled in with the
  baseline's default for the tower's depth (`default_projector_layers`) and checked against it.
- `conv_template` is saved with the model so chat and eval never guess it from a folder name;
  for ``chat_template`` (the LLM tokenizer's own Jinja) `llm_chat_template` records that Jinja,
  since the processor saved beside the model writes its own chat template over the tokenizer's.

Configs saved before `vitsplit_config` existed (flat `vitsplit_k`, `vitsplit_n`, `vitsplit_s`,
`vitsplit_task_input`, `vitsplit_selection` keys) still load: the keys become the nested config.
"""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import LlavaConfig

from ..core import ViTSplitConfig
from .conversation import CHAT_TEMPLATE, TEMPLATES

# mm_projector_type -> preset of its ViT-Split connector (None: LLaVA's baseline projectors).
_SPLIT_VARIANTS: dict[str, dict | None] = {
    # The official ViT-Split LLaVA connector (paper §4.4): plain convs, fusion to the LLM width.
    "vitsplit": dict(),
    # The paper's dense variant (deformable convs at the vision width), then `mlp2x_gelu`.
    "vitsplit_dense": dict(variant="dense", final_norm=False),
    "mlp2x_gelu": None,
    "linear": None,
    # Dense Connector (HJYao00/DenseConnector): sparse token / sparse channel / dense channel
    # integration of more layers, then mlp2x_gelu
    "dc_sti": None,
    "dc_sci": None,
    "dc_dci": None,
    # transformers' VipLlava: several layers concatenated, LayerNorm, then a 2-layer MLP
    "vipllava": None,
}
PROJECTOR_TYPES = tuple(_SPLIT_VARIANTS)
# transformers' VipLlavaConfig.vision_feature_layer default (for CLIP-L/336, 24 blocks)
VIPLLAVA_LAYERS = (-2, -5, -8, -11, 6)
STI_POOL = 8  # Dense Connector's STI average-pools the tokens of its extra layers by 8
ASPECT_RATIOS = ("pad", "square")
_LEGACY_KEYS = {
    "vitsplit_k": "k",
    "vitsplit_n": "n",
    "vitsplit_s": "s",
    "vitsplit_task_input": "task_input",
    "vitsplit_selection": "selection",
}


def connector_preset(projector_type: str, *, feature_layer: int = -2) -> ViTSplitConfig | None:
    """The `ViTSplitConfig` a connector starts from (None for `mlp2x_gelu` / `linear`).

    Both ViT-Split connectors copy the block producing the feature layer (k=1) and read that
    frozen state in the prior head (n=1), patch tokens only, as the official LLaVA code;
    `vitsplit`'s fusion width (`out_channels`) is filled in with the LLM width by the model config.
    """
    check_choice("--mm_projector_type", projector_type, PROJECTOR_TYPES)
    variant = _SPLIT_VARIANTS[projector_type]
    if variant is None:
        return None
    return ViTSplitConfig.llava(out_channels=None, feature_layer=feature_layer, **variant)


def hidden_index(layer: int, num_blocks: int) -> int:
    """An HF hidden-state index (negative from the end) as 0..num_blocks."""
    return layer if layer >= 0 else num_blocks + 1 + layer


def default_projector_layers(
    projector_type: str, *, feature_layer: int, num_blocks: int
) -> tuple[int, ...] | None:
    """The layers a multi-layer baseline reads by default, for a tower of `num_blocks` blocks.

    Dense Connector reads hidden states 7 and 15 of CLIP-L (24 blocks, feature layer f = 23);
    for other depths the same fractions of the feature layer, ``round((f + 1) / 3) - 1`` and
    ``round(2 (f + 1) / 3) - 1``. VipLlava: transformers' ``(-2, -5, -8, -11, 6)``. None for
    the other connectors (``dc_dci`` averages halves of 0..f and has nothing to choose).
    """
    f = hidden_index(feature_layer, num_blocks)
    if projector_type in ("dc_sti", "dc_sci"):
        return (round((f + 1) / 3) - 1, round(2 * (f + 1) / 3) - 1)
    if projector_type == "vipllava":
        return VIPLLAVA_LAYERS
    return None


def dci_halves(feature_index: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The two groups of hidden states ``dc_dci`` averages: ``0 .. (f+1)/2 - 1`` and the rest
    up to the feature layer `feature_index` f (CLIP-L, f = 23: 0-11 and 12-23, as Dense
    Connector reads them)."""
    half = (feature_index + 1) // 2
    return tuple(range(half)), tuple(range(half, feature_index + 1))


def extra_image_tokens(projector_type: str, num_patches: int) -> int:
    """Image tokens a connector adds to the patch tokens (``dc_sti``: two pooled layers)."""
    return 2 * (num_patches // STI_POOL) if projector_type == "dc_sti" else 0


def check_feature_layer(value: object) -> int:
    """`vision_feature_layer` as the connectors take it: one int (HF index, -2 = penultimate)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(
            f"vision_feature_layer={value!r}: ViT-Split and its MLP baselines read one feature "
            "layer, an int (e.g. -2, LLaVA-1.5's --mm_vision_select_layer); a list of layers, as "
            "transformers' Llava concatenates, is not supported"
        )
    return value


def check_choice(flag: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{flag} {value!r} is unknown; choose one of {', '.join(choices)}")


@strict
class ViTSplitLlavaConfig(LlavaConfig):
    model_type = "vitsplit_llava"

    mm_projector_type: str = "vitsplit"
    vitsplit_config: dict | ViTSplitConfig | None = None
    mm_projector_layers: list[int] | None = None
    conv_template: str = "vicuna_v1"
    llm_chat_template: str | None = None
    image_aspect_ratio: str = "pad"

    def __post_init__(self, **kwargs):
        legacy = {_LEGACY_KEYS[k]: kwargs.pop(k) for k in list(kwargs) if k in _LEGACY_KEYS}
        super().__post_init__(**kwargs)
        check_choice("--mm_projector_type", self.mm_projector_type, PROJECTOR_TYPES)
        check_choice("--image_aspect_ratio", self.image_aspect_ratio, ASPECT_RATIOS)
        check_choice("--version", self.conv_template, tuple(TEMPLATES))
        if (self.conv_template == CHAT_TEMPLATE) != (self.llm_chat_template is not None):
            raise ValueError(
                f"llm_chat_template: the LLM tokenizer's Jinja is recorded exactly for "
                f"conv_template {CHAT_TEMPLATE!r} (conv_template is {self.conv_template!r})"
            )
        check_feature_layer(self.vision_feature_layer)
        self.vitsplit_config = self._split_config(legacy)
        self.mm_projector_layers = self._projector_layers()

    def _projector_layers(self) -> list[int] | None:
        """`mm_projector_layers`, defaulted for the tower's depth and checked against it."""
        kind, given = self.mm_projector_type, self.mm_projector_layers
        depth = self.vision_config.num_hidden_layers
        default = default_projector_layers(
            kind, feature_layer=self.vision_feature_layer, num_blocks=depth
        )
        if default is None:
            if given is not None:
                raise ValueError(
                    f"mm_projector_layers: --mm_projector_type {kind} reads no extra layers "
                    "(only dc_sti, dc_sci and vipllava take --mm_projector_layers)"
                )
            return None
        layers = list(default if given is None else given)
        bad = [i for i in layers if not -(depth + 1) <= i <= depth]
        count = len(default)
        if bad or (kind != "vipllava" and len(layers) != count) or not layers:
            origin = "the default " if given is None else ""
            raise ValueError(
                f"mm_projector_layers: {origin}{layers} for --mm_projector_type {kind} on a tower "
                f"of {depth} blocks (hidden states 0..{depth}, or -1..-{depth + 1})"
                + (f": {bad} out of range" if bad else "")
                + (f"; {kind} reads {count} layers" if kind != "vipllava" else "")
                + "; pass --mm_projector_layers"
            )
        if len({hidden_index(i, depth) for i in layers}) != len(layers):
            raise ValueError(f"mm_projector_layers: {layers} names a hidden state twice")
        return layers

    def _split_config(self, legacy: dict) -> ViTSplitConfig | None:
        given = self.vitsplit_config
        preset = connector_preset(self.mm_projector_type, feature_layer=self.vision_feature_layer)
        if preset is None:
            if given is not None or legacy:
                raise ValueError(
                    f"vitsplit_config: --mm_projector_type {self.mm_projector_type} has no "
                    "ViT-Split settings (drop the --vitsplit_* flags or pick a vitsplit connector)"
                )
            return None
        if isinstance(given, dict):
            given = ViTSplitConfig.from_dict(given)
        cfg = given if given is not None else preset.with_(**legacy)
        if cfg.variant == "vlm" and cfg.out_channels is None:
            cfg = cfg.with_(out_channels=self.text_config.hidden_size)
        self._check_split(cfg, preset)
        return cfg

    def _check_split(self, cfg: ViTSplitConfig, preset: ViTSplitConfig) -> None:
        problems = []
        if cfg.feature_layer != self.vision_feature_layer:
            problems.append(
                f"feature_layer {cfg.feature_layer} != vision_feature_layer "
                f"{self.vision_feature_layer}"
            )
        if cfg.variant != preset.variant:
            problems.append(
                f"variant {cfg.variant!r}, but {self.mm_projector_type} is {preset.variant!r}"
            )
        if cfg.variant == "vlm" and cfg.out_channels != self.text_config.hidden_size:
            problems.append(
                f"out_channels {cfg.out_channels} != the LLM width {self.text_config.hidden_size}"
            )
        if problems:
            raise ValueError("vitsplit_config does not fit this model: " + "; ".join(problems))

    @property
    def vitsplit(self) -> ViTSplitConfig:
        """The connector's `ViTSplitConfig` (an error for the MLP baselines, which have none)."""
        if self.vitsplit_config is None:
            raise ValueError(
                f"--mm_projector_type {self.mm_projector_type} has no ViT-Split config"
            )
        return self.vitsplit_config

    def to_dict(self) -> dict:
        out = super().to_dict()
        if isinstance(self.vitsplit_config, ViTSplitConfig):
            out["vitsplit_config"] = self.vitsplit_config.to_dict()
        return out
