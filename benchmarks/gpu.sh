#!/usr/bin/env bash
# The whole GPU suite in one call (< 8 min on one H100), results under $OUT.
#
#   OUT=/some/dir benchmarks/gpu.sh                 # on a CUDA machine, from the repository root
#   GEOMED_GPU_DRYRUN=1 OUT=/tmp/gpu-dry benchmarks/gpu.sh    # tiny sizes on CPU: checks the script
#
# Steps (each with its own time limit; a failing step is recorded and the next one runs):
#   1. machine:   nvidia-smi, torch/CUDA versions                          -> machine.txt
#   2. tests:     pytest -m gpu tests/test_gpu.py (CUDA vs CPU vs MONAI)   -> tests.log, tests.xml
#   3. overhead:  benchmarks/overhead.py on cuda, 8192², dense + 40 % nodata -> overhead.log
#   4. throughput: bare fp16 channels_last loop vs ours vs MONAI (input and output on the GPU),
#                 8192² smp Unet-resnet18; with 2+ GPUs ours on cuda:0, on cuda:1 and on both
#                 at once (segment devices=..., target >= 1.8x one, labels equal)
#                                                                           -> throughput.json
#   5. train:     configs/train_water.yaml and configs/train_brats.yaml, 3 epochs, CUDA AMP +
#                 GradScaler: loss decreases, checkpoint reloads, fp16 labels match fp32
#                                                                           -> train_*/gpu_train.json
# summary.txt lists every step with its exit status and seconds.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
cd "$ROOT"
OUT="${OUT:-/tmp/geomed-gpu}"
mkdir -p "$OUT"
PY="${PY:-python3}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
DRY="${GEOMED_GPU_DRYRUN:-0}"

if [[ "$DRY" == "1" ]]; then
  DEVICE=cpu; SIZE=1024; TSIZE=512; EPOCHS=3; STEPS="--steps 8"; TRAIN_CONFIGS="configs/train_water.yaml"
  LIMIT_TESTS=300; LIMIT_OVERHEAD=300; LIMIT_TP=300; LIMIT_TRAIN=300
else
  DEVICE=cuda; SIZE=8192; TSIZE=8192; EPOCHS=3; STEPS=""
  TRAIN_CONFIGS="configs/train_water.yaml configs/train_brats.yaml"
  LIMIT_TESTS=90; LIMIT_OVERHEAD=120; LIMIT_TP=90; LIMIT_TRAIN=70
fi

SUMMARY="$OUT/summary.txt"
echo "geomed-seg GPU suite $(date -u +%FT%TZ) dryrun=$DRY device=$DEVICE" > "$SUMMARY"

step() {  # step NAME LIMIT_S CMD...
  local name="$1" limit="$2"; shift 2
  local t0; t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc $(( $(date +%s) - t0 ))s" | tee -a "$SUMMARY"
  return 0
}

# 1. machine
{
  nvidia-smi 2>/dev/null || echo "no nvidia-smi"
  "$PY" -c 'import torch, platform; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(), "devices", torch.cuda.device_count(), "python", platform.python_version())'
  nproc; free -g 2>/dev/null | head -2
} > "$OUT/machine.txt" 2>&1
NGPU=$("$PY" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)
echo "gpus=$NGPU" | tee -a "$SUMMARY"
if [[ "$DRY" != "1" && "$NGPU" == "0" ]]; then
  echo "no CUDA device: run with GEOMED_GPU_DRYRUN=1 for the CPU dry run" | tee -a "$SUMMARY"
  exit 2
fi

# 2. GPU tests (skipped, never passed, without CUDA)
step tests "$LIMIT_TESTS" "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py \
  --junitxml="$OUT/tests.xml"

# 3. engine overhead on the device (input generated once under /tmp)
step overhead "$LIMIT_OVERHEAD" "$PY" benchmarks/overhead.py --device "$DEVICE" --size "$SIZE" \
  --runs floor,ours,monai --no-write --workdir /tmp/geomed-overhead

# 4. throughput: bare loop vs ours vs MONAI (+ each device when there are 2+)
DEVICES=""
if [[ "$NGPU" -ge 2 ]]; then DEVICES="--devices cuda:0,cuda:1"; fi
step throughput "$LIMIT_TP" "$PY" benchmarks/gpu_throughput.py --device "$DEVICE" --size "$TSIZE" \
  $DEVICES --json "$OUT/throughput.json"

# 5. demo training with CUDA AMP + GradScaler
for cfg in $TRAIN_CONFIGS; do
  name="train_$(basename "$cfg" .yaml | sed 's/^train_//')"
  step "$name" "$LIMIT_TRAIN" "$PY" benchmarks/gpu_train.py --config "$cfg" --out "$OUT/$name" \
    --device "$DEVICE" --epochs "$EPOCHS" $STEPS
done

echo "done $(date -u +%FT%TZ)" | tee -a "$SUMMARY"
