"""LLaVA-1.5 with a ViT-Split connector, as Hugging Face classes."""
