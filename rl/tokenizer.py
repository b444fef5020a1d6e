"""The embedded world's tokenizer: word-level pieces of the arith language, exact round trip.

Its own module (light imports) so that the vLLM venv's tests can build it too.
"""
from __future__ import annotations

import re

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from reward.formats import TAG_TEXT
from reward.tasks import BAD_TOKEN, GOOD_TOKEN

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
# Whole-token pieces of the arith language, longest first where they share a start; the step tag and
# the +/- label tokens are in the vocabulary from the start, so a PRM needs no resize.
PIECES = ["Compute ", "The answer is ", " mod ", " + ", " - ", " * ", " = ", TAG_TEXT, "\n", ".", "(",
          ")", GOOD_TOKEN, BAD_TOKEN, " "] + [str(d) for d in range(10)] + [" ; "]


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer with an exact round trip (Fuse decoder) and BOS added to every input."""
    vocab = {t: i for i, t in enumerate(SPECIALS + PIECES)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    pattern = "|".join(re.escape(p) for p in sorted(PIECES, key=len, reverse=True))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", model_max_length=512)
