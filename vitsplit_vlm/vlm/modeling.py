"""LLaVA-1.5 with a ViT-Split connector, as Hugging Face classes.

Built on transformers' Llava: the same module names and state-dict keys
(`model.vision_tower.*`, `model.multi_modal_projector.*`, `model.language_model.*`, `lm_head.*`),
the same forward / generate contract. Two things differ:

- `get_image_features` runs the frozen vision tower without autograd, only up to the deepest
  hidden state the connector reads (the last CLIP block is dead compute for LLaVA-1.5), then the
  connector, which may read several hidden states;
- the image-token count check is explicit and always on.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from transformers import AutoModel, LlavaForConditionalGeneration, LlavaModel
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.llava.modeling_llava import LlavaPreTrainedModel

from ..core.trunk import check_pixels, frozen_hidden_states, trunk_spec
from .configuration import ViTSplitLlavaConfig
from .connector import CONNECTORS, build_connector, reset_connector_parameters


class _ConnectorInitMixin:
    """Connector weights start from PyTorch's default init (as LLaVA's projector), not N(0, 0.02)."""

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, tuple(CONNECTORS.values())):
            reset_connector_parameters(module)
        else:
            super()._init_weights(module)


class ViTSplitLlavaPreTrainedModel(_ConnectorInitMixin, LlavaPreTrainedModel):
    config_class = ViTSplitLlavaConfig
    config: ViTSplitLlavaConfig


class ViTSplitLlavaModel(_ConnectorInitMixin, LlavaModel):
    """`LlavaModel` whose projector is chosen by `config.mm_projector_type`.

    `vision_tower` / `language_model` may be given already loaded (the builder does), otherwise
    they are created from the config (what `from_pretrained(dir)` does before loading weights).
    """

    config_class = ViTSplitLlavaConfig

    def __init__(
        self,
        config: ViTSplitLlavaConfig,
        *,
        vision_tower: nn.Module | None = None,
        language_model: nn.Module | None = None,
    ) -> None:
        LlavaPreTrainedModel.__init__(self, config)
        self.vision_tower = vision_tower or AutoModel.from_config(config.vision_config)
        self.multi_modal_projector = build_connector(config, self.vision_tower)
        self.language_model = language_model or AutoModel.from_config(config.text_config)
        self.vision_tower.requires_grad_(False)
        self.post_init()

    def train(self, mode: bool = True) -> ViTSplitLlavaModel:
        super().train(mode)
        self.vision_tower.eval()  # the tower is frozen: no dropout, whatever the parent does
        return self

    def get_image_features(
        self, pixel_values: torch.Tensor, *args, **kwargs
    ) -> BaseModelOutputWithPooling:
        """(B, 3, H, W) -> image tokens (B, h*w, D); `pooler_output` is the per-image list."""
        connector = self.multi_modal_projector
        grid = check_pixels(trunk_spec(self.vision_tower), pixel_values)
        hidden = frozen_hidden_states(self.vision_tower, pixel_values, connector.required_layers)
        features = connector(hidden, grid)
        return BaseModelOutputWithPooling(last_hidden_state=features, pooler_output=list(features))

    def get_placeholder_mask(
        self, input_ids: torch.LongTensor, inputs_embeds: torch.Tensor, image_features: torch.Tensor
    ) -> torch.Tensor:
        """Mask (B, L, 1) of image-token positions; raises when their count != feature count."""
        if input_ids is None:
            image_embed = self.get_input_embeddings()(
                torch.tensor(self.config.image_token_id, device=inputs_embeds.device)
            )
            mask = (inputs_embeds == image_embed).all(-1)
        else:
            mask = input_ids == self.config.image_token_id
        n_tokens, n_features = int(mask.sum()), image_features.shape[0]
        if n_tokens != n_features:
            per_image = self.config.image_seq_length
            raise ValueError(
                f"the text holds {n_tokens} image tokens but the images give {n_features} "
                f"features ({per_image} per image): each <image> must be expanded to "
                f"{per_image} image tokens (the processor does this) and the number of <image> "
                "placeholders must equal the number of images"
            )
        return mask.unsqueeze(-1).to(inputs_embeds.device)


class ViTSplitLlavaForConditionalGeneration(_ConnectorInitMixin, LlavaForConditionalGeneration):
    """LLaVA-1.5 + ViT-Split; loads with `AutoModelForImageTextToText.from_pretrained(dir)`."""

    config_class = ViTSplitLlavaConfig

    def __init__(
        self,
        config: ViTSplitLlavaConfig,
        *,
        vision_tower: nn.Module | None = None,
        language_model: nn.Module | None = None,
        lm_head: nn.Linear | None = None,
    ) -> None:
        LlavaPreTrainedModel.__init__(self, config)
        self.model = ViTSplitLlavaModel(
            config, vision_tower=vision_tower, language_model=language_model
        )
        text = config.text_config
        self.lm_head = lm_head or nn.Linear(text.hidden_size, text.vocab_size, bias=False)
        self.post_init()

    @property
    def connector(self) -> nn.Module:
        return self.model.multi_modal_projector


def register() -> None:
    """Register with transformers' Auto classes (done once when `vitsplit_vlm.vlm` is imported)."""
    from transformers import (
        AutoConfig,
        AutoModelForImageTextToText,
    )

    AutoConfig.register(ViTSplitLlavaConfig.model_type, ViTSplitLlavaConfig, exist_ok=True)
    AutoModel.register(ViTSplitLlavaConfig, ViTSplitLlavaModel, exist_ok=True)
    AutoModelForImageTextToText.register(
        ViTSplitLlavaConfig, ViTSplitLlavaForConditionalGeneration, exist_ok=True
    )
