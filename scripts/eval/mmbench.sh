#!/usr/bin/env bash
# MMBench as LLaVA-1.5's scripts/v1_5/eval/mmbench.sh: answer the TSV (in chunks, one per GPU in
# parallel; on CPU CHUNKS chunks in turn), merge, write the submission table, and score it
# locally (circular + vanilla accuracy, rule matching) when the TSV has answers.
#
#   bash scripts/eval/mmbench.sh                  # checkpoints/vitsplit-tiny on the playground set
#   CKPT=checkpoints/vitsplit-llava-v1.5-7b SPLIT=mmbench_dev_20230712 ALL_ROUNDS=0 \
#     bash scripts/eval/mmbench.sh
#
# ALL_ROUNDS=1 (default) asks every option rotation (LLaVA's --all-rounds) for circular scoring;
# ALL_ROUNDS=0 asks once per row, as LLaVA's script (the official TSV holds rotated copies).
# Env: CKPT, DATA, SPLIT, CONV_MODE, BATCH, CHUNKS (CPU), MAX_NEW_TOKENS; extra arguments go to
# `vitsplit-vlm eval answer`.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/_common.sh
source scripts/eval/_common.sh

SPLIT=${SPLIT:-mmbench_playground}
TSV=$DATA/mmbench/$SPLIT.tsv
ANSWERS=$DATA/mmbench/answers/$SPLIT/$CKPT_NAME
ROUNDS=()
if [ "${ALL_ROUNDS:-1}" = 1 ]; then ROUNDS=(--all-rounds); fi

eval_setup
answer_in_chunks "$ANSWERS" "$TSV" --task mmbench --single-pred-prompt "${ROUNDS[@]}" "$@"
UPLOAD=$DATA/mmbench/answers_upload/$SPLIT/$CKPT_NAME.xlsx
if ! "$PY" -c "import openpyxl" 2>/dev/null; then UPLOAD=${UPLOAD%.xlsx}.tsv; fi  # same columns
vitsplit-vlm eval convert-mmbench --answers "$ANSWERS/merge.jsonl" --tsv "$TSV" --out "$UPLOAD" \
  > /dev/null
if head -n 1 "$TSV" | tr '\t' '\n' | grep -qx answer; then
  vitsplit-vlm eval score-mmbench --answers "$ANSWERS/merge.jsonl" --tsv "$TSV" \
    | tee "$ANSWERS/scores.json"
fi
