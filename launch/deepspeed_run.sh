#!/usr/bin/env bash
# The deepspeed launcher for any stage module, on one node or several; sourced by the stage scripts.
#
#   NUM_GPUS=4 ...                              # this node's GPUs (default: all; on CPU: 2 gloo ranks)
#   HOSTFILE=launch/hostfile.example ...        # several nodes (MASTER_ADDR to pin the first host)
#
# On a machine without a GPU it starts NUM_GPUS (default 2) gloo ranks with one thread each.
deepspeed_run() {
    local module=$1
    shift
    local args=(--module "$module" "$@")
    if [[ -n "${HOSTFILE:-}" ]]; then
        exec deepspeed --hostfile "$HOSTFILE" ${MASTER_ADDR:+--master_addr "$MASTER_ADDR"} "${args[@]}"
    fi
    if python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        exec deepspeed ${NUM_GPUS:+--num_gpus "$NUM_GPUS"} "${args[@]}"
    fi
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
    exec deepspeed --num_gpus "${NUM_GPUS:-2}" "${args[@]}"
}
