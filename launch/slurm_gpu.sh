#!/usr/bin/env bash
# Train on a SLURM GPU cluster: one task per node, all of a node's GPUs in that task;
# jax.distributed.initialize() reads the SLURM environment (coordinator, process count and id).
#
#   sbatch --nodes=4 --gres=gpu:8 launch/slurm_gpu.sh configs/ve/afhq_512.py /shared/runs/afhq \
#       --config.data.path=/shared/data/afhq
#
# A preempted or requeued job relaunches the same command and resumes from the latest checkpoint
# (SIGTERM saves the current step; ask SLURM for it with --signal=TERM@120).
#SBATCH --ntasks-per-node=1
#SBATCH --signal=TERM@120
#SBATCH --requeue
set -euo pipefail
config="$1"; workdir="$2"; shift 2
cd "${SLURM_SUBMIT_DIR:-.}"
srun python main.py --distributed --config="$config" --workdir="$workdir" --mode=train "$@"
