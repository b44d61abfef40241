#!/usr/bin/env bash
# One config on a Cloud TPU VM slice, every step of it: create the slice,
# install the package on every worker, put the data set in a bucket, launch
# (one process per host), follow the log, fetch the results, delete it.
#
#   export TPU_NAME=mhkd-v4-32 ZONE=us-central2-b ACCELERATOR_TYPE=v4-32
#   export BUCKET=gs://my-bucket
#   experiments/tpu/tpu.sh create     # the slice (add SPOT=1 for spot VMs)
#   experiments/tpu/tpu.sh install    # Python 3.11 venv, package, jax[tpu]
#   experiments/tpu/tpu.sh data       # local TFDS cifar100 -> $BUCKET/tfds
#   CONFIG=cifar100_resnet32x4_resnet8x4.py:teacher \
#     WORKDIR=$BUCKET/runs/cifar100/resnet32x4 \
#     experiments/tpu/tpu.sh launch   # the run on all workers (resumes)
#   experiments/tpu/tpu.sh logs       # follow worker 0's log
#   WORKDIR=... experiments/tpu/tpu.sh fetch  # results, history, TensorBoard
#   experiments/tpu/tpu.sh delete     # the slice (the bucket stays)
#
# The TPU VM images (Ubuntu 22.04) ship Python 3.10 and the package needs
# 3.11 or newer, so `install` puts uv in the system Python's user site and
# makes it create ~/mhkd_venv with Python $PYTHON_VERSION (3.11; a uv-managed
# CPython, fetched when the image has none); every later command on the
# workers runs that venv's python.
# WORKDIR is required by launch and fetch: a config does not name its own
# workdir (a teacher and a `ce` student are both method ce), so give the
# one of the workdir convention (docs/configuration.md), under the bucket:
# $BUCKET/runs/<data set>/<teacher>, .../<teacher>_heads or
# .../<teacher>-<student>/<method>. orbax and TensorBoard write there from
# every host, and a preempted slice resumes from it: re-create the slice,
# install, launch again. TEACHER=gs://... sets config.teacher.init (the
# configs' default is a relative runs/ path, which a worker does not have);
# EXTRA_FLAGS adds config flags. A slice wants 32 images per chip or more,
# with the learning rate scaled from 0.05 at batch 64: on a v4-32 or v5e-16
# (16 chips) EXTRA_FLAGS='--config.batch_size=512 --config.learning_rate=0.4'
# (docs/distributed.md#batch-per-device-and-learning-rate).
# tests/launch_scripts_test.py runs every subcommand with a stub gcloud.
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}" "${BUCKET:?set BUCKET}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-8}"
DATA_DIR="${DATA_DIR:-$BUCKET/tfds}"
LOCAL_DATA_DIR="${LOCAL_DATA_DIR:-$HOME/tensorflow_datasets}"
DATASET="${DATASET:-cifar100}"
EXTRA_FLAGS="${EXTRA_FLAGS:-}"
# The workers' Python (requirements.txt is pinned for 3.11) and its venv,
# '~' expanded on the worker.
PYTHON_VERSION="${PYTHON_VERSION:-3.11}"
VENV_PYTHON='~/mhkd_venv/bin/python'
# The teacher of a distillation run (a run's workdir in the bucket).
if [[ -n "${TEACHER:-}" ]]; then
  EXTRA_FLAGS="--config.teacher.init=$TEACHER $EXTRA_FLAGS"
fi
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
REMOTE_DIR=mhkd_jax
LOG=mhkd_run.log

# The TPU VM software image for each generation.
case "$ACCELERATOR_TYPE" in
  v4-*) DEFAULT_VERSION=tpu-ubuntu2204-base ;;
  v5litepod-*|v5e-*) DEFAULT_VERSION=v2-alpha-tpuv5-lite ;;
  v5p-*) DEFAULT_VERSION=v2-alpha-tpuv5 ;;
  *) echo "Unknown ACCELERATOR_TYPE=$ACCELERATOR_TYPE" >&2; exit 2 ;;
esac
RUNTIME_VERSION="${RUNTIME_VERSION:-$DEFAULT_VERSION}"
# gcloud names v5e slices v5litepod-N.
ACCELERATOR_TYPE="${ACCELERATOR_TYPE/v5e-/v5litepod-}"

tpu() {  # gcloud compute tpus tpu-vm SUBCOMMAND NAME --zone=... [args]
  local sub="$1"; shift
  gcloud compute tpus tpu-vm "$sub" "$TPU_NAME" --zone="$ZONE" \
    ${PROJECT:+--project="$PROJECT"} "$@"
}

require_workdir() {  # launch and fetch: the run's workdir, in the bucket
  : "${WORKDIR:?set WORKDIR to the run directory of the runs/<data set> \
convention in the bucket, e.g. \
WORKDIR=$BUCKET/runs/cifar100/resnet32x4-resnet8x4/mhkd \
(docs/configuration.md#the-workdir-convention)}"
}

case "${1:-}" in
  create)
    tpu create --accelerator-type="$ACCELERATOR_TYPE" \
      --version="$RUNTIME_VERSION" ${SPOT:+--spot}
    ;;
  install)
    # This checkout (committed files) on every worker; uv with the system
    # Python (3.10); a venv of Python $PYTHON_VERSION; in it the pinned
    # requirements and the package with its tpu extra (jax[tpu]: libtpu).
    archive="$(mktemp -d)/mhkd_jax.tar.gz"
    git -C "$REPO" archive --format=tar.gz -o "$archive" HEAD
    gcloud compute tpus tpu-vm scp "$archive" "$TPU_NAME:~/" \
      --zone="$ZONE" ${PROJECT:+--project="$PROJECT"} --worker=all
    tpu ssh --worker=all --command="mkdir -p $REMOTE_DIR \
&& tar xzf mhkd_jax.tar.gz -C $REMOTE_DIR && cd $REMOTE_DIR \
&& python3 -m pip install -q --user --upgrade uv \
&& python3 -m uv venv --clear --seed --python $PYTHON_VERSION ~/mhkd_venv \
&& $VENV_PYTHON -m pip install -q -r requirements.txt \
&& $VENV_PYTHON -m pip install -q -e '.[tpu]'"
    ;;
  data)
    # Prepared once where there is internet (python -m mhkd_jax.data.prepare
    # --dataset=$DATASET --data_dir=$LOCAL_DATA_DIR), then copied.
    gsutil -m rsync -r "$LOCAL_DATA_DIR/$DATASET" "$DATA_DIR/$DATASET"
    ;;
  launch)
    # One process per host; MHKD_MULTIHOST=1 makes each join the slice's
    # jax.distributed job. Detached, so a dropped ssh does not stop it.
    : "${CONFIG:?set CONFIG, e.g. CONFIG=cifar100_resnet32x4_resnet8x4.py:mhkd}"
    require_workdir
    tpu ssh --worker=all --command="cd $REMOTE_DIR && MHKD_MULTIHOST=1 \
nohup $VENV_PYTHON -m mhkd_jax.main --config=mhkd_jax/configs/${CONFIG} \
--workdir=$WORKDIR --config.data.data_dir=$DATA_DIR $EXTRA_FLAGS \
> ~/$LOG 2>&1 < /dev/null &"
    ;;
  logs)
    tpu ssh --worker=0 --command="tail -n 100 -f ~/$LOG"
    ;;
  fetch)
    # What the run reports, to results/ + the workdir's path in the bucket
    # (results/runs/cifar100/...); the checkpoints stay in the bucket.
    require_workdir
    RESULTS_DIR="${RESULTS_DIR:-results/${WORKDIR#gs://*/}}"
    mkdir -p "$RESULTS_DIR"
    gsutil -m rsync -r -x '^checkpoints/.*|^export/.*' "$WORKDIR" \
      "$RESULTS_DIR"
    ;;
  delete)
    tpu delete --quiet
    ;;
  *)
    echo "usage: $0 create|install|data|launch|logs|fetch|delete" >&2
    exit 2
    ;;
esac
