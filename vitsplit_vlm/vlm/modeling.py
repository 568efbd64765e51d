"""LLaVA-1.5 with a ViT-Split connector, as Hugging Face classes.

Built on transformers' Llava: the same module names and state-dict keys
(`model.vision_tower.*`, `model.multi_modal_projector.*`, `model.language_model.*`, `lm_head.*`),
the same forward / generate contract. Two things differ:

- `get_image_features` runs the frozen vision tower without autograd, only up to the deepest
  hidden state the connector reads (the last CLIP block is dead compute for LLaVA-1.5), then the
  connector, which may read several hidden states; so it returns no tower hidden states or
  attentions, and the feature layer is the one the connector was built for;
- the image-token count check is explicit and always on.

The vision tower stays frozen after `from_pretrained` too, and tower weights missing from a
checkpoint start from the tower's own init (CLIP's), as in a freshly built model.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn
from transformers import AutoModel, LlavaForConditionalGeneration, LlavaModel, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.llava.modeling_llava import LlavaPreTrainedModel
from transformers.utils.generic import can_return_tuple

from ..core.feature_cache import grid_from_tokens
from ..core.trunk import check_pixels, frozen_hidden_states, trunk_spec
from .configuration import ViTSplitLlavaConfig
from .connector import CONNECTORS, build_connector, reset_connector_parameters


class _ConnectorInitMixin:
    """Weight init and loading shared by the model classes.

    - `_init_weights` gives a connector PyTorch's default init (as LLaVA's projector) when it is
      called on the connector module; transformers 5 skips that call in this composite model
      (the connector module owns no parameter itself), so connector leaves get N(0, 0.02);
      `builder.assemble_vlm`, where a trained connector starts, resets it explicitly.
    - The vision tower initialises its own missing weights first, with its own scheme: CLIP sets
      its attention / MLP weights on the parent modules, which transformers skips inside a
      composite model defined outside its package (such a module owns no parameter itself).
    - `from_pretrained` replaces every loaded parameter (`requires_grad=True`): the tower is
      frozen again afterwards.
    """

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, tuple(CONNECTORS.values())):
            reset_connector_parameters(module)
        else:
            super()._init_weights(module)

    def initialize_weights(self) -> None:
        tower = self.get_vision_tower()
        if isinstance(tower, PreTrainedModel):
            tower.initialize_weights()  # skips weights that are loaded or already initialised
        super().initialize_weights()

    def get_vision_tower(self) -> nn.Module:
        return self.base_model.vision_tower

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # output_loading_info=True
        model.get_vision_tower().requires_grad_(False)
        return loaded


def cached_hidden_states(
    tower: nn.Module, hidden: Mapping[int, torch.Tensor], connector: nn.Module
) -> dict[int, torch.Tensor]:
    """Cached hidden states checked against the layers `connector` reads, in the tower's dtype
    and on its device (what the tower itself would have handed over)."""
    missing = sorted(set(connector.required_layers) - set(hidden))
    if missing:
        raise ValueError(
            f"cached hidden states hold layers {sorted(hidden)} but the connector reads "
            f"{list(connector.required_layers)}: rebuild the feature cache for this connector"
        )
    weight = next(tower.parameters())
    return {i: hidden[i].to(weight.device, weight.dtype) for i in connector.required_layers}


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

    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """(B, 3, H, W) -> image tokens (B, h*w, D); `pooler_output` is the per-image list.

        `pixel_values` may instead be the tower's hidden states `{layer: (B, T, C)}` the
        connector reads (``--cache_features``, `vitsplit_vlm.vlm.feature_cache`): then the
        tower does not run.

        `return_dict=False` gives the tuple `(last_hidden_state, pooler_output)`. The connector
        decides which tokens of which layers it reads: `vision_feature_layer` may only repeat the
        config's, and `vision_feature_select_strategy` (and LLaVA's other tower options in
        `kwargs`) are ignored.
        """
        if (
            vision_feature_layer is not None
            and vision_feature_layer != self.config.vision_feature_layer
        ):
            raise ValueError(
                f"vision_feature_layer={vision_feature_layer!r}: this connector was built for "
                f"layer {self.config.vision_feature_layer} and reads only that; build a model "
                "with another vision_feature_layer (mm_vision_select_layer) instead"
            )
        connector = self.multi_modal_projector
        spec = trunk_spec(self.vision_tower)
        if isinstance(pixel_values, Mapping):  # the tower's hidden states, from a feature cache
            hidden = cached_hidden_states(self.vision_tower, pixel_values, connector)
            grid = grid_from_tokens(spec, next(iter(hidden.values())).shape[1])
        else:
            grid = check_pixels(spec, pixel_values)
            hidden = frozen_hidden_states(
                self.vision_tower, pixel_values, connector.required_layers
            )
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
