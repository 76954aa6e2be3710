"""Rejection sampling and the trace cache."""

import json

import pytest
import torch

import tasks
import utils
from test_math import tiny_model


def lenient_task():
    """The toy task with a reward that passes half the samples, so a random model finds traces."""
    task = tasks.make_toy_task(12, 1, 6, 6, 0, 0)
    task.reward = lambda p, prefix, r: float(len(r) > 0 and r[0] % 2 == 0)
    task.max_new_tokens = 5
    return task


def test_rejection_sampling_stops_at_first_success_and_counts_cost(tmp_path):
    task, model = lenient_task(), tiny_model()
    path = str(tmp_path / "traces.json")
    traces, total = utils.collect_traces(model, task, task.train, budget=20, temperature=1.0, seed=0, cache_path=path, batch_size=16, model_id="m")
    data = json.load(open(path))
    n_params = utils.count_params(model)
    assert traces and total == sum(t.flops for t in traces.values()) + sum(
        2 * n_params * (len(p.prompt_ids) + task.max_new_tokens) * data["attempts"][p.id] for p in task.train if p.id not in traces)
    for pid, t in traces.items():
        assert task.reward(None, [], t.token_ids) == 1.0  # verified correct
        assert 1 <= t.attempts <= 20 and data["attempts"][pid] == t.attempts  # nothing drawn past the success
        assert len(t.behaviour_logprobs) == len(t.token_ids) and all(lp <= 0 for lp in t.behaviour_logprobs)
        assert t.flops >= 2 * n_params * t.attempts * len(next(p for p in task.train if p.id == pid).prompt_ids)
    assert all(a == 20 for pid, a in data["attempts"].items() if pid not in traces)  # budget cap


def test_trace_cache_round_trips_and_rejects_foreign_files(tmp_path):
    task, model = lenient_task(), tiny_model()
    path = str(tmp_path / "traces.json")
    first = utils.collect_traces(model, task, task.train, 20, 1.0, 0, path, batch_size=16, model_id="m")
    again = utils.collect_traces(model, task, task.train, 20, 1.0, 0, path, batch_size=16, model_id="m")
    assert first == again  # read back from disk, equal field by field
    with pytest.raises(utils.InputError, match="different model"):
        utils.collect_traces(model, task, task.train, 20, 1.0, 0, path, batch_size=16, model_id="other")
    with pytest.raises(utils.InputError, match="other problems"):
        utils.load_traces(path, problems=tasks.make_toy_task(12, 1, 6, 6, 0, 99).train)
    open(path, "w").write(open(path).read()[:50])  # truncated
    with pytest.raises(utils.InputError, match="unreadable"):
        utils.load_traces(path)


def test_sampling_log_probs_match_a_forward_pass():
    model, task = tiny_model(), lenient_task()
    prompts = [p.prompt_ids[: 3 + i] for i, p in enumerate(task.train) for _ in range(3)]  # repeats, ragged
    responses, logprobs = utils.sample(model, prompts, 6, 1.0, task.eos_id, task.pad_id, torch.Generator().manual_seed(0))
    assert len({tuple(r) for r in responses}) > len(task.train)  # rows of one prompt sample independently
    ids, attn, mask = utils.make_batch(prompts, responses, task.pad_id, "cpu")
    with torch.no_grad():
        logp, _ = utils.token_logprobs(model, ids, attn)
    flat = torch.tensor([lp for row in logprobs for lp in row])
    torch.testing.assert_close(logp[mask == 1], flat, rtol=1e-4, atol=1e-5)
