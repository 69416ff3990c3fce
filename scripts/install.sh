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
#      if one is reachable through PIP_FIND_LINKS, otherwise it compiles mmcv (15-30 minutes)
#   3. mmengine==0.10.7, mmdet==3.3.0, mmpretrain==1.2.0, pycocotools, matplotlib
#   4. this package in editable mode with its test extras
# Environment: PYTHON (default: python), PIP_FIND_LINKS (dirs/URLs with prebuilt wheels).
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
check('mmcv.ops')
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
    check('pytest')
    check('hypothesis')
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
    log "pinned stack present; installing spre_mmdet (editable, no deps) and test deps"
    pip install --no-build-isolation --no-deps -e .
    (cd / && "$PYTHON" -c 'import pytest, hypothesis' 2>/dev/null) || pip_install pytest hypothesis
    exit 0
fi

log "missing or mismatched:"
echo "$problems" | sed 's/^/[install]   /' >&2

log "step 1/4: torch===$TORCH_VERSION, torchvision===$TORCHVISION_VERSION (standard builds), setuptools<82, wheel"
pip_install "torch===$TORCH_VERSION" "torchvision===$TORCHVISION_VERSION" 'setuptools<82' wheel

log "step 2/4: mmcv==$MMCV_VERSION with ops"
if "$PYTHON" -c "import mmcv, mmcv.ops, sys; sys.exit(mmcv.__version__ != '$MMCV_VERSION')" 2>/dev/null; then
    log "  mmcv $MMCV_VERSION with ops already installed"
else
    wheel_probe="$(mktemp -d)"
    if pip download --no-deps --only-binary=:all: --no-index -d "$wheel_probe" \
            "mmcv==$MMCV_VERSION" >/dev/null 2>&1; then
        log "  using a prebuilt mmcv wheel found through PIP_FIND_LINKS"
    else
        log "  no prebuilt mmcv $MMCV_VERSION wheel found (set PIP_FIND_LINKS to a directory holding one);"
        log "  BUILDING mmcv FROM SOURCE WITH OPS: this takes 15-30 minutes"
    fi
    rm -rf "$wheel_probe"
    MMCV_WITH_OPS=1 pip_install --no-build-isolation "mmcv==$MMCV_VERSION"
    "$PYTHON" -c 'import mmcv.ops' || die "mmcv was installed but mmcv.ops does not import (ops not built?)"
fi

log "step 3/4: mmengine==$MMENGINE_VERSION, mmdet==$MMDET_VERSION, mmpretrain==$MMPRETRAIN_VERSION, pycocotools, matplotlib"
pip_install "mmengine==$MMENGINE_VERSION" "mmdet==$MMDET_VERSION" \
    "mmpretrain==$MMPRETRAIN_VERSION" pycocotools matplotlib

log "step 4/4: spre_mmdet (editable) with test extras"
pip_install --no-build-isolation -e '.[tests]'

problems="$(stack_problems)"
[ -z "$problems" ] || die "installation finished but the stack is still not right:
$problems"
log "done"
