"""Evidence for the paper's premise on a user's backbone: linear CKA between layers (Fig. 3) and
per-layer feature maps of the frozen trunk beside a trained task head (Fig. 4)."""
