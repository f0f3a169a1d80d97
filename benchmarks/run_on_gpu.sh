#!/usr/bin/env bash
# The one device call: CUDA tests, then every timing of benchmarks/gpu_check.py.
#   bash benchmarks/run_on_gpu.sh "$OUT"        (on a machine with an NVIDIA GPU, no network needed)
# Writes logs and results.{json,md} into the folder given (at most 6 files).
set -u
OUT=${1:-${OUT:-gpu-out}}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TRITON_INTERPRET=0
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
# No network there: build without isolation, use the machine's own torch/triton/safetensors.
if ! python3 -m pip install --no-build-isolation --no-deps -q -e . > "$OUT/install.log" 2>&1; then
    echo "pip install failed (see install.log); using a symlink layout" | tee -a "$OUT/install.log"
    mkdir -p /tmp/rf/resflow_fast
    for f in resflow_fast/*; do ln -sfn "$PWD/$f" /tmp/rf/resflow_fast/; done
    for d in reference kernels benchmarks; do ln -sfn "$PWD/$d" "/tmp/rf/resflow_fast/$d"; done
    export PYTHONPATH=/tmp/rf
fi
timeout "${TEST_TIMEOUT:-240}" python3 -m pytest -q -p no:cacheprovider tests/kernels tests/resflow_fast \
    > "$OUT/cuda-tests.log" 2>&1
echo "tests exit $?" | tee -a "$OUT/cuda-tests.log"
tail -n 15 "$OUT/cuda-tests.log"
python3 -m resflow_fast.benchmarks.gpu_check --out "$OUT" --budget-s "${BUDGET_S:-330}" ${GPU_CHECK_ARGS:-} \
    > "$OUT/gpu_check.log" 2>&1
echo "gpu_check exit $?"
cat "$OUT/results.md" 2>/dev/null
