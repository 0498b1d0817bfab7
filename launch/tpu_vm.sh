#!/usr/bin/env bash
# Every worker of a Cloud TPU VM slice (e.g. v4-32: 4 workers). Run from your
# workstation; the repository and its venv must already be on every worker
# at ~/alexnet_jax (e.g. `gcloud compute tpus tpu-vm scp --worker=all ...`).
#
#   TPU_NAME=my-v4-32 ZONE=us-central2-b launch/tpu_vm.sh configs/paper.py gs://bucket/runs/paper
#
# gcloud runs the same command on all workers at once; `--auto_distributed`
# makes jax.distributed.initialize() find the other workers from the TPU
# metadata. The workdir must be shared by all workers (a gs:// bucket).
#
# What to edit / set: TPU_NAME, ZONE, PROJECT (optional), REMOTE_DIR, and the
# data_dir (a gs:// tfds directory holding a prepared imagenet2012).
set -euo pipefail
if [[ $# -lt 2 ]]; then
  echo "usage: TPU_NAME=... ZONE=... $0 CONFIG WORKDIR [--config.field=value ...]" >&2
  exit 2
fi
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
REMOTE_DIR=${REMOTE_DIR:-'~/alexnet_jax'}
DATA_DIR=${DATA_DIR:-gs://YOUR_BUCKET/tensorflow_datasets}
project_flag=${PROJECT:+--project=$PROJECT}
overrides=$(printf ' %q' "${@:3}")  # quoted again for the remote shell
command="cd $REMOTE_DIR && .venv/bin/python -m alexnet_jax.main --config $1 --workdir $2 --auto_distributed --config.data_dir=$DATA_DIR$overrides"
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" $project_flag --worker=all --command="$command"
