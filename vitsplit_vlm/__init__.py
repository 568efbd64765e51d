"""ViT-Split for LLaVA-1.5 and dense prediction."""

__version__ = "0.1.0"
