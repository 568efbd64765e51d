"""`ViTSplitLlavaConfig`: transformers' `LlavaConfig` plus the connector choice.

Field names follow LLaVA's flags (`mm_projector_type`, `image_aspect_ratio`) and ViT-Split's
(`vitsplit_k`, `vitsplit_n`, `vitsplit_s`, `vitsplit_task_input`, `vitsplit_selection`).
`vision_feature_layer` (default -2, LLaVA-1.5's penultimate state) is ViT-Split's feature layer.
`conv_template` is saved with the model so chat and eval never guess it from a folder name.
"""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import LlavaConfig

from ..core import ViTSplitConfig

PROJECTOR_TYPES = ("vitsplit", "vitsplit_dense", "mlp2x_gelu", "linear")
ASPECT_RATIOS = ("pad", "square")


@strict
class ViTSplitLlavaConfig(LlavaConfig):
    model_type = "vitsplit_llava"

    mm_projector_type: str = "vitsplit"
    vitsplit_k: int = 1
    vitsplit_n: int = 1
    vitsplit_s: int | None = None
    vitsplit_task_input: str | None = None
    vitsplit_selection: str = "uniform"
    conv_template: str = "vicuna_v1"
    image_aspect_ratio: str = "pad"

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.mm_projector_type not in PROJECTOR_TYPES:
            raise ValueError(
                f"--mm_projector_type {self.mm_projector_type!r} is unknown; "
                f"choose one of {', '.join(PROJECTOR_TYPES)}"
            )
        if self.image_aspect_ratio not in ASPECT_RATIOS:
            raise ValueError(
                f"--image_aspect_ratio {self.image_aspect_ratio!r} is unknown; "
                f"choose one of {', '.join(ASPECT_RATIOS)}"
            )
        if not isinstance(self.vision_feature_layer, int):
            raise ValueError("vision_feature_layer: ViT-Split reads one feature layer (an int)")
        if self.mm_projector_type.startswith("vitsplit"):
            self.vitsplit_config()  # validate early, with the field named

    def vitsplit_config(self) -> ViTSplitConfig:
        """The core config of the `vitsplit` (official LLaVA layout) or `vitsplit_dense` connector."""
        common = dict(
            k=self.vitsplit_k,
            n=self.vitsplit_n,
            s=self.vitsplit_s,
            selection=self.vitsplit_selection,
            feature_layer=self.vision_feature_layer,
            task_input=self.vitsplit_task_input or "patch",
            final_norm=False,
        )
        if self.mm_projector_type == "vitsplit":
            return ViTSplitConfig(
                variant="vlm", out_channels=self.text_config.hidden_size, **common
            )
        return ViTSplitConfig(variant="dense", **common)
