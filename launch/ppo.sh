#!/usr/bin/env bash
# Step-by-step PPO of an experiment with the deepspeed launcher; the ZeRO stage is the config's
# `deepspeed` key (DS_CONFIG overrides it).
#
#   launch/ppo.sh configs/experiments/gsm8k_mistral7b.yaml arm=prm [key=value ...]
#   NUM_GPUS=4 launch/ppo.sh EXPERIMENT.yaml arm=orm ppo.updates=50
#   HOSTFILE=launch/hostfile.example launch/ppo.sh EXPERIMENT.yaml
set -euo pipefail
config=${1:?usage: launch/ppo.sh EXPERIMENT.yaml [key=value ...]}
shift
source "$(dirname "$0")/deepspeed_run.sh"
deepspeed_run rl.ppo --config "$config" ${DS_CONFIG:+"deepspeed=$DS_CONFIG"} "$@"
