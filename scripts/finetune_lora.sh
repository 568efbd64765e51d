#!/usr/bin/env bash
# Stage 2 with LoRA: peft LoRA on the LLM's linear layers (not the vision tower, the connector
# or lm_head); the connector trains fully at --mm_projector_lr. Writes the adapter, the
# connector and vitsplit_lora.json to OUT; `vitsplit-vlm merge-lora --model-path OUT --out DIR`
# gives a full model folder.
#
#   bash scripts/finetune_lora.sh            # embedded default, after scripts/pretrain.sh
#   PRESET=paper MODEL=... VISION=... DATA=... IMAGES=... PRETRAIN=... OUT=... bash scripts/finetune_lora.sh
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
OUT=${OUT:-checkpoints/vitsplit-tiny-lora}
PROJECTOR=${PROJECTOR:-vitsplit}

if [ "$PRESET" = paper ]; then
  # LLaVA-1.5 LoRA recipe: r 128, alpha 256, lr 2e-4, projector lr 2e-5, global batch 128.
  batch_flags 128 16 "$@"
  HP=(--num_train_epochs 1 --learning_rate 2e-4 --mm_projector_lr 2e-5 --model_max_length 2048
      --group_by_modality_length True --dataloader_num_workers 4 --save_steps 50000)
else
  batch_flags 32 32 "$@"  # before building the playground: fail fast
  prepare_playground
  HP=(--max_steps ${STEPS:-300} --learning_rate 2e-3
      --mm_projector_lr 1e-3 --model_max_length 512 --dataloader_num_workers 0
      --save_steps 200 --save_total_limit 1)
  HP+=($(playground_connector_flags))
fi

launch \
  --deepspeed scripts/zero3.json \
  --lora_enable True --lora_r ${LORA_R:-128} --lora_alpha ${LORA_ALPHA:-256} \
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
  --report_to none \
  "${HP[@]}" "${BATCH[@]}" "$@"
