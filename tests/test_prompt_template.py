"""task.prompt_template: the prompt a non-chat SFT policy was trained on (MetaMath's for the paper)."""
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from reward.config import load_config
from reward.errors import ShepherdError
from reward.sample import SampleConfig
from reward.tasks import load_task

REPO = Path(__file__).resolve().parents[1]
METAMATH = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
            "request.\n\n### Instruction:\n{question}\n\n### Response: Let's think step by step.")
Q = "Janet has 3 apples and buys 4 more. How many apples?"


def task_from(*overrides):
    return load_task(load_config(SampleConfig, "sample", None, ["task.name=gsm8k", *overrides]).task)


def test_template_fills_the_question_verbatim():
    assert task_from().format_prompt(Q) == Q + "\n"  # no template: as before
    prompt = task_from(f"task.prompt_template={METAMATH!r}").format_prompt(Q)
    assert prompt == METAMATH.replace("{question}", Q) and prompt.endswith("### Response: Let's think step by step.")
    latex = task_from("task.prompt_template='Solve $\\frac{a}{b}$: {question} Answer in \\boxed{}.'")
    assert latex.format_prompt(Q) == f"Solve $\\frac{{a}}{{b}}$: {Q} Answer in \\boxed{{}}."  # other braces stay
    assert load_task("arith").format_prompt("Compute 1 + 2 mod 10.") == "Compute 1 + 2 mod 10.\n"


def test_template_without_the_question_names_the_key():
    with pytest.raises(ShepherdError, match=r"task.prompt_template has no '\{question\}'"):
        task_from("task.prompt_template='### Response: Let us think.'")


def test_with_a_chat_template_it_is_the_user_message():
    tok = Tokenizer(models.WordLevel(vocab={"<unk>": 0}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    chat = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")
    chat.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                          "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    plain = task_from("task.chat_template=true").format_prompt(Q, chat)
    assert plain.startswith("<|user|>Solve the following problem step by step") and plain.endswith("<|assistant|>")
    templated = task_from("task.chat_template=true", "task.prompt_template='Q: {question}'").format_prompt(Q, chat)
    assert templated == f"<|user|>Q: {Q}\n<|assistant|>"


def test_the_papers_recipe_prompts_as_metamath():
    """gsm8k_mistral7b.yaml: its policy is MetaMath-Mistral-7B, an SFT model trained on MetaMath's prompt."""
    cfg = load_config(SampleConfig, "sample", str(REPO / "configs/experiments/gsm8k_mistral7b.yaml"))
    assert cfg.task.prompt_template == METAMATH and not cfg.task.chat_template
    assert load_task(cfg.task).format_prompt(Q) == METAMATH.replace("{question}", Q)


def test_annotation_prefixes_start_step_one_on_its_own_line():
    """Completer prompts are the prompt, then the prefix's steps: after MetaMath's "... step by step."
    step 1 starts on a new line instead of running into the template."""
    from reward.completion import continue_after

    prompt = task_from(f"task.prompt_template={METAMATH!r}").format_prompt(Q)
    assert continue_after(prompt) == prompt + "\n"
    assert continue_after(Q + "\n") == Q + "\n" and continue_after("<|im_start|>assistant\n").endswith("assistant\n")
