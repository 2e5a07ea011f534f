#!/usr/bin/env bash
# Train on a Cloud TPU pod slice: the same main.py on every host, jax.distributed finds the
# coordinator from the TPU metadata.  Data must be readable from every host (a GCS-fuse mount
# or a copy on each host's disk); the workdir must be shared (GCS path or NFS) for Orbax.
#
#   bash launch/tpu_pod.sh my-tpu us-central2-b configs/ve/afhq_512.py gs://bucket/runs/afhq \
#       --config.data.path=/mnt/data/afhq
#
# Arguments: TPU name, zone, config file, workdir, then any main.py flags.
set -euo pipefail
tpu="$1"; zone="$2"; config="$3"; workdir="$4"; shift 4
repo_dir="${REPO_DIR:-~/score_jax}"   # where the repository is checked out on every host
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command \
  "cd $repo_dir && python main.py --distributed --config=$config --workdir=$workdir --mode=train $*"
