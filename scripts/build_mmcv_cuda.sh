#!/usr/bin/env bash
# Build an mmcv wheel WITH CUDA ops against the installed (pinned) torch.
#
#   bash scripts/build_mmcv_cuda.sh [WHEEL_DIR]      # default WHEEL_DIR: ./build/mmcv-cuda-wheel
#
# No GPU is needed to build (FORCE_CUDA=1): only nvcc whose major version matches torch's CUDA
# (torch 2.13.0's standard wheel: CUDA 13, so nvcc 13.x) and a gcc that nvcc accepts (<= 15 for
# nvcc 13.0). The wheel it prints last can be installed with `pip install <wheel>` or kept on
# PIP_FIND_LINKS for scripts/install.sh (which calls this script on GPU machines). docs/gpu.md.
#
# What it does beyond `FORCE_CUDA=1 MMCV_WITH_OPS=1 pip wheel mmcv==2.1.0`:
#   * torch's CUDA headers include cusparse.h, cublas_v2.h, cusolverDn.h, ...; a CUDA toolkit
#     installed without its math libraries (only nvcc + cudart) lacks them. The same headers
#     come with the nvidia-* packages that the standard torch wheel installs (nvidia/cu13/include
#     for CUDA 13, nvidia/<lib>/include for CUDA 12). Every such header missing from the
#     toolkit's include dir is linked into a private include dir added through CPATH, so
#     nothing the toolkit has is shadowed.
#   * TORCH_CUDA_ARCH_LIST: the local GPU's architecture when torch sees one, otherwise
#     Ampere and Hopper ("8.0;8.6;9.0"). Override it to add others (e.g. "8.0;8.6;9.0;10.0+PTX").
#   * MAX_JOBS: parallel compile jobs (mmcv's setup.py would use at least 4; default here:
#     number of cores, at most 8 - each nvcc job takes 1-3 GB of memory).
#   * CUDA_HOME: from nvcc itself (below), not from the directory above a wrapper script.
#   * No patch of mmcv's sources is needed: mmcv 2.1.0's setup.py compiles with -std=c++17
#     (after torch's own -std=c++20), which torch 2.13's headers accept with warnings
#     ("default bit-field initializer is a C++20 feature").
#
# Environment: PYTHON (default python), CUDA_HOME (default: from nvcc on PATH, else
# /usr/local/cuda), TORCH_CUDA_ARCH_LIST, MAX_JOBS, MMCV_VERSION (default 2.1.0),
# MMCV_SDIST (a local mmcv-<version>.tar.gz; default: pip downloads it), BUILD_DIR (default:
# a temporary directory, removed afterwards unless KEEP_BUILD=1).
set -euo pipefail

PYTHON="${PYTHON:-python}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MMCV_VERSION="${MMCV_VERSION:-2.1.0}"
WHEEL_DIR="${1:-$ROOT/build/mmcv-cuda-wheel}"

log() { echo "[build-mmcv-cuda] $*" >&2; }
die() { echo "[build-mmcv-cuda] ERROR: $*" >&2; exit 1; }

# --- nvcc and CUDA_HOME ---------------------------------------------------------------------
# torch takes CUDA_HOME from the environment, else from the directory above `nvcc` on PATH: a
# wrapper script there (e.g. /usr/local/bin/nvcc) gives a CUDA_HOME without include/ and lib64/,
# and the link fails. Resolve the toolkit nvcc itself reports (its TOP), and export it.
if [ -z "${CUDA_HOME:-}" ]; then
    if command -v nvcc >/dev/null 2>&1; then
        top="$(cd /tmp && nvcc --dryrun -c -x cu /dev/null -o /dev/null 2>&1 \
            | sed -n 's/^#\$ TOP=//p' | head -n 1 || true)"
        [ -n "$top" ] && [ -d "$top" ] && CUDA_HOME="$(cd "$top" && pwd -P)"
    fi
    if [ -z "${CUDA_HOME:-}" ] || [ ! -e "$CUDA_HOME/include/cuda_runtime.h" ]; then
        CUDA_HOME=/usr/local/cuda
    fi
fi
export CUDA_HOME
NVCC="$CUDA_HOME/bin/nvcc"
[ -x "$NVCC" ] || die "no nvcc at $NVCC. Install the CUDA toolkit (nvcc) matching torch's CUDA
major version (python -c 'import torch; print(torch.version.cuda)') and set CUDA_HOME to it."
export PATH="$CUDA_HOME/bin:$PATH"

read -r torch_version torch_cuda site_nvidia local_arch < <("$PYTHON" - <<'PY'
import os, torch
try:
    import nvidia
    site = list(nvidia.__path__)[0]
except Exception:  # noqa: BLE001
    site = '-'
arch = '-'
if torch.cuda.is_available():
    caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
    arch = ';'.join(f'{a}.{b}' for a, b in caps)
print(torch.__version__, torch.version.cuda or '-', site, arch)
PY
)
[ "$torch_cuda" != "-" ] || die "torch $torch_version is a CPU-only build: mmcv's CUDA ops need the
standard (CUDA) torch wheel; reinstall torch===2.13.0 without a +cpu local version."
nvcc_version="$("$NVCC" --version | sed -n 's/.*release \([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p')"
[ "${nvcc_version%%.*}" = "${torch_cuda%%.*}" ] || die "nvcc $nvcc_version ($NVCC) does not match the
CUDA major version torch $torch_version was built with ($torch_cuda); install CUDA toolkit
${torch_cuda%%.*}.x and set CUDA_HOME to it."
log "torch $torch_version (CUDA $torch_cuda), nvcc $nvcc_version at $CUDA_HOME"

# --- headers the toolkit lacks, taken from torch's nvidia-* packages ---------------------------
shim="$(mktemp -d)"
trap 'rm -rf "$shim"' EXIT
linked=()
for header in cusparse.h cublas_v2.h cublas_api.h cublasLt.h cublas.h cusolverDn.h \
        cusolver_common.h cusolverSp.h curand.h curand_kernel.h cufft.h nvrtc.h; do
    [ -e "$CUDA_HOME/include/$header" ] && continue
    found=""
    if [ "$site_nvidia" != "-" ]; then
        found="$(ls "$site_nvidia"/cu*/include/"$header" "$site_nvidia"/*/include/"$header" \
            2>/dev/null | head -n 1 || true)"
    fi
    if [ -n "$found" ]; then
        ln -s "$found" "$shim/$header"
        linked+=("$header")
    fi
done
# curand_kernel.h pulls in further curand_*.h headers: link the whole family when needed.
if [ -L "$shim/curand_kernel.h" ]; then
    for f in "$(dirname "$(readlink "$shim/curand_kernel.h")")"/curand_*.h; do
        [ -e "$CUDA_HOME/include/$(basename "$f")" ] || ln -sf "$f" "$shim/$(basename "$f")"
    done
fi
if [ ! -e "$CUDA_HOME/include/cusparse.h" ] && [ ! -e "$shim/cusparse.h" ]; then
    die "cusparse.h (included by torch's ATen/cuda headers) is neither in $CUDA_HOME/include nor
in torch's nvidia-* packages. Install the toolkit's cuSPARSE/cuBLAS dev headers
(e.g. cuda-libraries-dev-${torch_cuda%%.*}-x) or reinstall the standard torch wheel."
fi
if [ ${#linked[@]} -gt 0 ]; then
    log "headers missing from the toolkit, taken from torch's nvidia packages: ${linked[*]}"
    export CPATH="$shim${CPATH:+:$CPATH}"
fi

# --- build settings -----------------------------------------------------------------------------
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
    TORCH_CUDA_ARCH_LIST="8.0;8.6;9.0"
    [ "$local_arch" = "-" ] || TORCH_CUDA_ARCH_LIST="$local_arch"
fi
export TORCH_CUDA_ARCH_LIST
if [ -z "${MAX_JOBS:-}" ]; then
    MAX_JOBS="$(nproc 2>/dev/null || echo 2)"
    [ "$MAX_JOBS" -le 8 ] || MAX_JOBS=8
fi
export MAX_JOBS FORCE_CUDA=1 MMCV_WITH_OPS=1
log "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS FORCE_CUDA=1 MMCV_WITH_OPS=1"

# --- source ------------------------------------------------------------------------------------
if [ -n "${BUILD_DIR:-}" ]; then
    mkdir -p "$BUILD_DIR"
else
    BUILD_DIR="$(mktemp -d)"
    [ "${KEEP_BUILD:-0}" = 1 ] || trap 'rm -rf "$shim" "$BUILD_DIR"' EXIT
fi
if [ -z "${MMCV_SDIST:-}" ]; then
    "$PYTHON" -m pip download --no-deps --no-binary :all: -d "$BUILD_DIR" \
        "mmcv==$MMCV_VERSION" >&2 || die "could not download the mmcv $MMCV_VERSION source archive
(pip download --no-binary :all: mmcv==$MMCV_VERSION); set MMCV_SDIST to a local
mmcv-$MMCV_VERSION.tar.gz"
    MMCV_SDIST="$BUILD_DIR/mmcv-$MMCV_VERSION.tar.gz"
fi
[ -f "$MMCV_SDIST" ] || die "no mmcv source archive at $MMCV_SDIST"
src="$BUILD_DIR/mmcv-$MMCV_VERSION"
rm -rf "$src"
tar -xzf "$MMCV_SDIST" -C "$BUILD_DIR"

# --- build -------------------------------------------------------------------------------------
mkdir -p "$WHEEL_DIR"
start=$(date +%s)
log "compiling mmcv $MMCV_VERSION with CUDA ops: 136 sources, the 58 .cu once per" \
    "architecture (long)"
(cd "$src" && "$PYTHON" -m pip wheel --no-build-isolation --no-deps -v -w "$WHEEL_DIR" .) >&2
wheel="$(ls -t "$WHEEL_DIR"/mmcv-"$MMCV_VERSION"-*.whl | head -n 1)"
log "built $wheel ($(du -h "$wheel" | cut -f1)) in $(( ($(date +%s) - start) / 60 )) min"
echo "$wheel"
