#!/usr/bin/env bash
# Install spre-mmdet and its pinned OpenMMLab stack into the current `python`.
#
# Idempotent: if torch + torchvision (with working ops), mmcv (with ops), mmengine, mmdet,
# mmpretrain and pycocotools are already importable at the pinned versions, it only
# (re)registers this checkout (`pip install -e . --no-deps`), which takes seconds. Otherwise, in
# order, every step constrained by requirements/constraints.txt (the exact environment the
# documented figures were measured in):
#   1. torch===2.13.0 and torchvision===0.28.0, the standard builds (they run on CPU too), then
#      setuptools<82 and wheel. `===` is an exact match: `==2.13.0` would also take a local
#      CPU-only build (2.13.0+cpu) that some machines offer first, beside which PyPI's
#      torchvision cannot load its ops, and mmpretrain needs torchvision.
#   2. mmcv==2.1.0 with ops (MMCV_WITH_OPS=1, --no-build-isolation): pip takes a prebuilt wheel
#      if one is reachable through PIP_FIND_LINKS, otherwise it compiles mmcv (15-30 minutes).
#      Where torch sees a GPU, mmcv must have CUDA ops (mmcv.ops.get_compiling_cuda_version()
#      not 'not available', one NMS runs on the GPU): a prebuilt wheel without them (the CPU
#      wheel) is replaced by a wheel scripts/build_mmcv_cuda.sh compiles for the local GPU
#      (nvcc of torch's CUDA major version needed; long, see docs/gpu.md); if that cannot be
#      done the install stops with the reason and the fix.
#   3. mmengine==0.10.7, mmdet==3.3.0, mmpretrain==1.2.0, pycocotools, matplotlib
#   4. this package in editable mode with its test extras and the 'natural' extra (scikit-image)
# Environment: PYTHON (default: python), PIP_FIND_LINKS (dirs/URLs with prebuilt wheels);
# for the CUDA build of mmcv also CUDA_HOME, TORCH_CUDA_ARCH_LIST, MAX_JOBS (see
# scripts/build_mmcv_cuda.sh). CUDA_VISIBLE_DEVICES="" installs for CPU runs on a GPU machine.
set -euo pipefail

PYTHON="${PYTHON:-python}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

TORCH_VERSION="2.13.0"
TORCHVISION_VERSION="0.28.0"
MMCV_VERSION="2.1.0"
MMENGINE_VERSION="0.10.7"
MMDET_VERSION="3.3.0"
MMPRETRAIN_VERSION="1.2.0"
CONSTRAINTS="$ROOT/requirements/constraints.txt"
# what the tests need beyond training: pytest (+ xdist) + hypothesis, the natural-image set's
# scikit-image, the ONNX export's onnx/onnxruntime/onnxscript/mmdeploy
TEST_EXTRAS="tests,natural,onnx"

log() { echo "[install] $*" >&2; }
die() { echo "[install] ERROR: $*" >&2; exit 1; }
trap 'rc=$?; [ $rc -eq 0 ] || echo "[install] FAILED (exit $rc) at line $LINENO: $BASH_COMMAND" >&2' EXIT

command -v "$PYTHON" >/dev/null 2>&1 || die "'$PYTHON' not found (set PYTHON=/path/to/python)"
pip() { "$PYTHON" -m pip "$@"; }
pip_install() { pip install -c "$CONSTRAINTS" "$@"; }

# Prints one line per problem with the pinned stack (nothing when it is all there).
# With "--package" it also checks that spre_mmdet (and the test deps) import from this checkout.
stack_problems() {
    (cd / && "$PYTHON" - "$ROOT" "$TORCH_VERSION" "$TORCHVISION_VERSION" "$MMCV_VERSION" \
        "$MMENGINE_VERSION" "$MMDET_VERSION" "$MMPRETRAIN_VERSION" "$@" <<'PY'
import os, sys
(root, want_torch, want_torchvision, want_mmcv, want_mmengine, want_mmdet,
 want_mmpretrain) = sys.argv[1:8]
problems = []
def check(mod, want=None):
    try:
        m = __import__(mod, fromlist=['_'])
    except Exception as e:  # noqa: BLE001
        problems.append(f'{mod}: not importable ({type(e).__name__}: {e})')
        return None
    if want is not None:
        have = getattr(m, '__version__', '?').split('+')[0]
        if have != want:
            problems.append(f'{mod}: have {have}, want {want}')
    return m
torch = check('torch', want_torch)
if torch is not None and '+cpu' in torch.__version__:
    problems.append(f'torch: {torch.__version__} is the CPU-only local build, beside which '
                    'torchvision cannot load its ops; want the standard build')
vision = check('torchvision', want_torchvision)
if vision is not None:
    try:  # the compiled ops, not only the Python package
        vision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)
    except Exception as e:  # noqa: BLE001
        problems.append(f'torchvision: ops do not load ({type(e).__name__}: {e})')
check('mmcv', want_mmcv)
ops = check('mmcv.ops')
if ops is not None and torch is not None and torch.cuda.is_available():
    compiled = ops.get_compiling_cuda_version()
    if compiled == 'not available':
        problems.append('mmcv.ops: built without CUDA ops, but torch sees a GPU')
check('mmengine', want_mmengine)
check('mmdet', want_mmdet)
check('mmpretrain', want_mmpretrain)
check('pycocotools.coco')
check('matplotlib')
if '--package' in sys.argv and not problems:
    pkg = check('spre_mmdet')
    if pkg is not None:
        here = os.path.realpath(os.path.dirname(pkg.__file__))
        if not here.startswith(os.path.realpath(root) + os.sep):
            problems.append(f'spre_mmdet: imported from {here}, not from this checkout')
    for test_dependency in ('pytest', 'xdist', 'hypothesis', 'skimage', 'onnx', 'onnxruntime',
                            'onnxscript', 'mmdeploy'):
        check(test_dependency)  # the test extras: tests, natural, onnx
print('\n'.join(problems))
PY
    )
}

problems="$(stack_problems --package)"
if [ -z "$problems" ]; then
    log "torch/mmcv(ops)/mmengine/mmdet/pycocotools at the pinned versions and spre_mmdet"
    log "installed from this checkout: nothing to do"
    exit 0
fi
if [ -z "$(stack_problems)" ]; then
    log "pinned stack present; installing spre_mmdet (editable) with the test extras"
    pip_install --no-build-isolation -e "$ROOT[$TEST_EXTRAS]"
    exit 0
fi

log "missing or mismatched:"
echo "$problems" | sed 's/^/[install]   /' >&2

log "step 1/4: torch===$TORCH_VERSION, torchvision===$TORCHVISION_VERSION (standard builds), setuptools<82, wheel"
pip_install "torch===$TORCH_VERSION" "torchvision===$TORCHVISION_VERSION" 'setuptools<82' wheel

log "step 2/4: mmcv==$MMCV_VERSION with ops"
# Prints why the installed mmcv cannot serve this machine (nothing when it can): no mmcv of the
# pinned version with ops, or (torch sees a GPU) ops without CUDA or failing on the GPU.
mmcv_problem() {
    (cd / && "$PYTHON" - "$MMCV_VERSION" <<'PY'
import sys
want = sys.argv[1]
try:
    import mmcv
    from mmcv.ops import get_compiling_cuda_version, nms
except Exception as e:  # noqa: BLE001
    sys.exit(print(f'mmcv with ops does not import ({type(e).__name__}: {e})'))
if mmcv.__version__ != want:
    sys.exit(print(f'mmcv {mmcv.__version__} installed, want {want}'))
import torch
if torch.cuda.is_available():
    compiled = get_compiling_cuda_version()
    if compiled == 'not available':
        sys.exit(print(f'mmcv {want} has no CUDA ops (get_compiling_cuda_version() is '
                       f"'not available') but torch sees {torch.cuda.get_device_name(0)}"))
    try:
        boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.]], device='cuda')
        nms(boxes, torch.tensor([0.9, 0.8], device='cuda'), 0.5)
        torch.cuda.synchronize()
    except Exception as e:  # noqa: BLE001
        sys.exit(print(f'mmcv {want} CUDA ops (CUDA {compiled}) fail on '
                       f'{torch.cuda.get_device_name(0)}: {str(e).splitlines()[0]}'))
PY
    )
}
cuda_visible="$(cd / && "$PYTHON" -c 'import torch; print(int(torch.cuda.is_available()))')"
if [ "$cuda_visible" = 1 ]; then
    log "  torch sees a GPU: mmcv needs CUDA ops (get_compiling_cuda_version() != 'not available')"
fi
problem="$(mmcv_problem || true)"
if [ -z "$problem" ]; then
    log "  mmcv $MMCV_VERSION with ops already installed$([ "$cuda_visible" = 1 ] && echo ' (CUDA ops run on this GPU)')"
else
    log "  $problem"
    wheel_probe="$(mktemp -d)"
    if pip download --no-deps --only-binary=:all: --no-index -d "$wheel_probe" \
            "mmcv==$MMCV_VERSION" >/dev/null 2>&1; then
        log "  using a prebuilt mmcv wheel found through PIP_FIND_LINKS"
        MMCV_WITH_OPS=1 pip_install --no-build-isolation "mmcv==$MMCV_VERSION"
    elif [ "$cuda_visible" != 1 ]; then
        log "  no prebuilt mmcv $MMCV_VERSION wheel found (set PIP_FIND_LINKS to a directory holding one);"
        log "  BUILDING mmcv FROM SOURCE WITH OPS: this takes 15-30 minutes"
        MMCV_WITH_OPS=1 pip_install --no-build-isolation "mmcv==$MMCV_VERSION"
    fi
    rm -rf "$wheel_probe"
    before="$problem"
    problem="$(mmcv_problem || true)"
    if [ -n "$problem" ] && [ "$cuda_visible" = 1 ]; then
        [ "$problem" = "$before" ] || log "  $problem"
        log "  BUILDING mmcv $MMCV_VERSION WITH CUDA OPS for this GPU (scripts/build_mmcv_cuda.sh);"
        log "  this takes long: every .cu file is compiled once per architecture (docs/gpu.md)"
        wheel_dir="$ROOT/build/mmcv-cuda-wheel"
        if ! wheel="$(PYTHON="$PYTHON" bash "$ROOT/scripts/build_mmcv_cuda.sh" "$wheel_dir")"; then
            die "mmcv $MMCV_VERSION with CUDA ops could not be built (the reason is above).
torch sees a GPU, and a CPU-only mmcv would fail at the first NMS/RoIAlign on it. What to do:
install the CUDA toolkit whose major version matches torch's
(\`$PYTHON -c 'import torch; print(torch.version.cuda)'\`) with a gcc its nvcc accepts (<= 15
for nvcc 13.0), set CUDA_HOME to it and rerun; or put an mmcv $MMCV_VERSION wheel built with
CUDA ops for this torch and Python on PIP_FIND_LINKS; or, for CPU runs only, rerun with
CUDA_VISIBLE_DEVICES=\"\" (and train with SPRE_MMDET_CPU=1; docs/gpu.md)."
        fi
        pip_install "$wheel"  # mmcv's dependencies, if missing
        pip_install --no-deps --force-reinstall "$wheel"  # replaces a CPU-only mmcv 2.1.0
        log "  installed $wheel (kept: put $wheel_dir on PIP_FIND_LINKS to reuse it)"
        problem="$(mmcv_problem || true)"
    fi
    [ -z "$problem" ] || die "mmcv is installed but still not usable here: $problem"
fi

log "step 3/4: mmengine==$MMENGINE_VERSION, mmdet==$MMDET_VERSION, mmpretrain==$MMPRETRAIN_VERSION, pycocotools, matplotlib"
pip_install "mmengine==$MMENGINE_VERSION" "mmdet==$MMDET_VERSION" \
    "mmpretrain==$MMPRETRAIN_VERSION" pycocotools matplotlib

log "step 4/4: spre_mmdet (editable) with the test extras ($TEST_EXTRAS)"
pip_install --no-build-isolation -e "$ROOT[$TEST_EXTRAS]"

problems="$(stack_problems)"
[ -z "$problems" ] || die "installation finished but the stack is still not right:
$problems"
log "done"
