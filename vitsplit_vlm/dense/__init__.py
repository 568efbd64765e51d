"""Dense prediction on a frozen trunk: heads read `ViTSplitOutput.fused` maps (B, C, h, w)."""
