"""Measure the peak memory of two training steps of a random Llama or GPT-2 on this CPU, and
utils.memory_estimate's for it.

    MALLOC_MMAP_THRESHOLD_=65536 python tests/peak_memory.py '{"hidden": 256, ...}'

prints one JSON line: measured (bytes: peak resident memory over making the model and optimizer
and two steps of sampling and REINFORCE, minus the resident memory before) and the estimate's parts.
The steps run once on a tiny model first, so that code loaded on first use is not counted. Rows
never end (eos outside the vocabulary): the worst case the estimate is for. tests/test_memory.py
runs it."""

import gc
import json
import os
import re
import sys
import types

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel, LlamaForCausalLM  # noqa: E402

import models  # noqa: E402
import standard_rl  # noqa: E402
import utils  # noqa: E402

WARM_UP = dict(hidden=32, layers=1, heads=2, vocab=64, rows=4, rollouts=2, new=4, prompt=4,
               micro_batch=4)


def status(key):
    with open("/proc/self/status") as f:
        return int(re.search(rf"{key}:\s+(\d+) kB", f.read()).group(1)) * 1024


def build(c):
    torch.manual_seed(0)
    if c.get("kind") == "gpt2":
        config = GPT2Config(n_embd=c["hidden"], n_layer=c["layers"], n_head=c["heads"],
                            vocab_size=c["vocab"], n_positions=c["prompt"] + c["new"], attn_pdrop=0,
                            embd_pdrop=0, resid_pdrop=0, bos_token_id=0, eos_token_id=0)
        return GPT2LMHeadModel(config)
    config = models.toy_config(
        hidden_size=c["hidden"], intermediate_size=4 * c["hidden"], num_hidden_layers=c["layers"],
        num_attention_heads=c["heads"], num_key_value_heads=c["heads"], vocab_size=c["vocab"],
        max_position_embeddings=c["prompt"] + c["new"], tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    if c.get("checkpointing"):
        models.enable_activation_checkpointing(model)
    return model


def steps(model, c, n=2):
    """n steps of the scripts' loop: sample, REINFORCE, clip, AdamW, free the gradient."""
    optimizer = utils.adamw(model, 1e-4)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, c["vocab"], (c["prompt"],), generator=g).tolist()
               for _ in range(c["rows"] // c["rollouts"])]
    contexts = [p for p in prompts for _ in range(c["rollouts"])]
    for _ in range(n):
        model.eval()
        responses, _, _ = utils.sample(model, contexts, c["new"], 1.0, c["vocab"], 0, g,
                                    max_tokens=c["sample_tokens"])
        ids, attn, mask = utils.make_batch(contexts, responses, 0, "cpu")
        model.train()
        advantages = torch.linspace(-1, 1, len(ids))
        micro_tokens = c.get("micro_tokens", 0)
        standard_rl.reinforce_backward(model, ids, attn, mask, advantages, c["micro_batch"],
                                       "token", 1.0, micro_tokens=micro_tokens, grad_std=True)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        del ids, attn, mask, responses


def main(c):
    torch.set_num_threads(1)
    warm_up = dict(c, **WARM_UP, sample_tokens=8, micro_tokens=min(c.get("micro_tokens", 0), 8))
    steps(build(warm_up), warm_up)
    gc.collect()
    before = status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    model = build(c)
    steps(model, c)
    measured = status("VmHWM") - before
    args = types.SimpleNamespace(  # the scripts' flags
        sample_tokens=c["sample_tokens"], prompts_per_step=c["rows"] // c["rollouts"],
        rollouts=c["rollouts"], eval_samples=c["rollouts"], micro_batch=c["micro_batch"],
        micro_batch_tokens=c.get("micro_tokens", 0), grad_std=True)
    estimate = utils.memory_estimate(model, args, c["prompt"], c["new"])
    print(json.dumps(dict(measured=measured, **estimate)))


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
