#!/usr/bin/env bash
# One GPU, one run, one table (~9 minutes on an H200): ViT-B-16 in amp_bf16, batch 256, on synthetic data, with the
# clip, euclip and meru presets and both losses (contrastive and sigmoid: --loss sigmoid), against OpenCLIP 3.3's own
# trainer compiled on its synthetic data (the baseline), then `euclip bench loss` at 32,768 pairs (time and memory of
# every geometry's loss against OpenCLIP's ClipLoss/SigLipLoss), then the euclip preset with torch.compile. Prints
# samples/s (steady state), the ratio to the baseline, the share of time waiting for data, peak GPU memory and the
# loss trend per run. A run that would not fit in TIME_BUDGET is skipped (listed as such); the table always prints.
#
#   bash benchmarks/gpu_check.sh                                   # the GPU check
#   DEVICE=cpu STEPS=2 MODEL=tiny bash benchmarks/gpu_check.sh      # CPU fallback: seconds, checks the plumbing
#
# Settings (environment): DEVICE (cuda), MODEL (ViT-B-16), STEPS (30), BATCH (256 on cuda, 16 on cpu),
# IMAGE_SIZE (224 on cuda, the model's own on cpu), RENDER_SIZE (64 on cuda: synthetic images are rendered small
# by the workers and upsampled on the GPU, since rendering 224 px images cannot keep up with an H200), WORKERS
# (min(12, cores - 2) on cuda, 0 on cpu), PRECISION (amp_bf16 on cuda, fp32 on cpu), PRESETS ("clip euclip meru"),
# LOSSES ("contrastive sigmoid"), OPENCLIP (1 on cuda, 0 on cpu: OpenCLIP's trainer, compiled, needs an OpenCLIP
# MODEL; OPENCLIP_MODEL names another), LOSS_BATCH (32768 on cuda, 0 = skip on cpu), LOSS_ROWS (`euclip bench loss --only` prefixes; all rows),
# COMPILE (1 on cuda, 0 on cpu), EXTRA_STEPS (0; >0 adds runs in the other precisions, amp fp16, pure bf16 and
# fp32, of that many steps), TIME_BUDGET (480 s), TIME_LIMIT (560 s, the hard limit), PYTHON (.venv/bin/python if
# present, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICE=${DEVICE:-cuda}
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
CORES=$(nproc 2>/dev/null || echo 4)
if [[ "$DEVICE" == cuda ]]; then
    BATCH=${BATCH:-256}; IMAGE_SIZE=${IMAGE_SIZE:-224}; RENDER_SIZE=${RENDER_SIZE:-64}; PRECISION=${PRECISION:-amp_bf16}
    WORKERS=${WORKERS:-$(( CORES > 14 ? 12 : (CORES > 2 ? CORES - 2 : 1) ))}
    OPENCLIP=${OPENCLIP:-1}; LOSS_BATCH=${LOSS_BATCH:-32768}; COMPILE=${COMPILE:-1}
else
    BATCH=${BATCH:-16}; IMAGE_SIZE=${IMAGE_SIZE:-}; RENDER_SIZE=${RENDER_SIZE:-}; PRECISION=${PRECISION:-fp32}
    WORKERS=${WORKERS:-0}; OPENCLIP=${OPENCLIP:-0}; LOSS_BATCH=${LOSS_BATCH:-0}; COMPILE=${COMPILE:-0}
fi
args=(--device "$DEVICE" --model "${MODEL:-ViT-B-16}" --steps "${STEPS:-30}" --batch-size "$BATCH"
      --precision "$PRECISION" --workers "$WORKERS" --extra-steps "${EXTRA_STEPS:-0}"
      --loss-batch "$LOSS_BATCH" --time-budget "${TIME_BUDGET:-480}")
read -r -a presets <<< "${PRESETS:-clip euclip meru}"
read -r -a losses <<< "${LOSSES:-contrastive sigmoid}"
args+=(--presets "${presets[@]}" --losses "${losses[@]}")
if [[ -n "${LOSS_ROWS:-}" ]]; then
    IFS=',' read -r -a loss_rows <<< "$LOSS_ROWS"   # comma-separated, as the labels contain spaces
    args+=(--loss-rows "${loss_rows[@]}")
fi
[[ -n "$IMAGE_SIZE" ]] && args+=(--image-size "$IMAGE_SIZE")
[[ -n "$RENDER_SIZE" ]] && args+=(--render-size "$RENDER_SIZE")
[[ "$OPENCLIP" == 1 ]] && args+=(--openclip)
[[ -n "${OPENCLIP_MODEL:-}" ]] && args+=(--openclip-model "$OPENCLIP_MODEL")
[[ "$COMPILE" == 1 ]] && args+=(--compile)

if [[ "$WORKERS" != 0 && -d /dev/shm ]]; then
    # DataLoader workers hand batches over through shared memory; a small /dev/shm (Docker's 64 MB default)
    # makes them die with "bus error". Print it, so that such a failure explains itself.
    echo "shared memory: $(df -h /dev/shm | awk 'NR == 2 {print $4 " free of " $2}') (/dev/shm)"
fi
# Nothing may be downloaded: the models are built with random weights and the tokenizer's vocabulary ships
# with open_clip. The offline switches make an accidental download fail at once instead of hanging.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# SIGTERM first (the trainer checkpoints and exits), SIGKILL 30 s later if it is still running.
exec timeout --kill-after=30 "${TIME_LIMIT:-560}" "$PYTHON" benchmarks/gpu_check.py "${args[@]}"
