"""Reward-model adapters (`reward.adapters`) against the published inference recipes, on random models
built here in each convention: Qwen2.5-Math-PRM's (a Qwen2 decoder and its two-layer score head, read
without remote code) and a separator PRM's; then each inside `shepherd score` and inside PPO with a
policy whose tokenizer differs from the PRM's."""
import json

import pytest
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2Model

from reward.adapters import AdapterSettings, load_reward_model, score_items
from reward.errors import ShepherdError
from reward.score import main as score_main

from .test_ppo import finish, launch, log_rows

ITEMS = [("Janet has 3 apples and buys 4 more. How many?", ["3 + 4 = 7.", "She has 7 apples.", "The answer is 7"]),
         ("What is 2 + 1?", ["2 + 1 = 3.", "The answer is 3"]),
         ("Compute 5 - 2.", ["5 - 2 = 3."])]
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE with no merges (one token per byte), Qwen's special tokens, a ChatML template."""
    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok)
    fast.add_special_tokens({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                             "additional_special_tokens": ["<|im_start|>", "<extra_0>"]})
    fast.chat_template = CHATML
    return fast


class PublishedQwenPRM(torch.nn.Module):
    """The layout of Qwen2.5-Math-PRM's remote `Qwen2ForProcessRewardModel`: `model` and `score`."""

    def __init__(self, config):
        super().__init__()
        h = config.hidden_size
        self.model = Qwen2Model(config)
        self.score = torch.nn.Sequential(torch.nn.Linear(h, h), torch.nn.ReLU(), torch.nn.Linear(h, 2))

    def forward(self, input_ids):
        return (self.score(self.model(input_ids=input_ids).last_hidden_state),)


@pytest.fixture(scope="module")
def qwen_prm(tmp_path_factory):
    """A random Qwen2.5-Math-PRM-shaped checkpoint: config (architecture and remote-code map as shipped),
    its weights in two safetensors shards, tokenizer; and the reference module itself."""
    tok = byte_tokenizer()
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, initializer_range=0.3,
                         architectures=["Qwen2ForProcessRewardModel"], num_labels=2,
                         auto_map={"AutoModel": "modeling_qwen2_rm.Qwen2ForProcessRewardModel"})
    ref = PublishedQwenPRM(config).eval()
    folder = tmp_path_factory.mktemp("qwen_prm")
    state = {k: v.contiguous() for k, v in ref.state_dict().items()}
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    for name, part in shards.items():
        save_file({k: state[k] for k in part}, str(folder / name))
    index = {"metadata": {}, "weight_map": {k: name for name, part in shards.items() for k in part}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    config.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder, ref, tok


def model_card_step_rewards(model, tokenizer, question, steps):
    """Qwen2.5-Math-PRM-7B's model card, as written there (`make_step_rewards` for one conversation)."""
    data = {"system": "Please reason step by step, and put your final answer within \\boxed{}.",
            "query": question, "response": steps}
    messages = [{"role": "system", "content": data["system"]}, {"role": "user", "content": data["query"]},
                {"role": "assistant", "content": "<extra_0>".join(data["response"]) + "<extra_0>"}]
    conversation_str = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    input_ids = tokenizer.encode(conversation_str, return_tensors="pt")
    with torch.no_grad():
        outputs = model(input_ids=input_ids)
    step_sep_id = tokenizer.encode("<extra_0>")[0]
    token_masks = (input_ids == step_sep_id)
    probabilities = torch.nn.functional.softmax(outputs[0], dim=-1) * token_masks.unsqueeze(-1)
    sample = probabilities[0]
    return sample[sample != 0].view(-1, 2)[:, 1].tolist()


def test_qwen_prm_equals_its_model_card(qwen_prm):
    folder, ref, tok = qwen_prm
    model, rm_tok = load_reward_model(str(folder), "model", "qwen-prm")
    ours = score_items(model, rm_tok, ITEMS, "qwen-prm", batch_size=2)  # batches of unequal lengths
    for (q, steps), got in zip(ITEMS, ours):
        assert got == pytest.approx(model_card_step_rewards(ref, tok, q, steps), abs=1e-4)
        assert len(got) == len(steps)
    assert len({round(s, 3) for s in ours[0]}) == 3  # distinct scores: the comparison can fail


def test_qwen_prm_without_its_head_is_one_clear_error(qwen_prm, tmp_path):
    folder, ref, tok = qwen_prm
    save_file({k: v.contiguous() for k, v in ref.state_dict().items() if not k.startswith("score.")},
              str(tmp_path / "model.safetensors"))
    ref.model.config.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    with pytest.raises(ShepherdError, match=r"score head.*key reward.model"):
        load_reward_model(str(tmp_path), "reward.model", "qwen-prm")


@pytest.fixture(scope="module")
def separator_prm(tmp_path_factory):
    tok = byte_tokenizer()
    torch.manual_seed(1)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, initializer_range=0.3)).eval()
    folder = tmp_path_factory.mktemp("separator_prm")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder, model, tok


def per_step_prefix_scores(model, tok, question, steps, separator, good, bad):
    """The plain recipe of a separator PRM: for step k, the text up to step k's separator, one forward,
    softmax over the good / bad label logits at its last token."""
    good_id, bad_id = tok.convert_tokens_to_ids([good, bad])
    ids, out = tok(question + separator)["input_ids"], []
    for step in steps:
        ids = ids + tok(step + separator, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
        out.append(logits[[good_id, bad_id]].softmax(-1)[0].item())
    return out


@pytest.mark.parametrize("separator,labels", [("\n\n", ["+", "-"]), ("\n", ["Y", "N"])])
def test_separator_prm_equals_one_forward_per_step(separator_prm, separator, labels):
    folder, model, tok = separator_prm
    settings = AdapterSettings(separator=separator, label_tokens=labels)
    rm, rm_tok = load_reward_model(str(folder), "model", "separator")
    ours = score_items(rm, rm_tok, ITEMS, "separator", settings, batch_size=2)
    for (q, steps), got in zip(ITEMS, ours):
        assert got == pytest.approx(per_step_prefix_scores(model, tok, q, steps, separator, *labels), abs=1e-4)
    with pytest.raises(ShepherdError, match="single token for the label token 'ab'"):
        score_items(rm, rm_tok, ITEMS, "separator", AdapterSettings(label_tokens=["ab", "-"]))


def test_score_stage_reads_each_format(qwen_prm, separator_prm, tmp_path, capsys):
    """`shepherd score` with format=qwen-prm / separator writes the adapters' scores; training in them is
    refused with one clear error (they read released reward models)."""
    from reward.train import main as train_main

    f = tmp_path / "in.jsonl"
    f.write_text("".join(json.dumps({"question": q, "steps": s}) + "\n" for q, s in ITEMS))
    for fmt, folder, extra in (("qwen-prm", qwen_prm[0], []), ("separator", separator_prm[0], ['separator="\\n"'])):
        out = tmp_path / fmt
        score_main([f"model={folder}", f"input={f}", f"output_dir={out}", f"format={fmt}", *extra])
        got = [json.loads(line)["step_scores"] for line in (out / "scores.jsonl").read_text().splitlines()]
        rm, rm_tok = load_reward_model(str(folder), "model", fmt)
        want = score_items(rm, rm_tok, ITEMS, fmt, AdapterSettings(separator="\n" if extra else "\n\n"))
        assert got == [pytest.approx(w, abs=1e-5) for w in want]
    with pytest.raises(SystemExit):
        train_main([f"data={f}", "format=qwen-prm", f"output_dir={tmp_path / 't'}", f"init={qwen_prm[0]}"])
    assert "not 'qwen-prm' (key format)" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["qwen-prm", "separator"])
def test_ppo_with_an_adapted_prm_of_another_tokenizer(fmt, qwen_prm, separator_prm, tiny_world, tmp_path):
    """Two updates of the PRM arm with the byte-level PRM scoring the word-level policy's rollouts: every
    rollout with steps gets a score in (0, 1) from it."""
    folder = qwen_prm[0] if fmt == "qwen-prm" else separator_prm[0]
    out = tmp_path / "ppo"
    finish(launch(tiny_world, out, 1, "arm=prm", "reward.type=prm", f"reward.model={folder}", f"reward.format={fmt}",
                  "ppo.updates=2", "eval_every=2"))
    rows = log_rows(out)
    assert len(rows) == 2 and all(0.0 < r["reward/score"] < 1.0 for r in rows), rows
