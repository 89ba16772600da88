#!/usr/bin/env bash
# What a GPU host checks (docs/benchmarks.md, "A GPU host"), in parts that fit a short
# lease; each part writes its log into OUT and stops itself at its time limit.
#   tests    the CUDA tests, then training, fine-tuning and `ofa run` tests with the GPU
#            as their default device
#   run      `ofa run` of the quick preset on the GPU, end to end
#   scratch  the fashion-mnist preset's winners trained from scratch on the GPU
# Usage: bash bench/cuda_check.sh PART OUT [SECONDS]; Fashion-MNIST must be installed
# (or its four IDX files lie in .fm/, copied into place here).
set -u -o pipefail
part=${1:?tests, run or scratch}; out=${2:?output folder}; limit=${3:-300}
mkdir -p "$out"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
fm=/usr/share/datasets/fashion-mnist
if [ ! -f $fm/train-images-idx3-ubyte.gz ] && [ -d .fm ]; then mkdir -p $fm && cp .fm/*.gz $fm/; fi
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  $py -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda)'
  nproc; } > "$out/host.txt" 2>&1
case $part in
tests)
  timeout "$limit" $py -m pytest -q -p no:cacheprovider --durations=10 tests/test_cuda.py \
    tests/test_finetune.py tests/test_training.py tests/test_pipeline.py 2>&1 | tee "$out/tests.txt" ;;
run)
  timeout "$limit" $py -m onceforall.cli run --config fashion-mnist-quick \
    --data fashion-mnist --out /tmp/demo-cuda --device cuda 2>&1 | tee "$out/run_quick.txt"
  echo "ofa run: ${SECONDS} s" | tee -a "$out/run_quick.txt"
  cp /tmp/demo-cuda/specialized.json "$out/" 2>/dev/null ;;
scratch)
  # the two not yet trained from scratch on a CPU first, then the one that was
  for target in "latency_ms<=0.519" "latency_ms<=0.904" "latency_ms<=1.29"; do
    timeout $((limit - SECONDS)) $py bench/finetune_recipe.py --config fashion-mnist \
      --device cuda --archs-from bench/results/finetune_fm_1203.jsonl --no-finetune \
      --targets "$target" --results "$out/finetune_fm_cuda.jsonl" 2>&1 | tee -a "$out/scratch.txt"
  done ;;
*) echo "unknown part $part: tests, run or scratch"; exit 2 ;;
esac
