#!/usr/bin/env bash
# Train a PRM or ORM with the deepspeed launcher, on one node or several.
#
#   launch/train_reward.sh prm EXPERIMENT.yaml [key=value ...]        # all GPUs of this node
#   NUM_GPUS=4 launch/train_reward.sh orm EXPERIMENT.yaml ...
#   HOSTFILE=launch/hostfile.example launch/train_reward.sh prm EXPERIMENT.yaml ...   # several nodes
#   DS_CONFIG=configs/deepspeed/zero3.json launch/train_reward.sh prm ...            # ZeRO-3 (default ZeRO-2)
#
# On a CPU machine (no GPU) it starts NUM_GPUS (default 2) gloo ranks with one thread each.
set -euo pipefail
kind=${1:?usage: train_reward.sh prm|orm EXPERIMENT.yaml [key=value ...]}
config=${2:?usage: train_reward.sh prm|orm EXPERIMENT.yaml [key=value ...]}
shift 2
DS_CONFIG=${DS_CONFIG:-configs/deepspeed/zero2.json}
args=(--module reward.train --config "$config" "kind=$kind" "train.deepspeed=$DS_CONFIG" "$@")
if [[ -n "${HOSTFILE:-}" ]]; then
    exec deepspeed --hostfile "$HOSTFILE" ${MASTER_ADDR:+--master_addr "$MASTER_ADDR"} "${args[@]}"
fi
if python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    exec deepspeed ${NUM_GPUS:+--num_gpus "$NUM_GPUS"} "${args[@]}"
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec deepspeed --num_gpus "${NUM_GPUS:-2}" "${args[@]}"
