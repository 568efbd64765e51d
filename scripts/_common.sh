# Shared by scripts/*.sh: the Python to use, the world size and launcher, the batch flags that
# keep the global batch, and the embedded playground.
#
#   NUM_GPUS=N      GPUs on this node (default: detected); DeepSpeed's launcher when N > 0
#   HOSTFILE=FILE   several nodes: DeepSpeed hostfile, one `HOST slots=N` line per node
#   NPROC=N         CPU processes when there is no GPU (torchrun when N > 1; default 1)
#   GLOBAL_BATCH    samples per optimizer step over all processes (default: the preset's)
#   PER_DEVICE_BATCH  samples per process and forward pass (default: the preset's, lowered when
#                   the world is too large for it)
#   DRY_RUN=1       print the launcher command line instead of running it
# shellcheck shell=bash

if [ -x .venv/bin/python ]; then
  export PATH="$PWD/.venv/bin:$PATH"
fi
PY=${PY:-python}
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TOKENIZERS_PARALLELISM=false

die() {
  echo "error: $*" >&2
  exit 1
}

dry_run() { [ -n "${DRY_RUN:-}" ] && [ "$DRY_RUN" != 0 ]; }

is_count() { [[ $1 =~ ^[0-9]+$ ]]; }

gpu_count() {
  "$PY" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0
}

# hostfile_slots FILE: the sum of `slots=N` over the hosts of a DeepSpeed hostfile (comments and
# blank lines skipped); fails on a host line without slots.
hostfile_slots() {
  awk '
    /^[[:space:]]*(#|$)/ { next }
    match($0, /slots=[0-9]+/) { total += substr($0, RSTART + 6, RLENGTH - 6); next }
    { printf "HOSTFILE=%s line %d has no slots=N: %s\n", FILENAME, FNR, $0 > "/dev/stderr"
      bad = 1 }
    END { if (bad || total == 0) exit 1; print total }
  ' "$1"
}

# resolve_world: sets WORLD (the number of training processes), LAUNCHER (hostfile, deepspeed,
# torchrun or python) and WORLD_FROM (where the number came from, for messages). Decided once,
# here, so the launcher and the gradient accumulation agree.
resolve_world() {
  if [ -n "${HOSTFILE:-}" ]; then
    [ -f "$HOSTFILE" ] || die "HOSTFILE=$HOSTFILE: no such file (one 'HOST slots=N' line per node)"
    WORLD=$(hostfile_slots "$HOSTFILE") \
      || die "HOSTFILE=$HOSTFILE: write one 'HOST slots=N' line per node (N GPUs on HOST)"
    LAUNCHER=hostfile WORLD_FROM="HOSTFILE=$HOSTFILE, $WORLD slots"
    return
  fi
  local gpus=${NUM_GPUS:-}
  if [ -z "$gpus" ]; then
    gpus=$(gpu_count)
    WORLD_FROM="$gpus GPUs detected"
  else
    is_count "$gpus" || die "NUM_GPUS=$gpus: expected a whole number of GPUs (0 for CPU)"
    WORLD_FROM="NUM_GPUS=$gpus"
  fi
  if [ "$gpus" -gt 0 ]; then
    WORLD=$gpus LAUNCHER=deepspeed
    return
  fi
  local nproc=${NPROC:-1}
  is_count "$nproc" && [ "$nproc" -ge 1 ] \
    || die "NPROC=$nproc: expected a number of CPU processes >= 1"
  WORLD=$nproc WORLD_FROM="NPROC=$nproc CPU processes, no GPU"
  if [ "$nproc" -gt 1 ]; then LAUNCHER=torchrun; else LAUNCHER=python; fi
}

# flag_value FLAG ARGS...: the value of the last `FLAG V` or `FLAG=V` in ARGS (FLAG spelled with
# underscores or dashes, as the trainer accepts both), empty if none.
flag_value() {
  local flag=$1 dashed=${1//_/-} value=""
  shift
  while [ $# -gt 0 ]; do
    case $1 in
      "$flag" | "$dashed")
        if [ $# -ge 2 ]; then value=$2; fi
        ;;
      "$flag"=* | "$dashed"=*) value=${1#*=} ;;
    esac
    shift
  done
  printf '%s' "$value"
}

# per_device_batch PRESET GLOBAL [EXTRA_ARGS...]: sets PER_DEVICE (the per-device batch), SOURCE
# (where it came from) and KNOB (how to set another). In order: --per_device_train_batch_size
# among the extra arguments, PER_DEVICE_BATCH, or the preset's, lowered to GLOBAL / WORLD when the
# world is too large for it (the per-device batch only sets memory use; the global batch, what
# each optimizer step sees, stays).
per_device_batch() {
  local preset=$1 global=$2
  shift 2
  PER_DEVICE=$(flag_value --per_device_train_batch_size "$@")
  KNOB="--per_device_train_batch_size " SOURCE="from --per_device_train_batch_size"
  if [ -z "$PER_DEVICE" ] && [ -n "${PER_DEVICE_BATCH:-}" ]; then
    PER_DEVICE=$PER_DEVICE_BATCH KNOB="PER_DEVICE_BATCH=" SOURCE="from PER_DEVICE_BATCH"
  fi
  if [ -n "$PER_DEVICE" ]; then
    is_count "$PER_DEVICE" && [ "$PER_DEVICE" -ge 1 ] \
      || die "${KNOB}$PER_DEVICE: expected a whole number of samples >= 1"
    return
  fi
  PER_DEVICE=$preset KNOB="PER_DEVICE_BATCH=" SOURCE="the preset's"
  if [ $((preset * WORLD)) -gt "$global" ]; then
    PER_DEVICE=$((global / WORLD)) SOURCE="the preset's $preset lowered to fit the world size"
  fi
}

# batch_flags DEFAULT_GLOBAL DEFAULT_PER_DEVICE [EXTRA_ARGS...]: sets BATCH to the
# --per_device_train_batch_size and --gradient_accumulation_steps that give
# GLOBAL_BATCH = per-device batch x WORLD x accumulation, or fails saying what would work. An
# explicit --gradient_accumulation_steps among the extra arguments overrides GLOBAL_BATCH.
batch_flags() {
  local global=${GLOBAL_BATCH:-$1} preset=$2
  shift 2
  is_count "$global" && [ "$global" -ge 1 ] \
    || die "GLOBAL_BATCH=$global: expected a whole number of samples >= 1"
  per_device_batch "$preset" "$global" "$@"
  local given
  given=$(flag_value --gradient_accumulation_steps "$@")
  if [ -n "$given" ]; then
    BATCH=(--per_device_train_batch_size "$PER_DEVICE")
    echo "--gradient_accumulation_steps $given given: the global batch is per-device" \
      "$PER_DEVICE x world size $WORLD ($WORLD_FROM) x $given, not GLOBAL_BATCH=$global" >&2
    return
  fi
  if [ "$PER_DEVICE" -lt 1 ] || [ $((global % (PER_DEVICE * WORLD))) -ne 0 ]; then
    die "$(batch_error "$global" "$PER_DEVICE" "$SOURCE" "$KNOB")"
  fi
  local steps=$((global / (PER_DEVICE * WORLD)))
  BATCH=(--per_device_train_batch_size "$PER_DEVICE" --gradient_accumulation_steps "$steps")
  echo "global batch $global = per-device $PER_DEVICE x world size $WORLD ($WORLD_FROM)" \
    "x accumulation $steps" >&2
}

# batch_error GLOBAL PER_DEVICE SOURCE KNOB: why the global batch cannot be kept and what would
# work. SOURCE says where the per-device batch came from; KNOB is how to set another one.
batch_error() {
  local global=$1 per_device=$2 source=$3 knob=$4 d
  echo "cannot keep the global batch: GLOBAL_BATCH=$global must equal per-device batch x" \
    "world size x accumulation steps (a whole number >= 1); here the per-device batch is" \
    "$per_device ($source) and the world size $WORLD ($WORLD_FROM)."
  if [ $((global % WORLD)) -ne 0 ]; then
    echo "Fix: make GLOBAL_BATCH a multiple of the world size (e.g." \
      "GLOBAL_BATCH=$(((global + WORLD - 1) / WORLD * WORLD))) or use a world size that" \
      "divides $global."
    return
  fi
  # the largest per-device batch, not above the current one, that divides GLOBAL_BATCH / WORLD
  d=$((global / WORLD))
  if [ "$per_device" -ge 1 ] && [ "$per_device" -lt "$d" ]; then d=$per_device; fi
  while [ $((global / WORLD % d)) -ne 0 ]; do d=$((d - 1)); done
  echo "Fix: set ${knob}$d (accumulation $((global / (d * WORLD)))), or make GLOBAL_BATCH a" \
    "multiple of the per-device batch x $WORLD."
}

# launch ARGS...: run vitsplit_vlm.vlm.train on WORLD processes with LAUNCHER: DeepSpeed's
# launcher on GPUs (a hostfile for several nodes), torchrun for NPROC>1 CPU processes, plain
# python for one. With DRY_RUN=1 it prints the command (one shell-quoted line) instead.
launch() {
  local port=${MASTER_PORT:-29500} cmd
  case $LAUNCHER in
    hostfile)
      cmd=(deepspeed --hostfile "$HOSTFILE" --master_port "$port"
        --module vitsplit_vlm.vlm.train) ;;
    deepspeed)
      cmd=(deepspeed --num_gpus "$WORLD" --master_port "$port" --module vitsplit_vlm.vlm.train) ;;
    torchrun)
      cmd=(env DS_ACCELERATOR=cpu
        torchrun --nproc_per_node "$WORLD" --master_port "$port" -m vitsplit_vlm.vlm.train) ;;
    python)
      cmd=(env DS_ACCELERATOR=cpu "OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}"
        "$PY" -m vitsplit_vlm.vlm.train) ;;
  esac
  cmd+=("$@")
  if dry_run; then
    local line
    line=$(printf '%q ' "${cmd[@]}")
    echo "${line% }"  # printf left a trailing space
  else
    "${cmd[@]}"
  fi
}

# The embedded default: tiny models and the shapes data set, built once (idempotent).
PLAYGROUND_TRAIN=${PLAYGROUND_TRAIN:-6000}
PLAYGROUND_HELDOUT=${PLAYGROUND_HELDOUT:-200}
PLAYGROUND_FINETUNE=${PLAYGROUND_FINETUNE:-19200}  # stage-2 samples: one pass of 600 steps x 32
PLAYGROUND_MAX_OBJECTS=${PLAYGROUND_MAX_OBJECTS:-3}  # objects per scene: 1 to this
# The playground's ViT-Split connectors (vitsplit, vitsplit_dense) start their 3x3 convs as 1x1
# convs on the tiny 8x8 patch grid (why: vitsplit_vlm/playground/recipes.py); other connectors
# have no such setting, and get no flag, as `recipes.stage_argv` decides.
playground_connector_flags() {
  case "${PROJECTOR:-vitsplit}" in
    vitsplit | vitsplit_dense) echo --vitsplit_conv_init center ;;
  esac
}

prepare_playground() {
  if dry_run; then return; fi
  vitsplit-vlm make-tiny --out playground/tiny --pretrain-llm --pretrain-clip
  vitsplit-vlm make-data shapes --out playground/data/shapes --num-train "$PLAYGROUND_TRAIN" \
    --num-heldout "$PLAYGROUND_HELDOUT" --num-finetune "$PLAYGROUND_FINETUNE" --image-size 112 \
    --max-objects "$PLAYGROUND_MAX_OBJECTS" --seed 0
}

resolve_world
