#!/usr/bin/env bash
# Usage: [GPUS=8] [GPUS_PER_NODE=8] [CPUS_PER_TASK=5] [SRUN_ARGS=...] \
#            tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [train.py args...]
# mmdet 3.3's tools/slurm_train.sh: one srun task per GPU (GPUS tasks, GPUS_PER_NODE of them
# per node, so GPUS=16 GPUS_PER_NODE=8 spans 2 nodes), each running tools/train.py with
# --launcher slurm; mmengine's slurm launcher takes rank, world size and local rank from
# SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID and the master from the first host of
# SLURM_NODELIST (port: MASTER_PORT, default 29500). Differences from mmdet's copy: the tool is
# found next to this script (any working directory works), PYTHON (default python) picks the
# interpreter, and arguments keep their quoting. Without CUDA (a CPU test), spre_mmdet's compat
# layer runs the slurm launcher on gloo.
set -euo pipefail
set -x

if [ $# -lt 4 ]; then
    echo "Usage: $0 PARTITION JOB_NAME CONFIG WORK_DIR [train.py args...]" >&2
    exit 2
fi
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
WORK_DIR=$4
GPUS=${GPUS:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
SRUN_ARGS=${SRUN_ARGS:-""}
TOOLS_DIR="$(cd "$(dirname "$0")" && pwd)"

# shellcheck disable=SC2086  # SRUN_ARGS is split into srun options, as in mmdet's script
PYTHONPATH="$TOOLS_DIR/..${PYTHONPATH:+:$PYTHONPATH}" \
srun -p "$PARTITION" \
    --job-name="$JOB_NAME" \
    --gres=gpu:"$GPUS_PER_NODE" \
    --ntasks="$GPUS" \
    --ntasks-per-node="$GPUS_PER_NODE" \
    --cpus-per-task="$CPUS_PER_TASK" \
    --kill-on-bad-exit=1 \
    $SRUN_ARGS \
    "${PYTHON:-python}" -u "$TOOLS_DIR/train.py" "$CONFIG" --work-dir="$WORK_DIR" \
    --launcher="slurm" "${@:5}"
