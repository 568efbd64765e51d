"""Dense prediction on a frozen trunk: heads read `ViTSplitOutput.fused` maps (B, C, h, w).

Modules, inward to outward:

- `heads` (SegHead, DepthHead), `neck` (DetNeck), `detector` (Mask R-CNN with exact strides);
- `losses` (CE with ignore 255, SILog), `metrics` (mIoU / pixel acc, NYU depth errors);
- `transforms` (joint augmentations, normalisation), `datasets` (ADE20K, NYU-v2 layouts with
  counted skips), `coco` (COCO 2017 instances, masks, pycocotools box / mask AP);
- `model` (DenseModel: vitsplit / linear / full + a task head), `checkpoint` (trainable parts +
  trunk fingerprint), `inference` (whole / sliding window), `engine` (train / evaluate loops);
- `predict` (several adapters on one shared trunk pass), `visualize` (PNG overlays),
  `pretrain` (the briefly pretrained tiny DINOv2), `cli` (``vitsplit-vlm dense``).
"""
