#!/usr/bin/env bash
# Multi-node prompt tuning with accelerate: run this on every node.
#   NODE_RANK=0..N-1  MAIN_IP=<node 0 address>  NUM_NODES=4  GPUS_PER_NODE=8  ./cluster/launch_train_multinode.sh key=value ...
# out_dir must be on storage all nodes share (checkpoints are written by rank 0 and read by all on --resume),
# or set checkpoint.dir=s3://... so checkpoints outlive the nodes.
#
# Restarts: a failed or preempted process (exit 75 after saving a checkpoint on SIGTERM/SIGUSR1) makes
# torchrun's agent restart the whole group, up to MAX_RESTARTS times (default 3); the restarted
# processes continue this run from its newest intact checkpoint by themselves (no --resume needed).
#
# Preemption of the node: SIGTERM or SIGUSR1 to this script (Kubernetes stopping the pod, SLURM's
# --signal) is passed to torchrun's agent as SIGTERM, which passes it to every process; they finish
# their step, save one checkpoint together and leave (the agent waits 30 s for them). This script
# then exits 75, "preempted, restart me" (the agent itself would report 1).
# RUN_ID (optional) names the launch beyond this one command: set it to something stable across
# resubmissions of the same job (a SLURM job id survives `scontrol requeue`) and a resubmitted launch
# continues the run by itself too (it becomes MAGICERASER_LAUNCH_ID).
set -euo pipefail
: "${NODE_RANK:?set NODE_RANK}" "${MAIN_IP:?set MAIN_IP}"
NUM_NODES=${NUM_NODES:-4}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
CONFIG=${CONFIG:-configs/train/sd15_inpaint.yaml}
if [ -n "${RUN_ID:-}" ]; then export MAGICERASER_LAUNCH_ID="$RUN_ID"; fi
accelerate launch \
  --config_file cluster/accelerate/multi_node.yaml \
  --num_machines "$NUM_NODES" --num_processes $((NUM_NODES * GPUS_PER_NODE)) \
  --machine_rank "$NODE_RANK" --main_process_ip "$MAIN_IP" --main_process_port "${MAIN_PORT:-29500}" \
  --max_restarts "${MAX_RESTARTS:-3}" \
  -m magiceraser.training.train --config "$CONFIG" "$@" &
launcher=$!
preempted=0
trap 'preempted=1; kill -TERM "$launcher" 2>/dev/null' TERM USR1
status=0
wait "$launcher" || status=$?
while kill -0 "$launcher" 2>/dev/null; do  # woken by the trap: wait for the checkpoint and the exit
  status=0
  wait "$launcher" || status=$?
done
if [ "$preempted" = 1 ]; then
  echo "launch_train_multinode.sh: preempted: the processes saved a checkpoint; exit 75 (restart me)" >&2
  exit 75
fi
exit "$status"
# Two CPU processes with gloo (what the tests do with torchrun): a smoke test of data parallelism without GPUs.
# accelerate launch --config_file cluster/accelerate/cpu_2proc.yaml --max_restarts 3 -m magiceraser.training.train --config configs/train/demo.yaml
