"""Dense prediction on a frozen trunk: heads read `ViTSplitOutput.fused` maps (B, C, h, w).

Modules, inward to outward:

- `heads` (SegHead, DepthHead), `neck` (DetNeck), `detector` (Mask R-CNN with exact strides);
- `losses` (CE with ignore 255, SILog), `metrics` (mIoU / pixel acc, NYU depth errors);
- `transforms` (joint augmentations, normalisation), `datasets` (ADE20K, NYU-v2 layouts with
  counted skips), `coco` (COCO 2017 instances, masks, pycocotools box / mask AP);
- `tasks` (one module per task: seg, depth, det; each owns its head, loss, transforms, data
  layout, metric, inference, typed presets, paper layers and flags; the registry `TASKS`);
- `model` (DenseModel: vitsplit / linear / full + its task's head), `checkpoint` (trainable parts
  + trunk fingerprint), `inference` (whole / sliding window), `engine` (train / evaluate loops);
- `predict` (several adapters on one shared trunk pass), `visualize` (PNG overlays), `recipes`
  (preset choice, the model factory, data sets), `cli` (``vitsplit-vlm dense``; the only module
  here that knows the playground).
"""
