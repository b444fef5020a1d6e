"""Reward models: the Math-Shepherd scoring recipe, the masked loss, training, scoring, selection rules."""
import json
import math

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from reward.errors import ShepherdError
from reward.prm import aggregate, encode_tagged, label_token_ids, score_steps, step_bce
from reward.formats import render
from reward.train import Example, TagCollator, read_examples
from reward.verify import (Group, accuracy_at, pairwise_accuracy, pick_best, pick_majority, pick_random,
                           pick_weighted_vote)

Q = "Compute 3 + 4 * 2 - 9 mod 10."
STEPS = ["3 + 4 = 7", "7 * 2 = 4", "4 - 9 = 5", "The answer is 5"]


@pytest.fixture(scope="module")
def rm(random_policy):
    return AutoModelForCausalLM.from_pretrained(random_policy).eval(), AutoTokenizer.from_pretrained(random_policy)


def published_recipe(model, tokenizer, text):
    """math-shepherd-mistral-7b-prm's model-card inference, verbatim in spirit: logits at the tag
    positions, candidates '+'/'-', softmax, take '+'."""
    candidate_tokens = tokenizer.convert_tokens_to_ids(["+", "-"])
    step_tag_id = tokenizer.convert_tokens_to_ids(" ки")
    input_id = torch.tensor([tokenizer.encode(text)])
    with torch.no_grad():
        logits = model(input_id).logits[:, :, candidate_tokens]
        scores = logits.softmax(dim=-1)[:, :, 0]
        return scores[input_id == step_tag_id].tolist()


def test_scores_equal_the_published_recipe(rm):
    model, tok = rm
    ours = score_steps(model, tok, [(Q, STEPS)])[0]
    theirs = published_recipe(model, tok, render(Q, STEPS))
    assert len(ours) == len(STEPS) and ours == pytest.approx(theirs, abs=1e-6)


def test_one_forward_equals_per_prefix_and_batching(rm):
    model, tok = rm
    items = [(Q, STEPS), (Q, STEPS[:2]), ("Compute 1 + 1 mod 10.", ["1 + 1 = 2", "The answer is 2"])]
    batched = score_steps(model, tok, items, batch_size=3)
    for (q, steps), scores in zip(items, batched):
        prefix = [score_steps(model, tok, [(q, steps[: k + 1])], batch_size=1)[0][-1] for k in range(len(steps))]
        assert scores == pytest.approx(prefix, abs=1e-5)


def test_malformed_step_keeps_its_tag(rm):
    _, tok = rm
    tag, _, _ = label_token_ids(tok)
    ids, pos = encode_tagged(tok, Q, ["3 + 4 = 7", "7 *", "The answer is 7"], tag)
    assert len(pos) == 3 and all(ids[p] == tag for p in pos)


def test_loss_is_masked_to_tags_soft_and_hard():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 10, requires_grad=True)
    targets = torch.full((2, 6), math.nan)
    targets[0, 2], targets[1, 4], targets[1, 5] = 1.0, 0.0, 0.3  # hard and soft labels at three tags
    loss = step_bce(logits, targets, good_id=3, bad_id=4)
    margin = logits[..., 3] - logits[..., 4]
    p = torch.sigmoid(margin)
    manual = -(torch.log(p[0, 2]) + torch.log(1 - p[1, 4]) + 0.3 * torch.log(p[1, 5]) + 0.7 * torch.log(1 - p[1, 5])) / 3
    assert loss.item() == pytest.approx(manual.item(), rel=1e-5)
    loss.backward()
    grad = logits.grad.abs().sum(-1)
    assert grad[0, 2] > 0 and grad[1, 5] > 0
    assert grad[0, [0, 1, 3, 4, 5]].sum() == 0 and grad[1, :4].sum() == 0  # nothing flows from non-tags
    assert logits.grad[..., [0, 1, 2, 5, 6, 7, 8, 9]].abs().sum() == 0  # nor into other vocabulary entries


def test_orm_targets_only_the_last_tag_and_label_count_checked(tmp_path, rm):
    _, tok = rm
    rec = {"prompt": Q, "completions": STEPS, "labels": [True, False, False, True], "soft_labels": [1, .2, 0, 1],
           "correct": True, "problem_id": "p"}
    f = tmp_path / "s.jsonl"
    f.write_text(json.dumps(rec) + "\n" + json.dumps({**rec, "labels": [True, True, True, True]}) + "\n")
    orm = read_examples(str(f), "orm", "he")
    assert orm[0].targets[-1] == 1.0 and all(math.isnan(t) for t in orm[0].targets[:-1])
    tag, _, _ = label_token_ids(tok)
    a, b = (TagCollator(tok, tag, 512)([e]) for e in orm)  # a middle label changed: ORM batch identical
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.allclose(a["targets"], b["targets"], equal_nan=True)
    prm = read_examples(str(f), "prm", "se")
    assert prm[0].targets == [1.0, 0.2, 0.0, 1.0]
    batch = TagCollator(tok, tag, 512)([prm[0]])
    marked = (~torch.isnan(batch["targets"][0])).nonzero().flatten().tolist()
    assert [batch["input_ids"][0, i].item() for i in marked] == [tag] * 4
    first = read_examples(str(f), "prm", "se", "first_error")  # labels up to the first wrong step only
    assert first[0].targets[:2] == [1.0, 0.2] and all(math.isnan(t) for t in first[0].targets[2:])
    assert read_examples(str(f), "prm", "he", "first_error")[1].targets == [1.0] * 4  # no wrong step: all kept
    f.write_text(json.dumps({**rec, "labels": [True]}) + "\n")
    with pytest.raises(ShepherdError, match=r"s.jsonl:1: 1 labels for 4 steps"):
        read_examples(str(f), "prm", "he")
    f.write_text(json.dumps({**rec, "completions": [], "labels": []}) + "\n")
    with pytest.raises(ShepherdError, match="no steps"):
        read_examples(str(f), "prm", "he")


def test_orm_reads_samples_as_it_reads_their_annotation(tmp_path):
    """An ORM learns outcomes only: from samples.jsonl it gets the rows annotate's output gives it (so it
    need not wait for annotation); a sample without steps or gold is skipped as annotate skips it."""
    samples = [{"id": f"s{i}", "problem_id": f"p{i // 2}", "question": Q, "gold": "3", "steps": STEPS[: 2 + i],
                "correct": i % 2 == 0} for i in range(3)]
    annotated = [{"id": r["id"], "problem_id": r["problem_id"], "prompt": Q, "completions": r["steps"],
                  "labels": [True] * len(r["steps"]), "correct": r["correct"]} for r in samples]
    f, g = tmp_path / "samples.jsonl", tmp_path / "stepwise.jsonl"
    skipped = [{**samples[0], "id": "empty", "steps": []}, {**samples[0], "id": "nogold", "gold": None}]
    f.write_text("".join(json.dumps(r) + "\n" for r in samples + skipped))
    g.write_text("".join(json.dumps(r) + "\n" for r in annotated))
    from_samples, from_labels = read_examples(str(f), "orm", "he"), read_examples(str(g), "orm", "he")
    assert [(e.problem_id, e.steps) for e in from_samples] == [(e.problem_id, e.steps) for e in from_labels]
    assert [e.targets[-1] for e in from_samples] == [1.0, 0.0, 1.0]
    assert [e.targets[-1] for e in from_labels] == [1.0, 0.0, 1.0]
    assert all(math.isnan(t) for e in from_samples for t in e.targets[:-1])
    with pytest.raises(ShepherdError, match=r"samples.jsonl:1: a sample has no step labels"):
        read_examples(str(f), "prm", "he")
    f.write_text(json.dumps({k: v for k, v in samples[0].items() if k != "correct"}) + "\n")
    with pytest.raises(ShepherdError, match=r"samples.jsonl:1: .*'correct'"):
        read_examples(str(f), "orm", "he")


def test_missing_tag_token_without_permission(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, PreTrainedTokenizerFast

    from reward.prm import ensure_label_tokens

    tok = Tokenizer(models.WordLevel(vocab={"<unk>": 0, "a": 1, "+": 2, "-": 3}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<unk>")
    model = AutoModelForCausalLM.from_config(LlamaConfig(vocab_size=4, hidden_size=32, num_hidden_layers=1,
                                                         num_attention_heads=2, intermediate_size=64))
    with pytest.raises(ShepherdError, match="add_tokens"):
        ensure_label_tokens(model, fast, allow_add=False)
    tag, good, bad = ensure_label_tokens(model, fast, allow_add=True)
    assert model.get_input_embeddings().weight.shape[0] == len(fast) > 4 and len({tag, good, bad}) == 3


def _group(correct, answers, **scores):
    return Group(np.array(correct), answers, {k: np.array(v, dtype=float) for k, v in scores.items()})


def test_selection_rules_on_a_hand_made_table():
    # answers: "7" twice (wrong), "5" once (right), "3" once (wrong)
    g = _group([False, True, False, False], ["7", "5", "7", "3"], prm=[0.2, 0.9, 0.3, 0.1], orm=[0.6, 0.5, 0.1, 0.9])
    idx = np.arange(4)
    assert pick_random(g, idx) == 0.25
    assert pick_majority(g, idx) == 0.0  # "7" wins the vote
    assert pick_best("prm")(g, idx) == 1.0 and pick_best("orm")(g, idx) == 0.0
    assert pick_weighted_vote("prm")(g, idx) == 1.0  # 0.9 for "5" beats 0.5 for "7"
    assert pick_weighted_vote("orm")(g, idx) == 0.0  # "3" (0.9) beats "7" (0.7) and "5" (0.5)
    assert accuracy_at([g], pick_best("prm"), 2).tolist() == [0.5]  # subsets {0,1} -> right, {2,3} -> wrong
    assert accuracy_at([g], pick_best("prm"), 1).tolist() == [0.25]


def test_pairwise_accuracy_within_problems():
    a = _group([True, False, False], ["1", "2", "3"], s=[0.9, 0.5, 0.95])  # beats one of two wrong
    b = _group([True, True, False], ["1", "1", "2"], s=[0.4, 0.4, 0.4])  # ties count half
    c = _group([True, True], ["1", "1"], s=[0.1, 0.2])  # no wrong answer: no pairs
    assert pairwise_accuracy([a, b, c], "s") == pytest.approx((1 + 1.0) / 4)


def test_aggregations():
    assert aggregate([0.9, 0.5, 0.8], "min") == 0.5
    assert aggregate([0.9, 0.5, 0.8], "prod") == pytest.approx(0.36)
    assert aggregate([0.9, 0.5, 0.8], "last") == 0.8
    with pytest.raises(ShepherdError):
        aggregate([0.5], "mean")


def test_train_score_verify_end_to_end(tiny_world, tiny_samples, tmp_path):
    from reward.annotate import main as annotate_main
    from reward.score import main as score_main
    from reward.train import main as train_main
    from reward.verify import main as verify_main

    annotate_main([f"input={tiny_samples}", f"output_dir={tmp_path / 'ann'}", "n_completions=2",
                   "task.min_ops=3", "task.max_ops=5"])
    policy = tiny_world / "policy"
    common = [f"data={tmp_path / 'ann' / 'stepwise.jsonl'}", f"init={policy}", "train.steps=6", "train.batch_size=8",
              "train.warmup_steps=1", "val_share=0.25"]
    prm = train_main(common + [f"output_dir={tmp_path / 'prm'}", "label_type=se"])
    orm = train_main(common + [f"output_dir={tmp_path / 'orm'}", "kind=orm"])
    assert prm["kind"] == "prm" and orm["kind"] == "orm" and prm["train_steps"] == 6
    assert 0.0 <= prm["val_tag_accuracy"] <= 1.0
    AutoModelForCausalLM.from_pretrained(tmp_path / "prm" / "model")  # a plain safetensors folder

    score_main(["--model", str(tmp_path / "prm" / "model"), "--input", str(tmp_path / "ann" / "math_shepherd.jsonl"),
                f"output_dir={tmp_path / 'score'}"])
    rows = [json.loads(line) for line in (tmp_path / "score" / "scores.jsonl").read_text().splitlines()]
    inputs = [json.loads(line) for line in (tmp_path / "ann" / "math_shepherd.jsonl").read_text().splitlines()]
    assert [r["input"] for r in rows] == [r["input"] for r in inputs]  # input order kept
    assert all(len(r["step_scores"]) == r["input"].count(" ки") for r in rows)

    m = verify_main([f"policy={policy}", f"prm={tmp_path / 'prm' / 'model'}", f"orm={tmp_path / 'orm' / 'model'}",
                     f"output_dir={tmp_path / 'verify'}", "num_problems=4", "n=4", "bootstrap=50"])
    for key in ("pairwise_prm", "pairwise_orm", "pairwise_confidence", "bo4_random", "bo4_majority", "bo4_orm",
                "bo4_prm_min", "bo4_sc_prm", "bo4_confidence"):
        assert key in m
    assert (tmp_path / "verify" / "verify.png").stat().st_size > 1000
    assert "| sc_prm |" in (tmp_path / "verify" / "verify.md").read_text()
