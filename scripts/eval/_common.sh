# Shared by scripts/eval/*.sh (after scripts/_common.sh): the embedded defaults and the
# chunked answering of LLaVA-1.5's scripts/v1_5/eval/*.sh.
# shellcheck shell=bash

CKPT=${CKPT:-checkpoints/vitsplit-tiny}
DATA=${DATA:-playground/data/eval}
CONV_MODE=${CONV_MODE:-vicuna_v1}
BATCH=${BATCH:-8}
CKPT_NAME=$(basename "$CKPT")

# eval_setup: check the model folder; build the playground sets when DATA is the default.
eval_setup() {
  if [ ! -f "$CKPT/config.json" ]; then
    echo "error: no model at CKPT=$CKPT (no config.json). Train the tiny default with" \
      "'bash scripts/pretrain.sh && bash scripts/finetune.sh', or set CKPT=<model folder>." >&2
    exit 1
  fi
  if [ "$DATA" = playground/data/eval ]; then
    vitsplit-vlm make-data evalsets --out "$DATA" >/dev/null  # idempotent: a no-op when current
  fi
}

# answer_in_chunks OUT_DIR QUESTION_FILE ARGS...: `vitsplit-vlm eval answer` over chunks of the
# question file, one chunk per GPU in parallel (CUDA_VISIBLE_DEVICES picks them; default: all),
# or on CPU CHUNKS chunks (default 1) one after another; then merge them into OUT_DIR/merge.jsonl,
# checking that every question is answered exactly once.
answer_in_chunks() {
  local out=$1 questions=$2
  shift 2
  local gpus=() chunks idx status=0
  local count
  count=$(gpu_count)
  if [ "$count" -gt 0 ]; then
    IFS=',' read -ra gpus <<< "${CUDA_VISIBLE_DEVICES:-$(seq -s, 0 $((count - 1)))}"
    chunks=${#gpus[@]}
  else
    chunks=${CHUNKS:-1}
  fi
  local extra=(--conv-mode "$CONV_MODE" --temperature 0 --batch-size "$BATCH")
  if [ -n "${MAX_NEW_TOKENS:-}" ]; then extra+=(--max-new-tokens "$MAX_NEW_TOKENS"); fi
  mkdir -p "$out"
  local files=() pids=()
  for idx in $(seq 0 $((chunks - 1))); do
    files+=("$out/${chunks}_${idx}.jsonl")
    local cmd=(vitsplit-vlm eval answer --model-path "$CKPT" --question-file "$questions"
      --answers-file "$out/${chunks}_${idx}.jsonl" --num-chunks "$chunks" --chunk-idx "$idx"
      "${extra[@]}" "$@")
    if [ ${#gpus[@]} -gt 0 ]; then
      CUDA_VISIBLE_DEVICES=${gpus[$idx]} "${cmd[@]}" > "$out/${chunks}_${idx}.log" &
      pids+=($!)
    else
      "${cmd[@]}" > "$out/${chunks}_${idx}.log"
    fi
  done
  for pid in "${pids[@]}"; do wait "$pid" || status=1; done
  if [ "$status" -ne 0 ]; then
    echo "error: a chunk failed; see $out/*.log" >&2
    exit 1
  fi
  vitsplit-vlm eval merge --inputs "${files[@]}" --questions "$questions" \
    --out "$out/merge.jsonl" > /dev/null
}
