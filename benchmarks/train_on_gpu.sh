#!/usr/bin/env bash
# Training on a GPU machine whose minutes are counted, resumed from a checkpoint carried in, on a machine with no network:
#
#   bash benchmarks/train_on_gpu.sh "$OUT" [RUN_DIR]      over within DEADLINE_S (480) seconds
#
# RUN_DIR (default runs/photo-default) is a training run of `resflow train`: its newest
# checkpoint (step-*/) is copied into OUT/run and training continues there with --resume, so the
# run's recorded options (data folder, degradations, schedule, loss weight) carry over; the data
# folder the record names must have travelled too (e.g. runs/photos-v2).
# A slim checkpoint (record.json and weights.safetensors, no train_state.pt: half the size, for a
# machine that takes only so much with it) cannot be resumed: the call then starts a new run in
# OUT/run from its EMA weights with a fresh optimizer (--init-from) and the options it records
# (--options-from), counting steps from 0. Make one with
#   mkdir -p SLIM/step-N && cp RUN_DIR/step-N/record.json RUN_DIR/step-N/weights.safetensors SLIM/step-N/
# On the GPU the trainer runs its step under bf16 autocast with fp32 weights and optimizer state.
# The call then writes:
#   OUT/train.log                    the install, the trainer's output and its samples per second
#   OUT/run/step-XXXXXXXX/           the resumable checkpoint (each file under 16 MiB): copy it back
#                                    into RUN_DIR and `resflow train --out-dir RUN_DIR --resume` goes on
#                                    (from a slim checkpoint: into a run folder of its own)
#   OUT/weights-fp16.safetensors     the EMA weights as fp16, for `resflow restore --model`
#
# Optional environment: DEADLINE_S (480), BATCH_SIZE (64), DATA_WORKERS (12), CHECKPOINT_EVERY
# (250), STEPS (the run's step target, default as recorded), DEVICE (cuda), PYTHON (default
# python3), INSTALL=link (no pip). The training gets the deadline less
# the time setup took and a margin for its last checkpoint and the export.
# Exit status: 0 when training and the export finished; 1 otherwise; 2 for a bad argument;
# 3 when the package does not import.
set -u

usage="usage: bash benchmarks/train_on_gpu.sh OUT_DIR [RUN_DIR]   (OUT_DIR defaults to \$OUT)"
OUT_DIR=${1:-${OUT:-}}
RUN_DIR=${2:-runs/photo-default}
if [ -z "$OUT_DIR" ] || [ $# -gt 2 ]; then
    echo "train_on_gpu.sh: $usage" >&2
    exit 2
fi
# shellcheck source=benchmarks/gpu_setup.sh
source "$(dirname "${BASH_SOURCE[0]}")/gpu_setup.sh"
OUT_DIR=$(writable_out_dir train_on_gpu.sh "$OUT_DIR") || exit 2
if [ -d "$RUN_DIR" ]; then RUN_DIR=$(cd "$RUN_DIR" && pwd); fi  # relative to where the call was made
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 2
# shellcheck disable=SC2012  # checkpoint folder names are step-<digits>
latest=$(ls -d "$RUN_DIR"/step-[0-9]* 2>/dev/null | sort | tail -n 1)
if [ -z "$latest" ] || [ ! -f "$latest/record.json" ]; then
    echo "train_on_gpu.sh: '$RUN_DIR' holds no training checkpoint (step-*/record.json); carry one in" >&2
    exit 2
fi
if [ ! -f "$latest/weights.safetensors" ]; then
    echo "train_on_gpu.sh: '$latest' has no weights.safetensors; carry the whole checkpoint folder" >&2
    exit 2
fi
if [ -f "$latest/train_state.pt" ]; then START=resume; else START=slim; fi
PY=${PYTHON:-python3}
# The data folders the record names must be here before any minute is spent on setup.
missing=$("$PY" -c 'import json, os, sys
data = json.load(open(sys.argv[1])).get("train", {}).get("data") or []
print(" ".join(d for d in ([data] if isinstance(data, str) else data) if d != "procedural" and not os.path.isdir(d)))' \
          "$latest/record.json") || missing=""
if [ -n "$missing" ]; then
    echo "train_on_gpu.sh: the run trains on $missing (its record.json says so), which is not here; carry it in" >&2
    exit 2
fi

DEADLINE_S=${DEADLINE_S:-480}
END_MARGIN_S=${END_MARGIN_S:-60}  # after training: the last checkpoint, the export, a timeout's grace
export PYTHONUNBUFFERED=1
export PYTHONSAFEPATH=1  # `python -m` must not find the repository's resflow_fast/ first (see gpu_setup.sh)
unset TRITON_INTERPRET

LOG="$OUT_DIR/train.log"
: > "$LOG"
say() { printf '[%4d s] %s\n' "$SECONDS" "$*" | tee -a "$LOG"; }

say "resflow-fast GPU training ($START): $latest -> $OUT_DIR/run; over within ${DEADLINE_S} s"
if command -v nvidia-smi > /dev/null; then
    timeout -k 5 20 nvidia-smi >> "$LOG" 2>&1 || say "nvidia-smi failed or timed out (exit $?)"
fi
install_resflow "$LOG" 'import torch, resflow_fast.reference.train as t
print("imports", t.__name__, "from", t.__file__, "; CUDA", torch.cuda.is_available())'
if [ -z "$installed" ]; then
    say "resflow_fast does not import; nothing can run (train.log has the error):"
    tail -n 20 "$LOG"
    exit 3
fi
say "setup done: resflow_fast imports through $installed"

if [ "$START" = resume ]; then
    if ! { mkdir -p "$OUT_DIR/run" && cp -r "$latest" "$OUT_DIR/run/"; }; then
        say "cannot copy $latest into $OUT_DIR/run"
        exit 1
    fi
    start_args=(--resume)
else
    say "$latest has no train_state.pt: a new run from its EMA weights, fresh optimizer, its recorded options"
    start_args=(--init-from "$latest" --options-from "$latest")
fi
minutes=$(awk -v s=$(( DEADLINE_S - END_MARGIN_S - SECONDS )) 'BEGIN { printf "%.2f", s / 60 }')
say "training for at most $minutes min: batch ${BATCH_SIZE:-64}, ${DATA_WORKERS:-12} data workers"
started=$SECONDS
# --no-compile: a CPU phase's --compile is recorded in the checkpoint carried here, and compiling
# for the GPU would spend minutes of the budget before the first step.
timeout -s INT -k 10 $(( DEADLINE_S - SECONDS - 20 )) "$PY" -m resflow_fast train --out-dir "$OUT_DIR/run" \
    "${start_args[@]}" --no-compile \
    --device "${DEVICE:-cuda}" --batch-size "${BATCH_SIZE:-64}" ${STEPS:+--steps "$STEPS"} --data-workers "${DATA_WORKERS:-12}" \
    --checkpoint-every "${CHECKPOINT_EVERY:-250}" --keep-last 1 --max-minutes "$minutes" --quiet >> "$LOG" 2>&1
status=$?
say "training ended (exit $status) after $(( SECONDS - started )) s: $(grep -E '^trained to step' "$LOG" | tail -n 1)"

export_ok=0
if timeout -k 5 60 "$PY" -m resflow_fast export "$OUT_DIR/run" "$OUT_DIR/weights-fp16.safetensors" --half --overwrite >> "$LOG" 2>&1; then
    export_ok=1
    say "exported the EMA weights as fp16: $OUT_DIR/weights-fp16.safetensors"
else
    say "export failed (train.log has why)"
fi
say "done in $SECONDS s; in $OUT_DIR: $(cd "$OUT_DIR" && echo * run/*)"
if [ "$status" = 0 ] && [ "$export_ok" = 1 ]; then exit 0; fi
exit 1
