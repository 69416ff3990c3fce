#!/usr/bin/env bash
# One-call GPU check of the CUDA path: the CUDA tests, a few training steps of every method on
# CUDA, the 2:4 sparse benchmark at 800x1333 fp16 (batch 1 and 8) and the largest R-50 GEMMs,
# all written to ONE JSON. Run it once on a machine with an NVIDIA GPU (sm80+; written for one
# H200), from the repository root:
#
#     bash scripts/gpu_check.sh [OUT_DIR]            # default OUT_DIR: work_dirs/gpu_check
#
# Writes OUT_DIR/gpu_check.json (device, versions, every figure, every failure),
# OUT_DIR/cuda_tests.xml (JUnit XML of the CUDA tests) and OUT_DIR/gpu_check.log (this output).
# Exit status: 0 every check passed; 1 a check failed (listed at the end and in the JSON);
# 2 no CUDA GPU visible (refused at once, no JSON); 124 the time limit stopped it (the
# JSON holds the steps done so far). The work itself is
# `python3 tools/analysis_tools/gpu_check.py`; docs/benchmark.md ("One-call GPU check") says
# what each step checks. The checkout is put on PYTHONPATH: spre_mmdet need not be installed.
#
# Environment:
#   PYTHON             interpreter (default: python3)
#   GPU_CHECK_TIMEOUT  hard limit in seconds for the whole run, wheels included (default: 480);
#                      the check itself stops starting new work 30 s before it
#   GPU_CHECK_WHEELS   folder of carried wheels (default: .whl)
#   GPU_CHECK_SITE     where carried wheels are installed (default: /tmp/gpu_check_site)
#
# What the GPU machine needs: a CUDA build of torch (with cuSPARSELt), torchvision, numpy,
# pytest and hypothesis. Nothing from OpenMMLab: training, GEMMs and the benchmark use this
# package's plain-PyTorch core on a torchvision ResNet-50.
#
# mmdet and mmcv. The detector-level benchmark (tools/benchmark_sparse.py --scope detector on
# the R-50 Mask R-CNN deploy model of configs/mask_rcnn_r50_spre_2x4.py) needs mmengine, mmdet
# AND mmcv 2.1.0 WITH ITS CUDA OPS (RoIAlign, nms) built for the GPU machine's Python, torch
# and CUDA. If `import mmdet` fails or mmcv's ops do not run on the GPU, the check says so in a
# banner on stdout and in the JSON ("scope": "backbone", "scope_reason": ...) and benchmarks
# the 2:4 deploy form of a SpRe R-50 backbone + dense FPN (torchvision) instead, per layer and
# end to end (backbone, backbone+neck). Everything else runs the same either way.
#
# Carried wheels. A GPU machine without network gets missing packages as wheels in .whl/ at
# the repository root (ignored by git): this script installs every .whl/*.whl with
# `pip install --no-index --no-deps --target $GPU_CHECK_SITE` and puts that folder on
# PYTHONPATH. For the detector scope, prepare .whl/ on any machine with network (a CPU is
# fine), in the repository root, for the GPU machine's Python (3.12 here; change
# --python-version to match):
#
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#         --implementation cp --platform manylinux_2_28_x86_64 \
#         --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#         mmengine==0.10.7 mmdet==3.3.0 addict==2.4.0 termcolor==3.3.0 yapf==0.43.0 \
#         platformdirs==4.14.8 terminaltables==3.1.10 shapely==2.2.0 pycocotools==2.0.11
#
# (5.6 MB; mmengine's and mmdet's other needs, numpy, scipy, matplotlib, pyyaml, rich, six,
# tqdm and opencv, are assumed present.) mmcv 2.1.0 itself has no binary wheel on PyPI (pip
# download finds none) and we know of no prebuilt one for torch 2.11 and Python 3.12: build one
# on a machine with the GPU machine's exact Python, torch and CUDA toolkit (15-30 minutes),
#
#     MMCV_WITH_OPS=1 FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="9.0" \
#         python3 -m pip wheel --no-deps --no-build-isolation -w .whl mmcv==2.1.0
#
# and put it in .whl/ too. Without an mmcv wheel the other wheels change nothing but what the
# JSON records about mmengine/mmdet; the run then uses the backbone scope.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
LIMIT="${GPU_CHECK_TIMEOUT:-480}"
WHEELS="${GPU_CHECK_WHEELS:-.whl}"
SITE="${GPU_CHECK_SITE:-/tmp/gpu_check_site}"
OUT="${1:-work_dirs/gpu_check}"
START=$(date +%s)

log() { echo "[gpu_check.sh $(date +%H:%M:%S)] $*"; }

mkdir -p "$OUT" || { echo "gpu_check.sh: cannot create $OUT" >&2; exit 1; }
LOG="$OUT/gpu_check.log"
: > "$LOG"

shopt -s nullglob
wheels=("$WHEELS"/*.whl)
if ((${#wheels[@]})); then
    log "installing ${#wheels[@]} carried wheel(s) from $WHEELS/ into $SITE" | tee -a "$LOG"
    if ! "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
            --upgrade --target "$SITE" "${wheels[@]}" 2>&1 | tee -a "$LOG"; then
        log "FAILED to install the carried wheels" | tee -a "$LOG"
        exit 1
    fi
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
else
    log "no wheels carried in $WHEELS/: mmdet/mmcv only if already installed" | tee -a "$LOG"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

left=$((LIMIT - ($(date +%s) - START)))
budget=$((left - 30))
if ((budget < 60)); then
    log "only ${left}s left of GPU_CHECK_TIMEOUT=${LIMIT}s: not enough to run" | tee -a "$LOG"
    exit 1
fi
log "running the check (hard limit ${left}s, check budget ${budget}s); log: $LOG" | tee -a "$LOG"
PYTHONUNBUFFERED=1 timeout --signal=TERM --kill-after=20 "$left" \
    "$PYTHON" tools/analysis_tools/gpu_check.py --out "$OUT" --budget-s "$budget" 2>&1 \
    | tee -a "$LOG"
rc=${PIPESTATUS[0]}
case $rc in
    0) log "PASSED" ;;
    2) log "REFUSED: no CUDA GPU visible" ;;
    124|137) log "STOPPED by the ${LIMIT}s limit: $OUT/gpu_check.json holds the steps done" ;;
    *) log "FAILED (exit status $rc): see the failures above and in the JSON" ;;
esac 2>&1 | tee -a "$LOG"
if [ -f "$OUT/gpu_check.json" ]; then
    log "JSON: $OUT/gpu_check.json" | tee -a "$LOG"
fi
exit "$rc"
