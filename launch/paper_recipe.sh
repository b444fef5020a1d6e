#!/usr/bin/env bash
# The paper's recipe end to end on one GPU node (Wang et al. 2024, GSM8K, Mistral-7B): sample the
# training problems, label every step (HE, N=8), train the PRM and the ORM under ZeRO-3, verify
# best-of-256, first-error F1 on ProcessBench, PPO with the PRM and with the ORM, then the report.
# Set the model paths in configs/experiments/gsm8k_mistral7b.yaml first. Finished stages are skipped
# (their metrics.json exists); rerun the script after a failure or a kill to continue.
#
#   launch/paper_recipe.sh                    # all GPUs of this node
#   NUM_GPUS=4 launch/paper_recipe.sh
set -euo pipefail
cd "$(dirname "$0")/.."
EXP=configs/experiments/gsm8k_mistral7b.yaml
out() { python -c "from reward.config import stage_output_dir as d; import sys; print(d(*sys.argv[1:]))" "$@"; }
done_() { [[ -f "$(out "$@")/metrics.json" ]]; }

for stage in sample annotate; do                    # a vLLM engine per GPU, each rank taking its share of the chunks
    done_ $EXP $stage || (source launch/deepspeed_run.sh && deepspeed_run reward.$stage --config $EXP)
done
done_ $EXP train-prm || bash launch/train_prm.sh $EXP
done_ $EXP train-orm || bash launch/train_orm.sh $EXP
for stage in verify eval-prm; do
    done_ $EXP $stage || shepherd $stage --config $EXP
done
for arm in prm orm; do
    done_ $EXP ppo $arm || bash launch/ppo.sh $EXP arm=$arm resume=true
done
shepherd report $(for s in sample annotate train-prm train-orm verify eval-prm; do out $EXP $s; done) \
    "$(out $EXP ppo prm)" "$(out $EXP ppo orm)" output_dir=outputs/gsm8k_mistral7b/report experiment=gsm8k_mistral7b
