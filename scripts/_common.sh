# Shared by scripts/*.sh: the Python to use, the launcher, and the embedded playground.
# shellcheck shell=bash

if [ -x .venv/bin/python ]; then
  export PATH="$PWD/.venv/bin:$PATH"
fi
PY=${PY:-python}
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TOKENIZERS_PARALLELISM=false

gpu_count() {
  "$PY" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0
}

# launch ARGS...: run vitsplit_vlm.vlm.train on every process, choosing the launcher from the
# machine: DeepSpeed's launcher on GPUs (HOSTFILE=... for several nodes), torchrun for NPROC>1
# CPU processes, plain python for one process.
launch() {
  local gpus=${NUM_GPUS:-$(gpu_count)}
  if [ "$gpus" -gt 0 ] || [ -n "${HOSTFILE:-}" ]; then
    if [ -n "${HOSTFILE:-}" ]; then
      deepspeed --hostfile "$HOSTFILE" --master_port "${MASTER_PORT:-29500}" \
        --module vitsplit_vlm.vlm.train "$@"
    else
      deepspeed --num_gpus "$gpus" --master_port "${MASTER_PORT:-29500}" \
        --module vitsplit_vlm.vlm.train "$@"
    fi
  elif [ "${NPROC:-1}" -gt 1 ]; then
    export DS_ACCELERATOR=cpu
    torchrun --nproc_per_node "$NPROC" --master_port "${MASTER_PORT:-29500}" \
      -m vitsplit_vlm.vlm.train "$@"
  else
    export DS_ACCELERATOR=cpu OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
    "$PY" -m vitsplit_vlm.vlm.train "$@"
  fi
}

# The embedded default: tiny models and the shapes data set, built once (idempotent).
PLAYGROUND_TRAIN=${PLAYGROUND_TRAIN:-6000}
PLAYGROUND_HELDOUT=${PLAYGROUND_HELDOUT:-200}
prepare_playground() {
  vitsplit-vlm make-tiny --out playground/tiny --pretrain-llm
  vitsplit-vlm make-data shapes --out playground/data/shapes \
    --num-train "$PLAYGROUND_TRAIN" --num-heldout "$PLAYGROUND_HELDOUT" --image-size 112 --seed 0
}
