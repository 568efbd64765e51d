#!/usr/bin/env bash
# POPE as LLaVA-1.5's scripts/v1_5/eval/pope.sh: answer llava_pope_test.jsonl (in chunks, one per
# GPU in parallel; on CPU CHUNKS chunks in turn), merge, and score each category against the
# *_pope_<category>.json label files (accuracy, precision, recall, F1, yes ratio).
#
#   bash scripts/eval/pope.sh                     # checkpoints/vitsplit-tiny on the playground set
#   CKPT=checkpoints/vitsplit-llava-v1.5-7b IMAGES=playground/data/eval/pope/val2014 \
#     LABELS=playground/data/eval/pope/coco bash scripts/eval/pope.sh
#
# Env: CKPT, DATA, IMAGES, LABELS, CONV_MODE, BATCH, CHUNKS (CPU), MAX_NEW_TOKENS; extra arguments
# go to `vitsplit-vlm eval answer`.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/_common.sh
source scripts/eval/_common.sh

QUESTIONS=$DATA/pope/llava_pope_test.jsonl
IMAGES=${IMAGES:-$DATA/pope/images}
LABELS=${LABELS:-$DATA/pope/annotations}
ANSWERS=$DATA/pope/answers/$CKPT_NAME

eval_setup
answer_in_chunks "$ANSWERS" "$QUESTIONS" --task pope --image-folder "$IMAGES" "$@"
vitsplit-vlm eval score-pope --answers "$ANSWERS/merge.jsonl" --questions "$QUESTIONS" \
  --question-dir "$LABELS" | tee "$ANSWERS/scores.json"
