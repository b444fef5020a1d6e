#!/usr/bin/env bash
# Train the ORM of an experiment with the deepspeed launcher; the ZeRO stage is the experiment's
# `train.deepspeed` key (DS_CONFIG, when set, overrides it).
#
#   launch/train_orm.sh EXPERIMENT.yaml [key=value ...]
#   NUM_GPUS=4 DS_CONFIG=configs/deepspeed/zero3.json launch/train_orm.sh EXPERIMENT.yaml
#   HOSTFILE=launch/hostfile.example launch/train_orm.sh EXPERIMENT.yaml
set -euo pipefail
config=${1:?usage: launch/train_orm.sh EXPERIMENT.yaml [key=value ...]}
shift
source "$(dirname "$0")/deepspeed_run.sh"
deepspeed_run reward.train --config "$config" kind=orm ${DS_CONFIG:+"train.deepspeed=$DS_CONFIG"} "$@"
