"""Memory: sampling bounded by --sample-tokens (KV cache, prefill logits, rows that ended), training
micro-batches by tokens, and the start-up estimate against peaks measured on this CPU.

Peaks are measured as a subprocess's peak resident memory over a phase: /proc/self/clear_refs resets
VmHWM at the start, VmHWM - VmRSS(start) at the end; glibc hands every block of 64 KiB or more back at
once (MALLOC_MMAP_THRESHOLD_), so the peak is that of live tensors, not of a heap that keeps freed memory."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import LlamaForCausalLM

import models
import utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_llama(seed=0, **config):
    torch.manual_seed(seed)
    return LlamaForCausalLM(models.toy_config(**{"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, **config})).eval()


def prompts_of(n, seed=1, lengths=(3, 5, 8, 4)):
    """n prompts, 8 rows of each distinct one (a group's rollouts share their prompt)."""
    g = torch.Generator().manual_seed(seed)
    distinct = [torch.randint(5, 38, (lengths[i % len(lengths)],), generator=g).tolist() for i in range((n + 7) // 8)]
    return [distinct[i // 8] for i in range(n)]


class Spy:
    """Every forward of the model during sampling: its input rows and KV-cache tokens; and every lm-head output."""

    def __init__(self, model):
        self.calls, self.head_outputs = [], []
        self.handles = [model.register_forward_hook(self.forward, with_kwargs=True),
                        model.get_output_embeddings().register_forward_hook(lambda m, i, out: self.head_outputs.append(tuple(out.shape)))]

    def forward(self, module, args, kwargs, out):
        keys = out.past_key_values.layers[0].keys  # [rows, heads, tokens, head dim] after this forward
        self.calls.append(dict(rows=kwargs["input_ids"].shape[0], width=kwargs["input_ids"].shape[1], cached=keys.shape[0] * keys.shape[2]))

    def remove(self):
        for h in self.handles:
            h.remove()


def test_the_kv_cache_is_bounded_by_the_budget_not_by_rows_times_new_tokens():
    model, prompts = tiny_llama(), prompts_of(64)
    longest, new = max(map(len, prompts)), 40
    for budget in [200, 1000, utils.SAMPLE_TOKENS]:
        spy = Spy(model)
        utils.sample(model, prompts, new, 1.0, 2, 0, torch.Generator().manual_seed(0), max_tokens=budget)
        spy.remove()
        rows = min(64, budget // (longest + new))
        assert max(c["rows"] for c in spy.calls) == rows  # the chunk
        assert max(c["cached"] for c in spy.calls) <= min(budget, 64 * (longest + new))
    assert max(c["cached"] for c in spy.calls) > 1000  # unbounded, the cache holds every row


def test_prefill_keeps_the_last_positions_logits_only(monkeypatch):
    model, prompts = tiny_llama(), prompts_of(24, lengths=(9, 4, 7))
    drawn = []
    draw = utils.draw
    monkeypatch.setattr(utils, "draw", lambda logits, *a, **k: drawn.append(tuple(logits.shape)) or draw(logits, *a, **k))
    spy = Spy(model)
    utils.sample(model, prompts, 6, 1.0, 2, 0, torch.Generator().manual_seed(0))
    spy.remove()
    vocab = model.config.vocab_size
    assert drawn[0] == (24, vocab)  # one position's logits per row reach the sampler
    assert spy.calls[0] == dict(rows=3, width=9, cached=3 * 9)  # the prefill: each distinct prompt once, whole
    assert spy.head_outputs[0] == (3, 1, vocab)  # and its lm head ran on the last position only
    assert all(shape[1] == 1 for shape in spy.head_outputs)


def test_rows_leave_the_kv_cache_when_they_end():
    """Every decoding forward runs the rows that have not ended, and only those: row i, whose response
    has L_i tokens, is in the forward after step s iff L_i > s."""
    model, prompts = tiny_llama(), prompts_of(48)
    spy = Spy(model)
    responses, _ = utils.sample(model, prompts, 30, 1.0, 2, 0, torch.Generator().manual_seed(0))
    spy.remove()
    ended = sum(r[-1] == 2 for r in responses)
    assert 10 < ended < 48  # some ended early, others did not
    decoding = [c["rows"] for c in spy.calls[1:]]
    assert decoding == [sum(len(r) > s for r in responses) for s in range(1, len(decoding) + 1)]


def test_the_same_rows_per_chunk_give_the_same_draws_whatever_the_budget():
    model, prompts = tiny_llama(), prompts_of(40)
    longest, new = max(map(len, prompts)), 12
    by_rows = utils.sample(model, prompts, new, 0.7, 2, 0, torch.Generator().manual_seed(3), batch_size=8)
    by_tokens = utils.sample(model, prompts, new, 0.7, 2, 0, torch.Generator().manual_seed(3), max_tokens=8 * (longest + new) + 5)
    assert by_rows == by_tokens
