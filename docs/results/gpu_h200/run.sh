#!/bin/bash
# On the GPU machine, from the repo root, with the wheels and models of README.md under .whl/:
# the GPU tests, then the PRM scoring benchmark (the annotation benchmark ran in an earlier call of it).
set -o pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONPATH=$PWD
t0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade .whl/*.whl 2>&1 | tail -3
nvidia-smi -L; python3 -c "import torch, transformers, deepspeed, peft; print('torch', torch.__version__, torch.version.cuda, 'tf', transformers.__version__, 'ds', deepspeed.__version__, 'peft', peft.__version__, torch.cuda.get_device_name(0))"
echo "install $(( $(date +%s) - t0 )) s"
timeout 420 python3 -m pytest -q -m gpu tests/gpu --durations=0 -p no:cacheprovider 2>&1 | tee $OUT/test_gpu.log
echo "tests done at $(( $(date +%s) - t0 )) s"
left=$(( 330 - ($(date +%s) - t0) ))
if [ $left -gt 60 ]; then
  timeout $left python3 benchmarks/score.py --model .whl/pol/prm 2>&1 | tee $OUT/score_gpu.log
fi
echo "all done at $(( $(date +%s) - t0 )) s"
