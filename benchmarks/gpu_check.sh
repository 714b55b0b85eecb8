#!/usr/bin/env bash
# Short real training on one GPU: ViT-B-16 in amp_bf16 with the clip, euclip and meru presets on synthetic data
# (30 steps, batch 256, 224 px), then a few steps each in amp (fp16 + loss scaling), pure_bf16 and fp32. Prints
# samples/s (whole run and steady state), the share of time spent waiting for data, peak GPU memory and the loss
# trend per run. Expected wall time on an H200: about 3 minutes (torch.compile off); hard limit 8 minutes.
#
#   bash benchmarks/gpu_check.sh                                   # the GPU check
#   DEVICE=cpu STEPS=2 MODEL=tiny bash benchmarks/gpu_check.sh      # CPU fallback: seconds, checks the plumbing
#
# Settings (environment): DEVICE (cuda), MODEL (ViT-B-16), STEPS (30), BATCH (256 on cuda, 16 on cpu),
# IMAGE_SIZE (224 on cuda, the model's own on cpu), RENDER_SIZE (64 on cuda: synthetic images are rendered small
# by the workers and upsampled on the GPU, since rendering 224 px images cannot keep up with an H200), WORKERS
# (min(12, cores - 2) on cuda, 0 on cpu), PRECISION (amp_bf16 on cuda, fp32 on cpu), EXTRA_STEPS (10 on cuda, 0 on
# cpu; 0 skips the extra precision runs), COMPILE (0; 1 adds a torch.compile run, which needs minutes to compile),
# PRESETS ("clip euclip meru"), TIME_LIMIT (480 seconds), PYTHON (.venv/bin/python if present, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICE=${DEVICE:-cuda}
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
CORES=$(nproc 2>/dev/null || echo 4)
if [[ "$DEVICE" == cuda ]]; then
    BATCH=${BATCH:-256}; IMAGE_SIZE=${IMAGE_SIZE:-224}; RENDER_SIZE=${RENDER_SIZE:-64}; PRECISION=${PRECISION:-amp_bf16}
    WORKERS=${WORKERS:-$(( CORES > 14 ? 12 : (CORES > 2 ? CORES - 2 : 1) ))}; EXTRA_STEPS=${EXTRA_STEPS:-10}
else
    BATCH=${BATCH:-16}; IMAGE_SIZE=${IMAGE_SIZE:-}; RENDER_SIZE=${RENDER_SIZE:-}; PRECISION=${PRECISION:-fp32}
    WORKERS=${WORKERS:-0}; EXTRA_STEPS=${EXTRA_STEPS:-0}
fi
args=(--device "$DEVICE" --model "${MODEL:-ViT-B-16}" --steps "${STEPS:-30}" --batch-size "$BATCH"
      --precision "$PRECISION" --workers "$WORKERS" --extra-steps "$EXTRA_STEPS")
read -r -a presets <<< "${PRESETS:-clip euclip meru}"
args+=(--presets "${presets[@]}")
[[ -n "$IMAGE_SIZE" ]] && args+=(--image-size "$IMAGE_SIZE")
[[ -n "$RENDER_SIZE" ]] && args+=(--render-size "$RENDER_SIZE")
[[ "${COMPILE:-0}" == 1 ]] && args+=(--compile)

if [[ "$WORKERS" != 0 && -d /dev/shm ]]; then
    # DataLoader workers hand batches over through shared memory; a small /dev/shm (Docker's 64 MB default)
    # makes them die with "bus error". Print it, so that such a failure explains itself.
    echo "shared memory: $(df -h /dev/shm | awk 'NR == 2 {print $4 " free of " $2}') (/dev/shm)"
fi
# Nothing may be downloaded: the models are built with random weights and the tokenizer's vocabulary ships
# with open_clip. The offline switches make an accidental download fail at once instead of hanging.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# SIGTERM first (the trainer checkpoints and exits), SIGKILL 30 s later if it is still running.
exec timeout --kill-after=30 "${TIME_LIMIT:-480}" "$PYTHON" benchmarks/gpu_check.py "${args[@]}"
