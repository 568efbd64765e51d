"""LLaVA-1.5 with a ViT-Split connector, as Hugging Face classes.

Importing this package registers `vitsplit_llava` with `AutoConfig`, `AutoModel` and
`AutoModelForImageTextToText`, so `AutoModelForImageTextToText.from_pretrained(dir)` returns
`ViTSplitLlavaForConditionalGeneration` without `trust_remote_code`.
"""

from .configuration import PROJECTOR_TYPES, ViTSplitLlavaConfig
from .modeling import (
    ViTSplitLlavaForConditionalGeneration,
    ViTSplitLlavaModel,
    register,
)

register()

__all__ = [
    "PROJECTOR_TYPES",
    "ViTSplitLlavaConfig",
    "ViTSplitLlavaForConditionalGeneration",
    "ViTSplitLlavaModel",
]
