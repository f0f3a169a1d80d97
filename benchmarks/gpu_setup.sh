# shellcheck shell=bash
# The install both GPU scripts share (sourced, not run): the device machine has no network, so
# the package goes in without dependencies, and where pip cannot install it (or the install does
# not import) a linked copy of the installed layout goes on PYTHONPATH instead.
#
#   writable_out_dir NAME DIR    makes DIR if need be and prints it as an absolute path; where it
#                                cannot be written, says so as script NAME and fails
#   install_resflow LOG CHECK    installs, then runs the Python code CHECK as the import check;
#                                sets `installed` to how it got in (empty: nothing imports)
#
# install_resflow needs REPO (the checkout), PY (the interpreter) and say (a logger) from the
# sourcing script.

writable_out_dir() {
    if ! mkdir -p "$2" 2>/dev/null || ! touch "$2/.write-check" 2>/dev/null; then
        echo "$1: cannot write into the output folder '$2'" >&2
        return 2
    fi
    rm -f "$2/.write-check"
    (cd "$2" && pwd)
}

link_layout() {  # $1: a new folder; inside it resflow_fast/ as installed: the package plus reference/, kernels/, benchmarks/
    local root="$1/resflow_fast" entry
    mkdir -p "$root" || return 1
    for entry in "$REPO"/resflow_fast/*; do
        ln -s "$entry" "$root/" || return 1
    done
    ln -s "$REPO/reference" "$root/reference" && ln -s "$REPO/kernels" "$root/kernels" \
        && ln -s "$REPO/benchmarks" "$root/benchmarks"
}

install_resflow() {
    local log=$1 check=$2 layout
    installed=""
    if [ "${INSTALL:-pip}" != link ]; then
        if timeout -k 5 120 "$PY" -m pip install --no-index --no-build-isolation --no-deps -q -e . >> "$log" 2>&1 \
                && timeout -k 5 90 "$PY" -c "$check" >> "$log" 2>&1; then
            installed="pip install -e ."
        else
            say "pip install failed or does not import ($(basename "$log") has its output): using the linked layout"
        fi
    fi
    if [ -z "$installed" ]; then
        layout="$(mktemp -d)/src"
        if link_layout "$layout"; then
            export PYTHONPATH="$layout${PYTHONPATH:+:$PYTHONPATH}"
            timeout -k 5 90 "$PY" -c "$check" >> "$log" 2>&1 && installed="the linked layout at $layout on PYTHONPATH"
        fi
    fi
}
