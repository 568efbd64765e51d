#!/usr/bin/env bash
# Stage 2 of LLaVA-1.5 + ViT-Split: connector (task block included) + LLM train on the
# instruction mix (`vicuna_v1` template, DeepSpeed ZeRO-3, gradient checkpointing; the playground
# preset: ZeRO-2, no checkpointing), starting from stage 1's connector. Writes a Hugging Face
# model folder (+ processor) to OUT.
#
#   bash scripts/finetune.sh                 # embedded default, after scripts/pretrain.sh
#   PRESET=paper MODEL=/models/vicuna-7b-v1.5 VISION=/models/clip-vit-large-patch14-336 \
#     DATA=/data/llava_v1_5_mix665k.json IMAGES=/data/llava_images \
#     PRETRAIN=checkpoints/vitsplit-llava-v1.5-7b-pretrain OUT=checkpoints/vitsplit-llava-v1.5-7b \
#     bash scripts/finetune.sh
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
DATA=${DATA:-playground/data/shapes/finetune.json}
IMAGES=${IMAGES:-playground/data/shapes/images}
PRETRAIN=${PRETRAIN:-checkpoints/vitsplit-tiny-pretrain}
OUT=${OUT:-checkpoints/vitsplit-tiny}
PROJECTOR=${PROJECTOR:-vitsplit}

if [ "$PRESET" = paper ]; then
  # Paper / official: lr 2e-5, 1 epoch, bf16 on GPUs, global batch 256 (LLaVA-1.5's: 128).
  batch_flags 256 16 "$@"
  HP=(--num_train_epochs 1 --learning_rate 2e-5 --model_max_length 2048
      --group_by_modality_length True --dataloader_num_workers 4 --save_steps 50000)
  ZERO=scripts/zero3.json
else
  batch_flags 32 32 "$@"  # before building the playground: fail fast
  prepare_playground
  # finetune.json is written in training order (reading questions first): read it in order.
  HP=(--max_steps ${STEPS:-600} --learning_rate 1e-3 --model_max_length 512
      --train_sampling_strategy sequential --dataloader_num_workers 0 --save_steps 200
      --save_total_limit 1 --cache_features playground/feature-cache
      --gradient_checkpointing False)  # tiny: checkpointing only costs time
  HP+=($(playground_connector_flags))
  # ZeRO-2: on the playground's one CPU process ZeRO-3 partitions nothing and only costs time
  # (same losses at 1.8x the step time: vitsplit_vlm/playground/recipes.py); `--deepspeed
  # scripts/zero3.json` as an extra argument puts it back
  ZERO=scripts/zero2.json
fi

launch \
  --deepspeed "$ZERO" \
  --model_name_or_path "$MODEL" \
  --version vicuna_v1 \
  --data_path "$DATA" \
  --image_folder "$IMAGES" \
  --vision_tower "$VISION" \
  --pretrain_mm_mlp_adapter "$PRETRAIN/mm_projector.safetensors" \
  --mm_projector_type "$PROJECTOR" \
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
  --gradient_checkpointing True \
  --lazy_preprocess True \
  --report_to none \
  "${HP[@]}" "${BATCH[@]}" "$@"
