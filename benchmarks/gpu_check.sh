#!/usr/bin/env bash
# All GPU measurements in one go (~5-8 minutes), for sessions lent a GPU machine.
# Needs the shared dataset beside the repo (../shared/datasets/cats_vs_dogs_small) for extraction;
# training throughput uses synthetic images. Output: one table per benchmark, also saved to $OUT
# (or ./gpu_check.log) so it survives a timeout.
set -uo pipefail
cd "$(dirname "$0")/.."
log="${OUT:-.}/gpu_check.log"
export PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'bf16', torch.cuda.is_bf16_supported())"
  echo "== 1. VGG16 150 px fine-tuning (head + block5), fp32 vs bf16-mixed, channels_last, torch.compile"
  timeout 300 python benchmarks/training_throughput.py --backbone vgg16 --image-size 150 --batch-size 64 \
    --steps 50 --warmup 5 --unfreeze block5 --accelerator gpu --compile
  echo "== 2. Feature extraction throughput (plain fp32 loop vs FeatureExtractor)"
  timeout 200 python benchmarks/extraction_throughput.py --backbone vgg16 efficientnet_lite0 --images 2000 \
    --batch-size 128 --device cuda
} 2>&1 | tee "$log"
