#!/usr/bin/env bash
# Stage 1 of LLaVA-1.5 + ViT-Split: only the connector trains, on image-caption pairs
# (`plain` template, DeepSpeed ZeRO-2). Writes OUT/mm_projector.safetensors (connector only).
#
#   bash scripts/pretrain.sh                 # embedded default: tiny models + playground, CPU
#   PRESET=paper MODEL=/models/vicuna-7b-v1.5 VISION=/models/clip-vit-large-patch14-336 \
#     DATA=/data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json IMAGES=/data/LLaVA-Pretrain/images \
#     OUT=checkpoints/vitsplit-llava-v1.5-7b-pretrain bash scripts/pretrain.sh
#
# Extra arguments go to the trainer (LLaVA's flag names) and override the preset. The global batch
# (GLOBAL_BATCH) is kept on any number of processes; DRY_RUN=1 prints the command. Launcher, world
# size and batch variables: scripts/_common.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_common.sh

PRESET=${PRESET:-playground}
MODEL=${MODEL:-playground/tiny/llama-chat}
VISION=${VISION:-playground/tiny/clip-vit-pretrained}
DATA=${DATA:-playground/data/shapes/pretrain.json}
IMAGES=${IMAGES:-playground/data/shapes/images}
OUT=${OUT:-checkpoints/vitsplit-tiny-pretrain}
PROJECTOR=${PROJECTOR:-vitsplit}

if [ "$PRESET" = paper ]; then
  # Paper / official ViT-Split: global batch 256, lr 5e-4 (LLaVA-1.5's MLP used 1e-3), 1 epoch.
  batch_flags 256 32 "$@"
  HP=(--num_train_epochs 1 --learning_rate 5e-4 --model_max_length 2048
      --gradient_checkpointing True --dataloader_num_workers 4 --save_steps 24000)
else
  batch_flags 32 32 "$@"  # before building the playground: fail fast
  prepare_playground
  HP=(--max_steps ${STEPS:-400} --learning_rate 1e-3 --model_max_length 512
      --dataloader_num_workers 0 --save_steps 100 --save_total_limit 1
      --cache_features playground/feature-cache)
  HP+=($(playground_connector_flags))
fi

launch \
  --deepspeed scripts/zero2.json \
  --model_name_or_path "$MODEL" \
  --version plain \
  --data_path "$DATA" \
  --image_folder "$IMAGES" \
  --vision_tower "$VISION" \
  --mm_projector_type "$PROJECTOR" \
  --tune_mm_mlp_adapter True \
  --mm_vision_select_layer -2 \
  --mm_use_im_start_end False \
  --mm_use_im_patch_token False \
  --image_aspect_ratio pad \
  --output_dir "$OUT" \
  --save_strategy steps \
  --weight_decay 0. \
  --warmup_ratio 0.03 \
  --lr_scheduler_type cosine \
  --logging_steps 10 \
  --lazy_preprocess True \
  --report_to none \
  "${HP[@]}" "${BATCH[@]}" "$@"
