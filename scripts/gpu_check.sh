#!/usr/bin/env bash
# The GPU check in one short call (docs/benchmark.md, "One-call GPU check"): install the carried
# wheels, then run tools/analysis_tools/gpu_check.py under a hard limit; one JSON, one log.
#
#     bash scripts/gpu_check.sh [OUT_JSON]       # default work_dirs/gpu_check/gpu_check.json
#     bash scripts/gpu_check.sh --download-wheels   # where pip has network: fill .whl/
#
# Carried wheels: a GPU machine without network gets what it lacks as wheels in .whl/ at the
# repository root (ignored by git; carry that path with the tree). They are installed with
# `pip install --no-index --no-deps --target $GPU_CHECK_SITE`, which goes first on PYTHONPATH
# (after the checkout). --download-wheels fetches them for the GPU machine's Python
# (GPU_CHECK_PYTHON_VERSION, default 3.12): mmengine and its pure-Python needs (0.8 MB), for
# the AMP step's AmpOptimWrapper. Do not carry mmdet without an mmcv whose CUDA ops were built
# for that machine's Python, torch and GPU: importing spre_mmdet would then stop with a stack
# error. Without them the benchmark uses a torchvision R-50 backbone + FPN (said in the JSON).
#
# Writes OUT_JSON (rewritten after every step) and OUT_JSON's name with .log (this output).
# Exit status: gpu_check.py's (0 passed, 1 a step not ok, 2 no CUDA GPU, 124 stopped by the
# limit: the JSON keeps the steps done), or 137 if it had to be killed.
#
# Environment: PYTHON (default python3), GPU_CHECK_BUDGET (seconds for the whole call, wheels
# included; default 360), GPU_CHECK_WHEELS (default .whl), GPU_CHECK_SITE (default
# /tmp/gpu_check_site).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
BUDGET="${GPU_CHECK_BUDGET:-360}"
WHEELS="${GPU_CHECK_WHEELS:-.whl}"
SITE="${GPU_CHECK_SITE:-/tmp/gpu_check_site}"
#: what the GPU machine lacks (its image has torch, torchvision, numpy, pytest, onnx, ...)
PINS=(mmengine==0.10.7 addict==2.4.0 termcolor==3.3.0 yapf==0.43.0 platformdirs==4.14.8)

if [ "${1:-}" = "--download-wheels" ]; then
    exec "$PYTHON" -m pip download --no-deps --only-binary=:all: \
        --python-version "${GPU_CHECK_PYTHON_VERSION:-3.12}" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$WHEELS" "${PINS[@]}"
fi

OUT="${1:-work_dirs/gpu_check/gpu_check.json}"
mkdir -p "$(dirname "$OUT")" || exit 1
LOG="${OUT%.json}.log"
: > "$LOG"
log() { echo "[gpu_check.sh +${SECONDS}s] $*" | tee -a "$LOG"; }

shopt -s nullglob
wheels=("$WHEELS"/*.whl)
if ((${#wheels[@]})); then
    log "installing ${#wheels[@]} carried wheel(s) from $WHEELS/ into $SITE"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" "${wheels[@]}" 2>&1 | tee -a "$LOG" \
        || log "FAILED to install the carried wheels: the steps that need them will say so"
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
else
    log "no wheels in $WHEELS/: using what is installed"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

left=$((BUDGET - SECONDS))
if ((left < 60)); then
    log "only ${left}s left of GPU_CHECK_BUDGET=${BUDGET}s: not enough to run"
    exit 1
fi
# the check plans its steps in left - 25 s (interpreter start, last write); the hard limit
# sends SIGTERM at left - 5 s (the check records it and exits 124), SIGKILL 5 s later
log "running the check: budget $((left - 25))s, hard limit $((left - 5))s"
PYTHONUNBUFFERED=1 timeout --signal=TERM --kill-after=5 $((left - 5)) \
    "$PYTHON" tools/analysis_tools/gpu_check.py --out "$OUT" --budget-s $((left - 25)) 2>&1 \
    | tee -a "$LOG"
rc=${PIPESTATUS[0]}
log "exit status $rc; JSON: $OUT; log: $LOG"
exit "$rc"
