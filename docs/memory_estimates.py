"""Prints the start-up memory estimate (utils.memory_estimate) of docs/usage.md's single-GPU
commands, as on a GPU, without their weights: nothing is downloaded and nothing runs on a GPU.

    python docs/memory_estimates.py

Each model is its config, written here by hand from the model's published config.json (no network):
its parameters are counted on the meta device, and its bytes per token (KV cache, activations saved
for backward) are measured on this CPU on copies with 1 and 2 layers and a 256-token vocabulary
(uninitialized weights), under CPU bfloat16 autocast as a stand-in for CUDA's, then extended
linearly to every layer."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config, Qwen3Config  # noqa: E402

import prefixrl  # noqa: E402
import utils  # noqa: E402

CONFIGS = {  # tied input and output embeddings in all three
    "SmolLM2-135M": (LlamaConfig, dict(
        hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, vocab_size=49152)),
    "Qwen2.5-1.5B": (Qwen2Config, dict(
        hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
        num_key_value_heads=2, vocab_size=151936)),
    "Qwen3-4B": (Qwen3Config, dict(
        hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, vocab_size=151936)),
}
PROMPT_TOKENS = 200  # a problem's chat-formatted prompt, assumed
BATCH = dict(prompts_per_step=128, rollouts=8)
COMMANDS = [  # (model, prefixrl.py's flags besides --device cuda --dataset hard.jsonl)
    ("SmolLM2-135M", dict(BATCH, max_new_tokens=256)),
    ("Qwen2.5-1.5B", dict(BATCH, max_new_tokens=4096, micro_batch_tokens=32768,
                          gradient_checkpointing=True)),
    ("Qwen3-4B", dict(BATCH, max_new_tokens=4096, sample_tokens=131072, micro_batch_tokens=16384,
                      gradient_checkpointing=True, dtype="bfloat16", grad_std=False)),
    ("Qwen3-4B", dict(BATCH, max_new_tokens=4096, micro_batch=8)),  # too big for 80 GB
]


def build(name, device, **overrides):
    cls, config = CONFIGS[name]
    with torch.device("meta"):
        config = cls(**{**config, **overrides}, tie_word_embeddings=True)
        model = AutoModelForCausalLM.from_config(config)
    return model if device == "meta" else model.to_empty(device=device)


def flag(name, value):
    name = name.replace("_", "-")
    if isinstance(value, bool):
        return f"--{name}" if value else f"--no-{name}"
    return f"--{name} {value}"


def per_token(name, dtype):
    """memory_per_token of the whole model, from copies with 1 and 2 layers."""
    one, two = [build(name, "cpu", num_hidden_layers=n, vocab_size=256).to(dtype) for n in (1, 2)]
    (kv1, act1), (kv2, act2) = utils.memory_per_token(one), utils.memory_per_token(two)
    layers = CONFIGS[name][1]["num_hidden_layers"]
    return kv1 * layers, act1 + (act2 - act1) * (layers - 1)


def main():
    utils.autocast = lambda device: torch.autocast("cpu", dtype=torch.bfloat16)  # as CUDA's
    measured = {}
    for name, flags in COMMANDS:
        args = prefixrl.Args(**{k: v for k, v in flags.items() if k != "max_new_tokens"})
        dtype = getattr(torch, args.dtype)
        measured[name, dtype] = measured.get((name, dtype)) or per_token(name, dtype)
        model = build(name, "meta").to(dtype)
        if args.gradient_checkpointing:  # and the shared context kept, as on Llama and Qwen
            model.gradient_checkpointing_enable()
            setattr(model, utils.SHARED_CONTEXT_CHECKPOINTING, True)
        new = flags["max_new_tokens"]
        prompt = PROMPT_TOKENS + round(args.cut_max * new)  # and PrefixRL's longest prefix
        e = utils.memory_estimate(model, args, prompt, new, measured[name, dtype], cuda=True)
        gb = {k: f"{v / 1e9:.1f}" for k, v in e.items()}
        command = " ".join(flag(k, v) for k, v in flags.items())
        print(f"| {name} | `{command}` | {gb['total']} | {gb['weights']} + {gb['adamw']} + "
              f"{gb['autocast_copy']} | {gb['sampling']} ({e['rows']} x {e['row']}) | "
              f"{gb['training']} ({e['micro_rows']} rows) |")


if __name__ == "__main__":
    main()
