"""The math of the loss, advantages, pass@k and prefixes."""

import itertools
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import LlamaForCausalLM

import models
import offpolicy_rl
import prefixrl
import sft_rl
import standard_rl
import tasks
import utils

SCRIPTS = [standard_rl, prefixrl, sft_rl, offpolicy_rl]  # each has its own copy of reinforce_backward


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return LlamaForCausalLM(models.toy_config(hidden_size=32, intermediate_size=64, num_hidden_layers=2))


def random_batch(seed=0):
    """8 rollouts: prompt + prefix (context) of varying length, responses of varying length, pads.
    As in the scripts' batches, rollouts share contexts: rows 0-3 one, rows 4-5 another, 6 and 7 their own."""
    g = torch.Generator().manual_seed(seed)
    shared = [torch.randint(5, len(tasks.VOCAB), (n,), generator=g).tolist() for n in (6, 7, 8, 8)]
    contexts, responses = [shared[k] for k in (0, 0, 0, 0, 1, 1, 2, 3)], []
    for i in range(8):
        responses.append(torch.randint(5, len(tasks.VOCAB), (3 + (5 * i) % 7,), generator=g).tolist())
    return contexts, responses


def grads(model):
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def test_loss_mask_covers_exactly_the_sampled_tokens():
    contexts, responses = random_batch()
    ids, attn, mask = utils.make_batch(contexts, responses, tasks.PAD, "cpu")
    for i, (c, r) in enumerate(zip(contexts, responses)):
        # mask[t] = 1 iff token t+1 is a response token
        expected = [0] * (len(c) - 1) + [1] * len(r) + [0] * (ids.shape[1] - len(c) - len(r))
        assert mask[i].tolist() == expected
        assert ids[i, len(c) : len(c) + len(r)].tolist() == r
        assert attn[i].sum() == len(c) + len(r)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda s: s.__name__)
@pytest.mark.parametrize("loss_agg", ["token", "sequence"])
def test_prefix_and_pad_tokens_get_exactly_zero_gradient(script, loss_agg, monkeypatch):
    model = tiny_model()
    contexts, responses = random_batch()
    ids, attn, mask = utils.make_batch(contexts, responses, tasks.PAD, "cpu")
    captured = []

    def spy(*a, **k):
        logp, ent = utils_token_logprobs(*a, **k)
        logp.retain_grad()
        captured.append(logp)
        return logp, ent

    utils_token_logprobs = utils.token_logprobs
    monkeypatch.setattr(utils, "token_logprobs", spy)
    advantages = torch.linspace(-1, 1, 8)
    script.reinforce_backward(model, ids, attn, mask, advantages, 8, loss_agg, 1.0)
    g = captured[0].grad
    assert torch.all(g[mask == 0] == 0)  # prompt, prefix and padding: exactly zero
    assert torch.all(g[(mask == 1) & (advantages[:, None] != 0)] != 0)  # every sampled token learns


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda s: s.__name__)
def test_zero_advantage_rows_are_not_run_and_the_gradient_is_unchanged(script, monkeypatch):
    """Rows whose advantage is 0 add nothing to the loss, so token_logprobs does not run them (rows=):
    the same gradient as running every row."""
    contexts, responses = random_batch()
    ids, attn, mask = utils.make_batch(contexts, responses, tasks.PAD, "cpu")
    advantages = torch.tensor([0.5, 0.0, 0.0, -0.5, 0.0, 0.0, 1.0, 0.0])
    runs, worker = [], utils._token_logprobs

    def spy(model, ids, *a, **k):
        runs.append(ids.shape[0])
        return worker(model, ids, *a, **k)

    monkeypatch.setattr(utils, "_token_logprobs", spy)
    model = tiny_model()
    script.reinforce_backward(model, ids, attn, mask, advantages, 8, "token", 1.0)
    assert runs == [3]  # the 3 rows with an advantage, and only those
    every_row = tiny_model()
    token_logprobs = utils.token_logprobs
    monkeypatch.setattr(utils, "token_logprobs", lambda *a, rows=None, **k: token_logprobs(*a, **k))
    script.reinforce_backward(every_row, ids, attn, mask, advantages, 8, "token", 1.0)
    assert runs == [3, 8]
    torch.testing.assert_close(grads(model), grads(every_row), rtol=1e-5, atol=1e-7)


def test_a_micro_batch_that_runs_no_row_leaves_a_zero_gradient_and_a_nan_loss_a_nan_one():
    """Every gradient exists after it (zeros), so the optimizer steps as on any zero-gradient batch; a
    NaN loss gives NaN gradients with a graph or without one, so the run stops before the update."""
    model = tiny_model()
    ids, attn, mask = utils.make_batch(*random_batch(), tasks.PAD, "cpu")
    logp = utils.token_logprobs(model, ids, attn, 1.0, mask, rows=torch.zeros(8, dtype=torch.bool))[0]
    assert not logp.requires_grad and not logp.any()
    utils.backward(-(mask * logp).sum(), model)
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())
    utils.backward(torch.tensor(float("nan")), model)
    assert all(p.grad.isnan().all() for p in model.parameters())
    model.zero_grad()
    utils.backward(sum(p.sum() for p in model.parameters()) * 0 + float("nan"), model)
    assert all(p.grad.isnan().all() for p in model.parameters())


SHARED_CONTEXT_GRADIENT = """
import hashlib, torch, transformers, models, utils
torch.set_num_threads(2)
torch.manual_seed(0)  # rows x context x hidden above ATen's grain size (32,768): the threads split the work
model = transformers.LlamaForCausalLM(models.toy_config(hidden_size=128, intermediate_size=128, num_hidden_layers=1))
g = torch.Generator().manual_seed(0)
context, responses = torch.randint(5, 40, (40,), generator=g).tolist(), torch.randint(5, 40, (8, 10), generator=g).tolist()
ids, attn, mask = utils.make_batch([context] * 8, responses, 0, "cpu")
logp, _ = utils.token_logprobs(model, ids, attn, 1.0, mask)  # the context runs once, its rows continue from its KV cache
(logp * torch.randn(logp.shape, generator=g)).sum().backward()
print(hashlib.sha256(b"".join(p.grad.numpy().tobytes() for p in model.parameters())).hexdigest())
"""


def test_a_shared_context_gives_the_same_gradient_bytes_in_every_process():
    """The 8 rows' gradients reach their one context summed in a fixed order (index_select's backward),
    at 2 threads too: x[rows]'s backward (index_put, accumulating) sums them in the order the threads
    get there, and the same seed gave other bytes from one process to the next (only a multi-core
    machine can show it; CI's has 2 cores)."""
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    run = [sys.executable, "-c", SHARED_CONTEXT_GRADIENT]
    hashes = {subprocess.run(run, env=env, capture_output=True, text=True, check=True).stdout for _ in range(3)}
    assert len(hashes) == 1, hashes


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda s: s.__name__)
def test_pad_tokens_do_not_change_the_gradient(script):
    contexts, responses = random_batch()
    out = []
    for pad in [tasks.PAD, 7]:
        model = tiny_model()
        ids, attn, mask = utils.make_batch(contexts, responses, pad, "cpu")
        script.reinforce_backward(model, ids, attn, mask, torch.linspace(-1, 1, 8), 8, "token", 1.0)
        out.append(grads(model))
    assert torch.equal(out[0], out[1])


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda s: s.__name__)
@pytest.mark.parametrize("loss_agg", ["token", "sequence"])
def test_micro_batches_leave_the_gradient_unchanged(script, loss_agg):
    contexts, responses = random_batch()
    ids, attn, mask = utils.make_batch(contexts, responses, tasks.PAD, "cpu")
    advantages = torch.linspace(-1, 1, 8)
    out = []
    for micro in [8, 4, 2, 1]:
        model = tiny_model()
        script.reinforce_backward(model, ids, attn, mask, advantages, micro, loss_agg, 1.0)
        out.append(grads(model))
    for g in out[1:]:
        torch.testing.assert_close(g, out[0], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("script", SCRIPTS)
def test_grad_std_leaves_the_gradient_bit_identical(script):
    """train/grad_std reads the accumulated gradient after each micro-batch; the gradient stays bit for
    bit the one the same micro-batches accumulate without it."""
    contexts, responses = random_batch()
    ids, attn, mask = utils.make_batch(contexts, responses, tasks.PAD, "cpu")
    advantages = torch.linspace(-1, 1, 8)
    model = tiny_model()
    grad_std = script.reinforce_backward(model, ids, attn, mask, advantages, 2, "token", 1.0)
    assert grad_std > 0
    with_std = grads(model)
    model = tiny_model()
    weights = mask / mask.sum() * advantages[:, None]
    for s in range(0, 8, 2):
        logp, _ = utils.token_logprobs(model, ids[s : s + 2], attn[s : s + 2], 1.0, mask[s : s + 2])
        (-(weights[s : s + 2] * logp).sum()).backward()
    assert torch.equal(with_std, grads(model))


def test_activation_checkpointing_leaves_the_gradient_unchanged():
    contexts, responses = random_batch()
    ids, attn, mask = utils.make_batch(contexts, responses, tasks.PAD, "cpu")
    out = []
    for checkpointing in [False, True]:
        model = tiny_model()
        model.train()
        if checkpointing:
            models.enable_activation_checkpointing(model)
        assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules()) == checkpointing
        prefixrl.reinforce_backward(model, ids, attn, mask, torch.linspace(-1, 1, 8), 4, "token", 1.0)
        out.append(grads(model))
    torch.testing.assert_close(out[1], out[0], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda s: s.__name__)
@pytest.mark.parametrize("loss_agg", ["token", "sequence"])
@pytest.mark.parametrize("std_normalize", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_reinforce_gradient_matches_the_formula(script, loss_agg, std_normalize, temperature):
    """The scripts' advantages and loss, against the objective written out here:
    A_i = r_i - mean of its group (divided by the group's sample std + 1e-6 with --std-normalize);
    token:    grad = -(1/N) sum_i sum_t w_it A_i grad log pi_T(y_it), N = sampled tokens of the batch;
    sequence: grad = -(1/B) sum_i (1/L_i) sum_t w_it A_i grad log pi_T(y_it), L_i = row i's sampled tokens;
    pi_T = softmax(logits / T), the distribution the rollouts were sampled from; w = 1, except for
    off-policy RL's importance weights (given here: 1 on the on-policy rows, drawn on each group's last)."""
    contexts, responses = random_batch()
    ids, attn, mask = utils.make_batch(contexts, responses, tasks.PAD, "cpu")
    rewards = [1, 0, 0, 0, 1, 1, 0, 0]  # two groups of 4, with different stds
    r = np.array(rewards, dtype=float).reshape(2, 4)
    a = r - r.mean(1, keepdims=True)
    if std_normalize:
        a = a / (r.std(1, ddof=1, keepdims=True) + 1e-6)
    expected_adv = torch.tensor(a.reshape(-1), dtype=torch.float32)
    w, extra = torch.ones_like(mask), {}
    if script is offpolicy_rl:
        w[[3, 7]] = 0.2 + torch.rand(2, mask.shape[1], generator=torch.Generator().manual_seed(1))
        extra = dict(token_weights=w)
    model = tiny_model()
    script.reinforce_backward(model, ids, attn, mask, utils.group_advantages(rewards, 4, std_normalize), 4, loss_agg, temperature, **extra)
    got = grads(model)
    model.zero_grad()
    logits = model(ids, attention_mask=attn).logits[:, :-1]
    logp = torch.log_softmax(logits / temperature, -1).gather(-1, ids[:, 1:, None])[..., 0]
    per_token = w * expected_adv[:, None] * logp * mask
    if loss_agg == "token":
        loss = -per_token.sum() / mask.sum()
    else:
        loss = -(per_token.sum(1) / mask.sum(1)).mean()
    loss.backward()
    torch.testing.assert_close(got, grads(model), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("std_normalize", [False, True])
def test_equal_rewards_give_zero_advantage_and_zero_gradient(std_normalize):
    rewards = [0.0] * 8 + [1.0] * 8 + [0, 1, 0, 0, 1, 0, 0, 0]
    adv = utils.group_advantages(rewards, 8, std_normalize)
    assert torch.all(adv[:16] == 0)
    assert adv[16:].abs().sum() > 0
    assert abs(adv[16:].sum().item()) < 1e-5  # a group's advantages sum to zero
    model = tiny_model()
    contexts, responses = random_batch()
    ids, attn, mask = utils.make_batch(contexts, responses, tasks.PAD, "cpu")
    standard_rl.reinforce_backward(model, ids, attn, mask, adv[:8], 8, "token", 1.0)
    assert torch.all(grads(model) == 0)


def test_group_advantage_is_reward_minus_group_mean():
    adv = utils.group_advantages([1, 0, 0, 0, 1, 1, 0, 1], 4)
    assert adv.tolist() == [0.75, -0.25, -0.25, -0.25, 0.25, 0.25, -0.75, 0.25]


@pytest.mark.parametrize("n,c,k", [(n, c, k) for n in range(1, 9) for c in range(n + 1) for k in range(1, n + 1)])
def test_pass_at_k_matches_brute_force(n, c, k):
    samples = [1] * c + [0] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    brute = sum(any(samples[i] for i in s) for s in subsets) / len(subsets)
    assert math.isclose(utils.pass_at_k(n, c, k), brute, abs_tol=1e-12)


def test_pass_at_k_refuses_k_above_n():
    with pytest.raises(ValueError, match="1 <= k <= n"):
        utils.pass_at_k(3, 0, 8)  # undefined: no 8 of 3 samples


def scripted_evaluation(monkeypatch, task, correct):
    """utils.sample replaced by a script: the j-th sample drawn from a context is [j], and the verifier
    passes it iff j < correct[problem id]: so a problem gets exactly that many correct samples. Returns
    the list the verifier's calls (problem id, prefix, response) are appended to."""
    calls = []

    def sample(model, prompts, *a, **k):
        drawn = {}
        out = []
        for prompt in prompts:
            drawn[tuple(prompt)] = drawn.get(tuple(prompt), -1) + 1
            out.append([drawn[tuple(prompt)]])
        return out, [[-1.0] for _ in out], [[0.5] for _ in out]

    def reward(p, prefix, response):
        calls.append((p.id, list(prefix), list(response)))
        return float(response[0] < correct[p.id])

    monkeypatch.setattr(utils, "sample", sample)
    task.reward = reward
    return calls


@pytest.mark.parametrize("with_prefix", [False, True])
def test_evaluate_counts_each_problems_correct_samples_and_averages_pass_at_k(with_prefix, monkeypatch):
    task = tasks.make_toy_task(12, 1, 4, 4, 0, 0)
    correct = dict(zip([p.id for p in task.train], [0, 3, 8, 1]))
    calls = scripted_evaluation(monkeypatch, task, correct)
    prefixes = [[tasks.WORD_ID[str(i)]] * (i + 1) for i in range(4)] if with_prefix else [[]] * 4
    contexts = [p.prompt_ids + prefix for p, prefix in zip(task.train, prefixes)] if with_prefix else None
    passk, counts = utils.evaluate(None, task, task.train, 8, 0.7, None, ks=(1, 2, 8, 16), contexts=contexts)
    assert counts == [0, 3, 8, 1]
    assert set(passk) == {1, 2, 8}  # k > n samples is not defined
    for k in passk:  # the mean over problems of 1 - C(n-c, k) / C(n, k)
        assert math.isclose(passk[k], np.mean([1 - math.comb(8 - c, k) / math.comb(8, k) for c in counts]), abs_tol=1e-12)
    # every sample scored for its own problem, with the context beyond the prompt as the prefix
    assert calls == [(p.id, prefix, [j]) for p, prefix in zip(task.train, prefixes) for j in range(8)]


def test_save_final_eval_writes_the_counts_of_the_pool_and_of_the_heldout_problems(monkeypatch, tmp_path):
    task = tasks.make_toy_task(12, 1, 4, 3, 2, 0)
    correct = dict(zip([p.id for p in task.train + task.heldout], [2, 0, 5, 7, 1]))
    calls = scripted_evaluation(monkeypatch, task, correct)
    utils.save_final_eval(str(tmp_path), None, task, task.train[1:], 8, 0.7, None)  # the pool: problems with a trace
    with open(tmp_path / "final_eval.json") as f:
        assert json.load(f) == dict(n=8, temperature=0.7, train_counts=[0, 5], heldout_counts=[7, 1])
    assert all(prefix == [] for _, prefix, _ in calls)  # no prefix


def toy_traces(task, problems):
    """Each problem's exact solution as its trace."""
    ids = {p.id: tasks.toy_solution_ids(*tasks.toy_solve(p.meta["params"])) for p in problems}
    return {pid: utils.Trace(pid, t, task.decode(t), 1, 0.0, []) for pid, t in ids.items()}


def test_prefixes_are_fixed_cuts_of_the_reasoning():
    task = tasks.make_toy_task(12, 1, 8, 40, 0, 0)
    traces = toy_traces(task, task.train)
    cuts = utils.cut_prefixes(task, task.train, traces, 3, 0.4, 0.8, seed=0)
    assert len(cuts) == 120 and cuts == utils.cut_prefixes(task, task.train, traces, 3, 0.4, 0.8, seed=0)
    for p, prefix in cuts:
        full = traces[p.id].token_ids
        reasoning = task.reasoning_end(p, full)
        assert prefix == full[: len(prefix)] and tasks.EQUALS not in prefix  # never into the answer
        assert round(0.4 * reasoning) <= len(prefix) <= round(0.8 * reasoning)  # a fraction of the reasoning, not of the whole trace
    assert len({len(prefix) / task.reasoning_end(p, traces[p.id].token_ids) for p, prefix in cuts}) > 6  # really drawn


def test_every_default_prefix_leaves_a_hard_step_and_the_teacher_does_not_just_copy():
    """Over every default training candidate (the pool is a subset), with its exact solution as the
    trace: each of the 3 default cuts leaves at least one hard step to the policy, and the noisy
    teacher (what the base model imitates) continuing from an 80% prefix succeeds far less than always."""
    task = tasks.make_toy_task(tasks.TOY_LENGTH, 11, 11, 128, 0, 0)  # the scripts' default problems
    traces = toy_traces(task, task.train)
    for p, prefix in utils.cut_prefixes(task, task.train, traces, 3, 0.4, 0.8, seed=0):
        rest = tasks.toy_teacher_continuation(p, prefix, rng=None)
        assert any(i in tasks.ENTRIES for i in rest), p.id  # an entry left to write
    rng, wins = np.random.default_rng(0), []
    for p in task.train:
        prefix = traces[p.id].token_ids[: round(0.8 * task.reasoning_end(p, traces[p.id].token_ids))]
        wins.append(task.reward(p, prefix, tasks.toy_teacher_continuation(p, prefix, rng)))
    assert 0 < np.mean(wins) < 0.9


def test_toy_reward_needs_a_whole_solution_written_by_the_policy():
    task = tasks.make_toy_task(12, 6, 8, 2, 0, 0)
    p = task.train[0]
    good = tasks.toy_solution_ids(*tasks.toy_solve(p.meta["params"]))
    answer = good[-4:-1]
    assert task.reward(p, [], good) == 1.0 and task.reward(p, good[:6], good[6:]) == 1.0
    def bump(ids, i):  # value (or entry) + 1
        word = tasks.VOCAB[ids[i]]
        ids[i] = tasks.WORD_ID[word.rstrip("0123456789") + str((int(word.lstrip("r")) + 1) % tasks.MOD)]

    wrong_step = list(good)
    bump(wrong_step, 3 if tasks.VOCAB[good[3]].isdigit() else 4)
    assert task.reward(p, [], wrong_step) == 0.0  # every value is checked: two decoys can cancel
    wrong_entry = list(good)
    bump(wrong_entry, next(i for i, w in enumerate(good) if w in tasks.ENTRIES))
    assert task.reward(p, [], wrong_entry) == 0.0  # and every entry written
    wrong_answer = list(good)
    bump(wrong_answer, len(good) - 2)
    assert task.reward(p, [], wrong_answer) == 0.0
    assert task.reward(p, [], good[:-1]) == 0.0  # no <eos>
    assert task.reward(p, [], [tasks.EQUALS] + answer + [tasks.EOS]) == 0.0  # a guess: '=' first
    assert task.reward(p, [], good[1:]) == 0.0  # a value missing
    assert task.reward(p, [], good[:6] + good[5:]) == 0.0  # a value too many
    assert task.reward(p, [], good[:-1] + [tasks.EQUALS, tasks.EOS]) == 0.0  # trailing junk
    assert task.reward(p, good[:-1], [tasks.EOS]) == 0.0  # the answer sits in the prefix, not in the response
    assert task.reward(p, good[: good.index(tasks.EQUALS)], good[good.index(tasks.EQUALS) :]) == 0.0
    assert len(set(map(str, (q.answer for q in tasks.make_toy_task(12, 0, 8, 400, 0, 1).train)))) > 200  # a wide answer space


def test_toy_problems_have_exactly_the_hard_steps_asked_for():
    rng = np.random.default_rng(0)
    for length, hard in [(12, 0), (12, 1), (12, 7), (12, 11), (15, 14)]:
        for _ in range(20):
            params = tasks.params_with_hard_steps(rng, length, hard, 0)
            entries = tasks.toy_solve(params)[1]
            assert len(params[2]) == length and sum(e is not None for e in entries) == hard
            bigs = [b for b in params[2] if b >= tasks.BIG]
            distinct = len(set(bigs))
            assert sorted(set(bigs[-distinct:])) == sorted(set(bigs)) if hard else not bigs  # each one's last use in the tail
            if hard >= len(range(tasks.BIG, tasks.MOD)):
                assert distinct == tasks.MOD - tasks.BIG  # the whole table
    def hard_positions(params):
        return tuple(b >= tasks.BIG for b in params[2])

    positions = [hard_positions(tasks.params_with_hard_steps(rng, 12, 4, 0)) for _ in range(50)]
    assert all(pos[-1] and not pos[0] for pos in positions)  # the last step is always hard, the first never
    assert len(set(positions)) > 30  # the others at drawn positions, not a fixed pattern
    with pytest.raises(utils.InputError, match=r"--hard-max <= 11 \(the first step is easy\), got 9..12"):
        tasks.make_toy_task(12, 9, 12, 4, 4, 0)
    for length in (1, tasks.MAX_TOY_LENGTH + 1):  # refused before any pretraining
        with pytest.raises(utils.InputError, match=f"--toy-length must be in 2..{tasks.MAX_TOY_LENGTH}, got {length}"):
            tasks.make_toy_task(length, 0, 0, 4, 4, 0)
        with pytest.raises(utils.InputError, match="--toy-length must be in"):
            models.toy_model_dir("/nonexistent-cache", 20, 0, length=length)


def test_toy_pretraining_sees_every_count_of_hard_steps():
    """The base models' pretraining problems draw each problem's share of hard steps uniformly, so every
    count of hard steps 0..L is common, the default problems' L - 1 included (where their solution ends is
    learned, not extrapolated); b is uniform among the big numbers at a hard step, the small ones at an
    easy one."""
    rng = np.random.default_rng(0)
    draws = [tasks.random_params(rng, tasks.TOY_LENGTH) for _ in range(6500)]
    counts = np.bincount([sum(b >= tasks.BIG for b in adds) for _, _, adds in draws], minlength=tasks.TOY_LENGTH + 1)
    assert len(counts) == tasks.TOY_LENGTH + 1 and counts.min() > 0.5 * len(draws) / (tasks.TOY_LENGTH + 1)
    big = np.bincount([b for _, _, adds in draws for b in adds if b >= tasks.BIG], minlength=tasks.MOD)[tasks.BIG:]
    small = np.bincount([b for _, _, adds in draws for b in adds if b < tasks.BIG], minlength=tasks.BIG)
    for numbers in (big, small):
        assert numbers.min() > 0.9 * numbers.mean()
    assert {f for f, _, _ in draws} == set(range(tasks.FAMILIES)) and {x for _, x, _ in draws} == set(range(tasks.MOD))


def test_toy_families_have_their_own_rules():
    """Each training problem is of its own family, its held-out twin of the same, and uses the family's
    whole table. No property of the values is shared by a family's entries: in every family half the
    entries take the smaller value of their pair as rule and half the one ahead on the circle, and no
    decoy sits opposite its rule. Within a family no token is both a rule and a decoy (one entry's decoy
    is never a sibling's rule). The other teacher errs where the base one does not. The reward
    checks every value: no path with a decoy step is rewarded."""
    big = range(tasks.BIG, tasks.MOD)
    tables = {tuple(tasks.toy_solve((f, 5, list(big)))[0]) for f in range(tasks.FAMILIES)}
    assert len(tables) == tasks.FAMILIES  # a table of its own
    base, other = tasks.FAMILY_DECOY["base"], tasks.FAMILY_DECOY["other"]
    for f in range(tasks.FAMILIES):
        pairs = list(zip(tasks.FAMILY_RULE[f], base[f]))
        assert len(pairs) == len(big) and all(r != d and (r - d) % tasks.MOD != tasks.MOD // 2 for r, d in pairs)
        assert 2 * sum(r < d for r, d in pairs) == len(big)
        assert 2 * sum(0 < (r - d) % tasks.MOD < tasks.MOD // 2 for r, d in pairs) == len(big)
        assert not set(tasks.FAMILY_RULE[f]) & set(base[f])
        assert all(o not in (r, d) for r, d, o in zip(tasks.FAMILY_RULE[f], base[f], other[f]))
    task = tasks.make_toy_task(12, 11, 11, tasks.FAMILIES, tasks.FAMILIES, 0)
    assert [p.meta["family"] for p in task.train] == [p.meta["family"] for p in task.heldout] == list(range(tasks.FAMILIES))
    assert all(set(p.meta["params"][2]) >= set(big) for p in task.train + task.heldout)
    rng = np.random.default_rng(0)
    for teacher in tasks.TEACHERS:
        for p in task.train[:100]:
            values, entries = tasks.toy_solve(p.meta["params"], rng, 0.5, teacher)
            right = values == p.meta["values"] and entries == p.meta["entries"]
            assert task.reward(p, [], tasks.toy_solution_ids(values, entries)) == float(right)
