"""Reward-model text formats: the released math-shepherd-mistral-7b-prm's, scored exactly as its model
card scores it, and Math-Shepherd rows read and scored as their text stands."""
import json
import re

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, MistralConfig, MistralForCausalLM, PreTrainedTokenizerFast

from reward.errors import ShepherdError
from reward.formats import render
from reward.labels import from_math_shepherd
from reward.prm import label_token_ids, score_steps
from reward.score import main as score_main

Q = "Janet has 3 apples and buys 4 more. How many apples?"
STEPS = ["She has 3 + 4 = 7 apples.", "She gives 2 away: 7 - 2 = 5.", "The answer is: 5"]
# The released dataset's layout: question and step 1 on one line, labels in place of the tags.
RELEASED = {"input": f"{Q} Step 1: {STEPS[0]} ки\nStep 2: {STEPS[1]} ки\nStep 3: {STEPS[2]} ки",
            "label": f"{Q} Step 1: {STEPS[0]} +\nStep 2: {STEPS[1]} -\nStep 3: {STEPS[2]} -", "task": "GSM8K"}
# A question of two lines ending without a space before 'Step 1:', a step over two lines, two tags on one line.
MIXED = {"input": "Line one.\nHow many?Step 1: We rewrite\n$x = 1$. ки\nStep 2: So 2 + 1 = 3. ки "
                  "Step 3: The answer is: 3 ки",
         "label": "Line one.\nHow many?Step 1: We rewrite\n$x = 1$. +\nStep 2: So 2 + 1 = 3. - "
                  "Step 3: The answer is: 3 -"}


@pytest.fixture(scope="module")
def released_prm(tmp_path_factory):
    """A random small Mistral with a SentencePiece-style tokenizer laid out as Mistral's is (a normalizer
    that prepends '▁' and turns spaces into '▁', byte fallback, BOS added): ' ки' is two tokens there."""
    sentences = [f"{Q} Step 1: {STEPS[0]} ки", f"Step 2: {STEPS[1]} ки", f"Step 3: {STEPS[2]} ки",
                 "Line one. How many? We rewrite $x = 1$. So 2 + 1 = 3. + - ки"] * 20
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")  # words while training
    bytes_ = [f"<0x{i:02X}>" for i in range(256)]
    specials = ["<unk>", "<s>", "</s>"] + bytes_
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(sentences, trainer)
    tok.pre_tokenizer = None
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    bos = ("<s>", tok.token_to_id("<s>"))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[bos])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    torch.manual_seed(0)
    model = MistralForCausalLM(MistralConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                             initializer_range=0.2))
    folder = tmp_path_factory.mktemp("released_prm")
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def model_card_scores(model, tokenizer, text):
    """math-shepherd-mistral-7b-prm's model card, as written there (its `input_for_prm` is `text`)."""
    good_token, bad_token, step_tag = "+", "-", "ки"
    candidate_tokens = tokenizer.encode(f"{good_token} {bad_token}")[1:]  # [648, 387] for Mistral
    step_tag_id = tokenizer.encode(f"{step_tag}")[-1]  # 12902 for Mistral
    input_id = torch.tensor([tokenizer.encode(text)])
    with torch.no_grad():
        logits = model(input_id).logits[:, :, candidate_tokens]
        scores = logits.softmax(dim=-1)[:, :, 0]
        step_scores = scores[input_id == step_tag_id]
    return step_scores.tolist()


def score(folder, tmp_path, records, *overrides):
    """`shepherd score` of `records` (written to a jsonl); the step scores it writes, in input order."""
    f = tmp_path / "in.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in records))
    score_main(["--model", str(folder), "--input", str(f), f"output_dir={tmp_path / 'out'}", *overrides])
    return [json.loads(line)["step_scores"] for line in (tmp_path / "out" / "scores.jsonl").read_text().splitlines()]


def stage_error(capsys, stage, *args):
    """The one line a stage prints when it stops on bad input (exit status 2)."""
    with pytest.raises(SystemExit) as e:
        stage(*args)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_released_format_text():
    assert render(Q, STEPS, "math-shepherd") == RELEASED["input"]  # the model card's f"{question} {output}"
    prefixed = [f"Step {k}: {s}" for k, s in enumerate(STEPS, 1)]
    assert render(Q, prefixed, "math-shepherd") == RELEASED["input"]  # a 'Step k:' already there is kept, not doubled
    assert render(Q, STEPS) == f"{Q}\n" + "".join(f"{s} ки\n" for s in STEPS)  # ours (tagged)


def test_score_in_released_format_equals_the_model_card(released_prm, tmp_path):
    tok = AutoTokenizer.from_pretrained(released_prm)
    model = AutoModelForCausalLM.from_pretrained(released_prm).eval()
    # ' ки' is '▁' + '▁ки' here, as in Mistral's tokenizer: label_token_ids falls back to its last token
    assert len(tok(" ки", add_special_tokens=False)["input_ids"]) == 2
    tag, good, bad = label_token_ids(tok)
    assert tag == tok.encode("ки")[-1] and [good, bad] == tok.encode("+ -")[1:]

    items = [{"question": Q, "steps": STEPS}, {"question": "How many?", "steps": ["2 + 1 = 3.", "The answer is: 3"]}]
    ours = score(released_prm, tmp_path, items, "format=math-shepherd", "batch_size=2")
    for item, got in zip(items, ours):
        output = "\n".join(f"Step {k}: {s} ки" for k, s in enumerate(item["steps"], 1))
        card = model_card_scores(model, tok, f"{item['question']} {output}")
        assert len(got) == len(item["steps"]) and got == pytest.approx(card, abs=1e-5)
    assert len({round(s, 4) for s in ours[0]}) == 3  # three different step scores: the comparison can fail
    direct = score_steps(model, tok, [(Q, STEPS)], fmt="math-shepherd")[0]  # what verify, eval-prm and ppo call
    assert direct == pytest.approx(ours[0], abs=1e-5)
    tagged = score(released_prm, tmp_path, items[:1])  # the default format is ours: another text, other scores
    assert tagged[0] != pytest.approx(ours[0], abs=1e-4)


def test_math_shepherd_rows_read_as_their_text_stands(released_prm, tmp_path):
    from reward.train import read_examples

    assert from_math_shepherd(RELEASED) == {
        "prompt": Q, "completions": [f"Step {k}: {s}" for k, s in enumerate(STEPS, 1)], "labels": [True, False, False]}
    assert from_math_shepherd(MIXED) == {
        "prompt": "Line one.\nHow many?", "completions": ["Step 1: We rewrite\n$x = 1$.", "Step 2: So 2 + 1 = 3.",
                                                         "Step 3: The answer is: 3"], "labels": [True, False, False]}
    f = tmp_path / "ms.jsonl"
    f.write_text(json.dumps(RELEASED) + "\n" + json.dumps(MIXED) + "\n")
    examples = read_examples(str(f), "prm", "he")
    assert [(len(e.steps), e.targets) for e in examples] == [(3, [1.0, 0.0, 0.0]), (3, [1.0, 0.0, 0.0])]

    tok = AutoTokenizer.from_pretrained(released_prm)
    model = AutoModelForCausalLM.from_pretrained(released_prm).eval()
    for fmt in ("tagged", "math-shepherd"):  # a row is scored as it stands, whatever the format
        scored = score(released_prm, tmp_path, [RELEASED, MIXED], f"format={fmt}")
        for row, got in zip((RELEASED, MIXED), scored):
            assert len(got) == row["input"].count(" ки") == 3
            assert got == pytest.approx(model_card_scores(model, tok, row["input"]), abs=1e-5)


MISMATCHED = [  # rows no reader can use: each stops scoring and training with one error naming the row
    ({"input": "Q? Step 1: a", "label": "Q? Step 1: a"}, "no step tag ' ки'"),
    ({"input": "Q? Step 1: a ки\nStep 2: b ки", "label": "Q? Step 1: a +\nStep 2: b *"}, "up to step tag 2"),
    ({"input": "Q? Step 1: a ки\nStep 2: b ки", "label": "Q? Step 1: A +\nStep 2: b -"}, "up to step tag 1"),
    ({"input": "Q? Step 1: a ки\nStep 2: b ки", "label": "Q? Step 1: a +\nStep 2: b - more"}, "after the last"),
    ({"input": "Q? Step 1: a ки", "label": None}, "needs 'input' and 'label' texts"),
]
UNREADABLE = [  # rows that score as they stand (one score per tag) but cannot become training steps
    ({"input": "Q? a ки b ки", "label": "Q? a + b -"}, "cannot tell the question from step 1"),
    ({"input": "Q?\na ки ки", "label": "Q?\na + -"}, "step 2 is empty"),
]


@pytest.mark.parametrize("row, message", MISMATCHED)
def test_bad_rows_stop_scoring_naming_the_row(row, message, tmp_path, released_prm, capsys):
    err = stage_error(capsys, score, released_prm, tmp_path, [RELEASED, row])
    assert re.search(f"in.jsonl:2: .*{re.escape(message)}", err)


@pytest.mark.parametrize("row, message", MISMATCHED + UNREADABLE)
def test_bad_rows_stop_reading_naming_the_row(row, message, tmp_path):
    from reward.train import read_examples

    f = tmp_path / "ms.jsonl"
    f.write_text(json.dumps(RELEASED) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(ShepherdError, match=f"ms.jsonl:2: .*{re.escape(message)}"):
        read_examples(str(f), "prm", "he")


def test_rows_that_only_score(released_prm, tmp_path):
    scored = score(released_prm, tmp_path, [row for row, _ in UNREADABLE])
    assert [len(s) for s in scored] == [2, 2]


def test_unknown_format_names_the_key(tmp_path, released_prm, capsys):
    from reward.eval_prm import main as eval_prm_main
    from reward.verify import main as verify_main
    from rl.rewards import RewardConfig, check_config

    assert "unknown reward-model format 'mistral' (key format)" in stage_error(
        capsys, score, released_prm, tmp_path, [RELEASED], "format=mistral")
    assert "(key orm_format)" in stage_error(capsys, verify_main, ["policy=x", "orm_format=qwen",
                                                                   f"output_dir={tmp_path / 'v'}"])
    assert "(key format)" in stage_error(capsys, eval_prm_main, [f"input={tmp_path / 'in.jsonl'}", "format=qwen",
                                                                 f"output_dir={tmp_path / 'e'}"])
    with pytest.raises(ShepherdError, match=r"key reward.format"):
        check_config(RewardConfig(model="x", format="math_shepherd"), False)


def test_paper_recipe_arm_with_the_released_prm():
    """gsm8k_mistral7b.yaml's arm prm-released: the PRM arm with the released PRM read in its own format."""
    from reward.config import load_config
    from reward.tasks import load_task
    from rl.ppo import PPOConfig, check

    base = load_config(PPOConfig, "ppo", "configs/experiments/gsm8k_mistral7b.yaml", ["arm=prm"])
    arm = load_config(PPOConfig, "ppo", "configs/experiments/gsm8k_mistral7b.yaml", ["arm=prm-released"])
    check(arm, 8, load_task(arm.task))
    assert base.reward.format == "tagged" and arm.reward.format == "math-shepherd"
    assert {k for k in arm.reward if arm.reward[k] != base.reward[k]} == {"model", "format"}
    assert arm.output_dir != base.output_dir and arm.ppo == base.ppo and arm.policy == base.policy
