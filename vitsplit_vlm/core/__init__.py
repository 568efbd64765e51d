"""ViT-Split itself, model-agnostic: imports only torch, torchvision and transformers' vision models."""

from .config import ResolvedLayers, ViTSplitConfig
from .heads import TRAINABLE_GROUPS, PriorHead, TaskHead, ViTSplitHeads, ViTSplitOutput
from .layers import DeformBlock, tokens_to_map
from .selection import SparseGate, uniform_indices
from .trunk import SUPPORTED_MODEL_TYPES, FrozenTrunk, TrunkSpec, trunk_spec
from .vitsplit import ViTSplit

__all__ = [
    "TRAINABLE_GROUPS",
    "SUPPORTED_MODEL_TYPES",
    "DeformBlock",
    "FrozenTrunk",
    "PriorHead",
    "ResolvedLayers",
    "SparseGate",
    "TaskHead",
    "TrunkSpec",
    "ViTSplit",
    "ViTSplitConfig",
    "ViTSplitHeads",
    "ViTSplitOutput",
    "tokens_to_map",
    "trunk_spec",
    "uniform_indices",
]
