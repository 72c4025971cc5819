#!/usr/bin/env bash
# Multi-node prompt tuning with torchrun: run this on every node.
#   MAIN_IP=<node 0 address>  NUM_NODES=4  GPUS_PER_NODE=8  RUN_ID=<job id>  ./cluster/launch_train_multinode.sh key=value ...
# out_dir must be on storage all nodes share (checkpoints are written by rank 0 and read by all on --resume),
# or set checkpoint.dir=s3://... so checkpoints outlive the nodes.
#
# Restarts: a failed or preempted process (exit 75 after saving a checkpoint on SIGTERM/SIGUSR1) makes
# torchrun's agents restart the whole group, up to MAX_RESTARTS times (default 3); the restarted
# processes continue this run from its newest intact checkpoint by themselves (no --resume needed).
# The rendezvous is c10d, with a new store for every round (TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1):
# a store kept across restarts (torch's static rendezvous, or c10d sharing its store) still holds
# the previous attempt's addresses, and a restarted process that reads one first fails to connect
# (seen here: "Gloo connectFullMesh failed ... Connection refused", a restart used up). Ranks are
# assigned by the rendezvous, so NODE_RANK is not needed; MAIN_IP:MAIN_PORT is where it runs (node 0).
#
# RUN_ID names the launch: the same on every node, and stable across resubmissions of the same job
# (a SLURM job id survives `scontrol requeue`; cluster/train.sbatch sets it), so a resubmitted launch
# continues the run by itself too (it becomes MAGICERASER_LAUNCH_ID). Without it, a single node's
# restarts are still recognised (by torchrun's agent process), a resubmission needs --resume.
#
# Preemption of the node: SIGTERM or SIGUSR1 to this script (Kubernetes stopping the pod, SLURM's
# --signal) is passed to torchrun's agent as SIGTERM, which passes it to every process; they finish
# their step, save one checkpoint together and leave (the agent waits 30 s for them). This script
# then exits 75, "preempted, restart me" (the agent itself would report 1).
set -euo pipefail
: "${MAIN_IP:?set MAIN_IP}"
NUM_NODES=${NUM_NODES:-4}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
CONFIG=${CONFIG:-configs/train/sd15_inpaint.yaml}
if [ -n "${RUN_ID:-}" ]; then export MAGICERASER_LAUNCH_ID="$RUN_ID"; fi
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1
preempted=0
launcher=
trap 'preempted=1; [ -n "$launcher" ] && kill -TERM "$launcher" 2>/dev/null || true' TERM USR1
python -m torch.distributed.run \
  --nnodes "$NUM_NODES" --nproc_per_node "$GPUS_PER_NODE" \
  --rdzv_backend c10d --rdzv_endpoint "$MAIN_IP:${MAIN_PORT:-29500}" --rdzv_id "${RUN_ID:-none}" \
  --max_restarts "${MAX_RESTARTS:-3}" \
  -m magiceraser.training.train --config "$CONFIG" "$@" &
launcher=$!
if [ "$preempted" = 1 ]; then kill -TERM "$launcher" 2>/dev/null || true; fi  # a signal before it started
status=0
wait "$launcher" || status=$?
while kill -0 "$launcher" 2>/dev/null; do  # woken by the trap: wait for the checkpoint and the exit
  status=0
  wait "$launcher" || status=$?
done
if [ "$preempted" = 1 ] && [ "$status" != 0 ]; then
  echo "launch_train_multinode.sh: preempted: the processes saved a checkpoint; exit 75 (restart me)" >&2
  exit 75
fi
exit "$status"
