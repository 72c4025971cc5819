#!/usr/bin/env bash
# Multi-node prompt tuning with accelerate: run this on every node.
#   NODE_RANK=0..N-1  MAIN_IP=<node 0 address>  NUM_NODES=4  GPUS_PER_NODE=8  ./cluster/launch_train_multinode.sh key=value ...
# out_dir must be on storage all nodes share (checkpoints are written by rank 0 and read by all on --resume).
set -euo pipefail
: "${NODE_RANK:?set NODE_RANK}" "${MAIN_IP:?set MAIN_IP}"
NUM_NODES=${NUM_NODES:-4}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
CONFIG=${CONFIG:-configs/train/sd15_inpaint.yaml}
exec accelerate launch \
  --config_file cluster/accelerate/multi_node.yaml \
  --num_machines "$NUM_NODES" --num_processes $((NUM_NODES * GPUS_PER_NODE)) \
  --machine_rank "$NODE_RANK" --main_process_ip "$MAIN_IP" --main_process_port "${MAIN_PORT:-29500}" \
  -m magiceraser.training.train --config "$CONFIG" "$@"
