#!/usr/bin/env bash
# The one device call: the CUDA tests, then the benchmark table (python -m resflow_fast.benchmarks).
#   bash benchmarks/run_on_gpu.sh "$OUT"                 tests, then as much of the table as fits
#   SKIP_TESTS=1 bash benchmarks/run_on_gpu.sh "$OUT"    the table alone, with the whole 8 minutes
# On a machine with an NVIDIA GPU and no network. Writes into the folder given: nvidia-smi.txt,
# install.log, cuda-tests.log, bench.log, results.json, results.md, and BENCHMARKS.md (the repo's
# copy with this card's section replaced: copy it back over the repo's file).
# DEADLINE_S (default 560) bounds the whole script: the benchmark gets what the tests left, less a
# margin for the last row; its rows run issue 4's first, so a short budget still measures those.
# CONV_BUDGET_S (default 90, whole seconds; 0 leaves it out) is taken off that budget for issue 7's
# per-layer table (--conv-layers: every 3x3 conv shape of the paper U-Net at 1024^2, fused_conv3x3
# against cuDNN + fused norm), which the same benchmark process runs after the main table, into the
# same results.md: its shapes must end by --budget-s + --conv-budget-s from the start, so a main
# table that overruns eats into the conv table, never past the deadline. A BUDGET_S given is the
# main table's alone (the conv table still comes on top).
set -u
OUT=${1:-${OUT:-gpu-out}}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET  # the benchmark refuses to time the interpreter
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
# No network there: build without isolation, use the machine's own torch/triton/safetensors.
if ! python3 -m pip install --no-build-isolation --no-deps -q -e . > "$OUT/install.log" 2>&1; then
    echo "pip install failed (see install.log); using a symlink layout" | tee -a "$OUT/install.log"
    mkdir -p /tmp/rf/resflow_fast
    for f in resflow_fast/*; do ln -sfn "$PWD/$f" /tmp/rf/resflow_fast/; done
    for d in reference kernels benchmarks; do ln -sfn "$PWD/$d" "/tmp/rf/resflow_fast/$d"; done
    export PYTHONPATH=/tmp/rf
fi
if [ -z "${SKIP_TESTS:-}" ]; then
    # benchmarks/: the pytest-benchmark suites' CUDA cases, each run once (--benchmark-disable)
    timeout "${TEST_TIMEOUT:-180}" python3 -m pytest -q -p no:cacheprovider tests/kernels tests/resflow_fast \
        benchmarks > "$OUT/cuda-tests.log" 2>&1
    echo "tests exit $?" | tee -a "$OUT/cuda-tests.log"
    tail -n 15 "$OUT/cuda-tests.log"
fi
CONV_BUDGET_S=${CONV_BUDGET_S:-90}
BUDGET_S=${BUDGET_S:-$(( ${DEADLINE_S:-560} - SECONDS - 40 - CONV_BUDGET_S ))}
[ "$BUDGET_S" -gt 440 ] && BUDGET_S=440  # the table is planned for 8 minutes
CONV_ARGS=""
[ "$CONV_BUDGET_S" -gt 0 ] && CONV_ARGS="--conv-layers --conv-budget-s $CONV_BUDGET_S"
cp BENCHMARKS.md "$OUT/BENCHMARKS.md" 2>/dev/null
python3 -m resflow_fast.benchmarks --out "$OUT" --budget-s "$BUDGET_S" --write-benchmarks-md "$OUT/BENCHMARKS.md" \
    $CONV_ARGS ${BENCH_ARGS:-} > "$OUT/bench.log" 2>&1
echo "benchmark exit $? (budget ${BUDGET_S} s + conv table ${CONV_BUDGET_S} s)"
cat "$OUT/results.md" 2>/dev/null || tail -n 40 "$OUT/bench.log"
