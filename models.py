"""Model loading: the toy base model (pretrained here, cached on disk), local dirs and hub ids."""

import hashlib
import json
import math
import os
import shutil
import time

import numpy as np
import torch

import tasks
from utils import InputError


# TOY BASE MODEL: a ~0.8M-parameter Llama pretrained on the noisy teacher's traces
def toy_config(**overrides):
    from transformers import LlamaConfig

    cfg = dict(
        vocab_size=len(tasks.VOCAB), hidden_size=128, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=4, intermediate_size=512, max_position_embeddings=128, tie_word_embeddings=True,
        pad_token_id=tasks.PAD, bos_token_id=tasks.BOS, eos_token_id=tasks.EOS,
    )
    cfg.update(overrides)
    return LlamaConfig(**cfg)


def pretrain_toy(out_dir: str, steps: int, seed: int, toy_steps: int = 10, batch: int = 128, lr: float = 3e-3):
    """Next-token pretraining on noisy-teacher traces (loss on the solution only), warmup + cosine."""
    from transformers import LlamaForCausalLM
    from tqdm import tqdm

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = LlamaForCausalLM(toy_config())
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    prompt_len = len(tasks.toy_prompt_ids(tasks.random_params(np.random.default_rng(0))))
    bar = tqdm(range(steps), desc="pretrain toy base model", mininterval=2)
    for _ in bar:
        ids = torch.tensor(tasks.toy_teacher_batch(rng, batch, toy_steps))
        logits = model(ids).logits[:, prompt_len - 1 : -1]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, prompt_len:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    tmp = out_dir + f".tmp{os.getpid()}"
    model.save_pretrained(tmp)
    tasks.toy_tokenizer().save_pretrained(tmp)
    with open(os.path.join(tmp, "prefixrl_toy.json"), "w") as f:
        json.dump(dict(steps=steps, seed=seed, toy_steps=toy_steps, batch=batch, lr=lr), f)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)  # atomic: a killed pretraining never leaves a half-written cache


def toy_model_dir(cache_dir: str, pretrain_steps: int, seed: int) -> str:
    """The cached toy base model, pretrained on first use; keyed by its config and seed."""
    spec = json.dumps(dict(config=toy_config().to_dict(), steps=pretrain_steps, seed=seed), sort_keys=True)
    path = os.path.join(cache_dir, "toy-base-" + hashlib.sha256(spec.encode()).hexdigest()[:12])
    if not os.path.exists(os.path.join(path, "prefixrl_toy.json")):
        os.makedirs(cache_dir, exist_ok=True)
        t0 = time.time()
        pretrain_toy(path, pretrain_steps, seed)
        print(f"pretrained toy base model in {time.time() - t0:.0f}s -> {path}")
    return path


# ANY MODEL: "toy", a local HF dir, or a hub id
def load_model(name: str, cache_dir: str, device: str, toy_pretrain_steps: int = 900, toy_seed: int = 0):
    """Returns (model, tokenizer, model_id). model_id names the weights for cache keys."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = toy_model_dir(cache_dir, toy_pretrain_steps, toy_seed) if name == "toy" else name
    if os.path.sep in path or path.startswith("."):
        if not os.path.isdir(path):
            raise InputError(f"model path '{path}' does not exist (give a local HF directory, a hub id, or 'toy')")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except OSError as e:
        raise InputError(f"could not load model '{name}': {str(e).splitlines()[0]}") from None
    return model.to(device), tokenizer, os.path.abspath(path) if os.path.isdir(path) else path
