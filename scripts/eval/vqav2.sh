#!/usr/bin/env bash
# VQAv2 as LLaVA-1.5's scripts/v1_5/eval/vqav2.sh: answer in chunks (one per GPU, in parallel;
# on CPU CHUNKS chunks in turn), merge, then score against the annotations when there are any
# (the playground set, val) or write the EvalAI upload (test-dev).
#
#   bash scripts/eval/vqav2.sh                    # checkpoints/vitsplit-tiny on the playground set
#   CKPT=checkpoints/vitsplit-llava-v1.5-7b SPLIT=llava_vqav2_mscoco_test-dev2015 \
#     IMAGES=playground/data/eval/vqav2/test2015 bash scripts/eval/vqav2.sh
#
# Env: CKPT, DATA (LLaVA's playground/data/eval layout), SPLIT, IMAGES, ANNOTATIONS, CONV_MODE,
# BATCH, CHUNKS (CPU), MAX_NEW_TOKENS; extra arguments go to `vitsplit-vlm eval answer`.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/_common.sh
source scripts/eval/_common.sh

SPLIT=${SPLIT:-llava_vqav2_playground}
IMAGES=${IMAGES:-$DATA/vqav2/images}
if [ "$SPLIT" = llava_vqav2_playground ]; then
  ANNOTATIONS=${ANNOTATIONS:-$DATA/vqav2/v2_playground_annotations.json}
fi
ANSWERS=$DATA/vqav2/answers/$SPLIT/$CKPT_NAME

eval_setup
answer_in_chunks "$ANSWERS" "$DATA/vqav2/$SPLIT.jsonl" --task vqav2 --image-folder "$IMAGES" "$@"

if [ -n "${ANNOTATIONS:-}" ]; then
  vitsplit-vlm eval score-vqav2 --answers "$ANSWERS/merge.jsonl" --annotations "$ANNOTATIONS" \
    --questions "$DATA/vqav2/$SPLIT.jsonl" | tee "$ANSWERS/scores.json"
else
  vitsplit-vlm eval convert-vqav2 --answers "$ANSWERS/merge.jsonl" \
    --questions "$DATA/vqav2/$SPLIT.jsonl" --out "$DATA/vqav2/answers_upload/$SPLIT/$CKPT_NAME.json"
fi
