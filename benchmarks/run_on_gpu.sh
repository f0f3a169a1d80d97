#!/usr/bin/env bash
# The GPU call of resflow-fast, on a machine with an NVIDIA GPU and no network:
#
#   bash benchmarks/run_on_gpu.sh "$OUT"            the full call: over within 510 s
#   bash benchmarks/run_on_gpu.sh "$OUT" --quick    the rerun after a fix: over within 240 s
#
# Three stages against one deadline counted from the script's start, each under a hard `timeout`,
# so the call ends in time whatever hangs; everything is written into the folder given as it
# happens (and echoed), so a call cut short still returns what it did:
#   0. setup: nvidia-smi; install (pip --no-index --no-build-isolation --no-deps -e .; where that
#      fails or does not import, a linked copy of the installed layout on PYTHONPATH); an import
#      check                                                               -> call.log
#   1. the CUDA tests (pytest -m cuda), the kernels' parity tests first, each failure printed the
#      moment it happens; at most TESTS_S seconds (150; --quick 75)        -> cuda-tests.log
#   2. the benchmark (python -m resflow_fast.benchmarks): the acceptance rows first (the kernels;
#      bench19m and paper at 1024^2, batch 1: torch.compile, fast, fast + CUDA graph, fused
#      "auto"), then (not --quick) the per-layer conv table for CONV_BUDGET_S seconds (60) and the
#      rest of the matrix; rows that would not end before the deadline are skipped, with the reason.
#      results.json, results.md and BENCHMARKS.md (the repository's file with this card's section
#      replaced: copy it back) are rewritten after every row              -> bench.log
# Six files in all. The last lines printed are results.md, the failed tests and each stage's outcome.
# Exit status: 0 when the tests passed and the benchmark finished; 1 otherwise; 2 for a bad
# argument or an output folder that cannot be written; 3 when the package does not import.
#
# Optional environment: DEADLINE_S, TESTS_S, SKIP_TESTS=1 (no stage 1), TEST_PATHS (stage 1's paths),
# INSTALL=link (no pip: the linked layout only), CONV_BUDGET_S (0 leaves the conv table out),
# BENCH_ARGS (more benchmark arguments, split on spaces), PYTHON (default python3).
set -u

usage="usage: bash benchmarks/run_on_gpu.sh OUT_DIR [--quick]   (OUT_DIR defaults to \$OUT)"
OUT_DIR=${1:-${OUT:-}}
MODE=full
case "${2:-}" in
    "") ;;
    --quick) MODE=quick ;;
    *) echo "run_on_gpu.sh: unknown option '$2'; $usage" >&2; exit 2 ;;
esac
if [ -z "$OUT_DIR" ]; then
    echo "run_on_gpu.sh: no output folder: give one, or set OUT; $usage" >&2
    exit 2
fi
# shellcheck source=benchmarks/gpu_setup.sh
source "$(dirname "${BASH_SOURCE[0]}")/gpu_setup.sh"
OUT_DIR=$(writable_out_dir run_on_gpu.sh "$OUT_DIR") || exit 2
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 2

# shellcheck disable=SC2016  # CALL is the command as typed, "$OUT" and all
if [ "$MODE" = quick ]; then
    DEADLINE_S=${DEADLINE_S:-240}
    TESTS_S=${TESTS_S:-75}
    CALL='bash benchmarks/run_on_gpu.sh "$OUT" --quick'
else
    DEADLINE_S=${DEADLINE_S:-510}
    TESTS_S=${TESTS_S:-150}
    CALL='bash benchmarks/run_on_gpu.sh "$OUT"'
fi
END_MARGIN_S=${END_MARGIN_S:-15}  # kept free at the end: a timeout's 10 s grace before its kill, the last prints
MIN_BENCH_S=${MIN_BENCH_S:-90}    # stage 1 is cut short to leave the benchmark at least this
MIN_STAGE_S=${MIN_STAGE_S:-30}    # a stage with less time than this left does not start
BENCH_MARGIN_S=${BENCH_MARGIN_S:-8}  # the benchmark plans its rows to end this long before its kill
PY=${PYTHON:-python3}

export PYTHONUNBUFFERED=1  # every line reaches the logs as it is printed
export PYTHONSAFEPATH=1    # `python -m` must not put the repository first on sys.path: its resflow_fast/
                           # has no kernels/, reference/ or benchmarks/ (they install into it)
unset TRITON_INTERPRET     # compiled kernels: the benchmark refuses to time the interpreter
RESFLOW_CACHE=$(mktemp -d)  # the fused conv's "auto" decisions: measured in this call, never read from another
export RESFLOW_CACHE

LOG="$OUT_DIR/call.log"
: > "$LOG"
say() { printf '[%4d s] %s\n' "$SECONDS" "$*" | tee -a "$LOG"; }
left() { echo $(( DEADLINE_S - END_MARGIN_S - SECONDS )); }  # seconds a stage may still take

# stage LOG LIMIT SIGNAL COMMAND...: COMMAND in the foreground under `timeout` (SIGNAL at LIMIT
# seconds, a kill 10 s later), its output written straight into LOG and echoed by a follower.
# No pipe: a pipe would wait for every process holding its end (a compiler worker, say) to exit.
stage() {
    local log=$1 limit=$2 signal=$3 follower status
    shift 3
    : > "$log"
    tail -n +1 -s 0.2 -f "$log" &
    follower=$!
    timeout -s "$signal" -k 10 "$limit" "$@" >> "$log" 2>&1 < /dev/null
    status=$?
    sleep 1  # the follower's last lines
    kill "$follower" 2> /dev/null
    wait "$follower" 2> /dev/null
    return "$status"
}

say "resflow-fast GPU call ($MODE): over within ${DEADLINE_S} s; writing into $OUT_DIR"

# -- stage 0: the card, the install, an import check ------------------------------------------------
if command -v nvidia-smi > /dev/null; then
    timeout -k 5 20 nvidia-smi >> "$LOG" 2>&1 || say "nvidia-smi failed or timed out (exit $?)"
else
    say "nvidia-smi: not found"
fi

install_resflow "$LOG" 'import resflow_fast.kernels, resflow_fast.reference, resflow_fast.benchmarks.bench as b
print("imports", b.__name__, "from", b.__file__)'
if [ -z "$installed" ]; then
    say "resflow_fast does not import; nothing can run (call.log has the error):"
    tail -n 20 "$LOG"
    exit 3
fi
say "setup done: resflow_fast imports through $installed"

# -- stage 1: the CUDA tests -------------------------------------------------------------------------
tests_result="not run"
tests_ok=0
if [ -n "${SKIP_TESTS:-}" ]; then
    say "stage 1 skipped (SKIP_TESTS)"
    tests_result="not run in this call (SKIP_TESTS)"
    tests_ok=1
else
    limit=$TESTS_S
    if [ $(( $(left) - MIN_BENCH_S )) -lt "$limit" ]; then
        limit=$(( $(left) - MIN_BENCH_S ))
    fi
    if [ -n "${TEST_PATHS:-}" ]; then
        read -r -a paths <<< "$TEST_PATHS"
    else
        paths=(tests/kernels)  # the kernels' parity tests first
        for entry in tests/*/ tests/test_*.py; do
            entry=${entry%/}
            if [ -e "$entry" ] && [ "$entry" != tests/kernels ]; then paths+=("$entry"); fi
        done
    fi
    if [ "$limit" -lt "$MIN_STAGE_S" ]; then
        say "stage 1 skipped: only $(left) s left"
        tests_result="not run: no time left after setup"
    else
        say "stage 1: pytest -m cuda ${paths[*]} (at most $limit s) -> cuda-tests.log"
        started=$SECONDS
        # SIGINT first: pytest stops and prints its summary; 10 s later a kill, for a hung kernel
        stage "$OUT_DIR/cuda-tests.log" "$limit" INT "$PY" -m pytest -m cuda -v -p no:cacheprovider \
            -p resflow_fast.benchmarks.stream_failures --durations=15 "${paths[@]}"
        status=$?
        summary=$(grep -E '^=+ .*[0-9]+ (passed|failed|error|errors|skipped|deselected).* in [0-9.]+s' \
                  "$OUT_DIR/cuda-tests.log" | tail -n 1 | sed -E 's/^=+ //; s/ =+$//')
        summary=${summary:-no summary line}
        case $status in
            0) tests_result="$summary"; tests_ok=1 ;;
            124|137) tests_result="stopped at the $limit s limit ($summary); cuda-tests.log has what ran" ;;
            *) tests_result="pytest exit $status: $summary" ;;
        esac
        say "stage 1 done in $(( SECONDS - started )) s: $tests_result"
    fi
fi

# -- stage 2: the benchmark --------------------------------------------------------------------------
bench_status="not run"
limit=$(left)
if [ "$limit" -lt "$MIN_STAGE_S" ]; then
    say "stage 2 skipped: only $limit s left"
else
    cp BENCHMARKS.md "$OUT_DIR/BENCHMARKS.md"
    end_by=$(( $(date +%s) + limit - BENCH_MARGIN_S ))
    args=(--out "$OUT_DIR" --end-by "$end_by" --write-benchmarks-md "$OUT_DIR/BENCHMARKS.md"
          --call "$CALL" --cuda-tests "$tests_result")
    if [ "$MODE" = quick ]; then
        args+=(--acceptance-only --window-s 1 --max-reps 50)
    elif [ "${CONV_BUDGET_S:-60}" -gt 0 ]; then
        args+=(--conv-layers --conv-budget-s "${CONV_BUDGET_S:-60}")
    fi
    read -r -a extra <<< "${BENCH_ARGS:-}"
    say "stage 2: python -m resflow_fast.benchmarks (killed at $limit s, rows planned to end by then less $BENCH_MARGIN_S s) -> bench.log"
    started=$SECONDS
    stage "$OUT_DIR/bench.log" "$limit" TERM "$PY" -m resflow_fast.benchmarks "${args[@]}" ${extra[@]+"${extra[@]}"}
    status=$?
    case $status in
        0) bench_status="finished" ;;
        124|137) bench_status="stopped at the $limit s limit: results.json holds every row it finished" ;;
        *) bench_status="exit $status (bench.log says why)" ;;
    esac
    say "stage 2 done in $(( SECONDS - started )) s: $bench_status"
fi

# -- the end: the table, then each stage's outcome ----------------------------------------------------
if [ -f "$OUT_DIR/results.md" ]; then cat "$OUT_DIR/results.md"; fi
# pytest's summary lines, or (a run killed before its summary) the streamed reports' headers
failed=$(grep -oE '^(FAILED|ERROR) [^ ]+|FAILED \((setup|call|teardown)\) [^ ]+' "$OUT_DIR/cuda-tests.log" 2> /dev/null \
         | sed -E 's/^FAILED \((setup|call|teardown)\) /FAILED /' | sort -u | head -n 40)
if [ -n "$failed" ]; then
    say "failed tests (cuda-tests.log has each one's report):"
    echo "$failed"
fi
say "tests: $tests_result"
say "benchmark: $bench_status"
say "done in $SECONDS s; in $OUT_DIR: $(cd "$OUT_DIR" && echo *)"
if [ "$tests_ok" = 1 ] && [ "$bench_status" = finished ]; then exit 0; fi
exit 1
