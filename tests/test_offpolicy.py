"""Importance-weighted off-policy RL: the weights, their clipping, policy shaping, train/grad_std, a run."""

import math
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

import offpolicy_rl
import prefixrl
import sft_rl
import standard_rl
import tasks
import utils
from conftest import load_script, read_metrics
from test_math import grads, random_batch, tiny_model
from test_resume import stops
from test_smoke import EVAL_KEYS, ROOT, TINY, TRAIN_KEYS


def weight_args(ratio="token", clip=None, shaping=None):
    return SimpleNamespace(ratio=ratio, clip=clip, shaping=shaping)


def sampled_batch(model, temperature, seed=0):
    """Responses the model samples itself at `temperature`, with their sampling log-probs."""
    contexts, _ = random_batch(seed)
    responses, logprobs, _ = utils.sample(model, contexts, 8, temperature, tasks.EOS, tasks.PAD, torch.Generator().manual_seed(seed))
    ids, attn, mask = utils.make_batch(contexts, responses, tasks.PAD, "cpu")
    behaviour = torch.zeros_like(mask)
    behaviour[mask > 0] = torch.tensor([lp for row in logprobs for lp in row])
    return ids, attn, mask, behaviour


@pytest.mark.parametrize("ratio", ["token", "sequence"])
def test_weight_is_one_when_the_trace_is_on_policy(ratio):
    """A 'trace' the current policy sampled itself at the training temperature, accepted at the first
    attempt (P(accept) = 1), has importance weight 1 on every token; at another temperature it does not."""
    model = tiny_model()
    ids, attn, mask, behaviour = sampled_batch(model, 0.7)
    no_accept = torch.zeros(len(ids))
    logp = utils.token_logprobs(model, ids, attn, 0.7)[0].detach()
    w, _ = offpolicy_rl.trace_weights(logp, behaviour, mask, no_accept, weight_args(ratio))
    torch.testing.assert_close(w[mask > 0], torch.ones(int(mask.sum())), rtol=0, atol=1e-4)
    assert torch.all(w[mask == 0] == 0)
    other = utils.token_logprobs(model, ids, attn, 1.0)[0].detach()
    w_other, _ = offpolicy_rl.trace_weights(other, behaviour, mask, no_accept, weight_args(ratio))
    assert (w_other[mask > 0] - 1).abs().max() > 1e-2  # the check is not vacuous


def extreme_weights(ratio, clip, attempts=1):
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(6, 20)
    for i in range(6):
        mask[i, 3 : 8 + 2 * i] = 1
    logp = -torch.rand(6, 20, generator=g) * 0.1  # the policy is sure of every trace token
    behaviour = -torch.rand(6, 20, generator=g) * 30 * mask  # the base model was not: ratios up to e^30
    log_accept = torch.full((6,), -math.log(attempts))
    return offpolicy_rl.trace_weights(logp, behaviour, mask, log_accept, weight_args(ratio, clip)), mask, logp, behaviour


@pytest.mark.parametrize("ratio", ["token", "sequence"])
@pytest.mark.parametrize("clip", [0.5, 2.0, 100.0])
def test_clip_bounds_every_weight(ratio, clip):
    (w, _), mask, _, _ = extreme_weights(ratio, clip)
    assert w[mask > 0].max() <= clip and torch.all(w[mask == 0] == 0)
    (unclipped, raw_max), _, _, _ = extreme_weights(ratio, None)
    assert unclipped.max() > clip and torch.isfinite(unclipped).all()  # clipping really bites
    assert raw_max > offpolicy_rl.MAX_LOG_WEIGHT or ratio == "token"  # sequence ratios overflow: clamped, finite
    assert torch.equal(w, torch.minimum(unclipped, torch.tensor(clip)))


def test_acceptance_correction_divides_the_behaviour_density_by_one_over_attempts():
    """Sequence weight = pi_theta(y) / (pi_0(y) * attempts); the token weights multiply up to it."""
    g = torch.Generator().manual_seed(1)
    mask = torch.zeros(3, 10)
    mask[:, 2:9] = 1
    logp, behaviour = -torch.rand(3, 10, generator=g) * mask, -torch.rand(3, 10, generator=g) * mask
    log_accept = -torch.log(torch.tensor([1.0, 40.0, 650.0]))
    seq, _ = offpolicy_rl.trace_weights(logp, behaviour, mask, log_accept, weight_args("sequence"))
    tok, _ = offpolicy_rl.trace_weights(logp, behaviour, mask, log_accept, weight_args("token"))
    expected = ((logp - behaviour) * mask).sum(1).exp() / torch.tensor([1.0, 40.0, 650.0])
    torch.testing.assert_close(seq[:, 5], expected)
    torch.testing.assert_close(torch.where(mask > 0, tok, 1.0).prod(1), expected)


def test_is_weights_bound_is_the_largest_token_weight_a_trace_can_get():
    """bench/is_weights.py's bound, max_t attempts^(-1/L) / pi_0(y_t), is the weight trace_weights gives
    the trace's least likely token when the policy is sure of it, and no token's weight exceeds it."""
    weight_bound = load_script("bench/is_weights.py").weight_bound
    g = torch.Generator().manual_seed(2)
    for attempts in (1, 40, 1976):
        behaviour = (-torch.rand(12, generator=g) * 2).tolist()
        trace = utils.Trace("p", list(range(12)), "", attempts, 1.0, behaviour)
        mask = torch.ones(2, 12)
        sure, unsure = torch.zeros(12), -torch.rand(12, generator=g)  # pi_theta = 1 on every token, or less
        log_accept = torch.full((2,), -math.log(attempts))
        w, _ = offpolicy_rl.trace_weights(torch.stack([sure, unsure]), torch.tensor([behaviour] * 2), mask,
                                          log_accept, weight_args("token"))
        assert w[0].max().item() == pytest.approx(weight_bound(trace), rel=1e-5)
        assert w[1].max().item() < weight_bound(trace)


def test_policy_shaping_gradient_is_luffys():
    """--shaping: the trace tokens' gradient is that of the objective (1/T) sum A p/(p+gamma), p = pi_theta."""
    contexts, responses = random_batch()
    ids, attn, mask = utils.make_batch(contexts, responses, tasks.PAD, "cpu")
    adv, gamma = torch.linspace(-1, 1, 8), 0.1
    model = tiny_model()
    w, raw = offpolicy_rl.trace_weights(utils.token_logprobs(model, ids, attn)[0].detach(), None, mask, None, weight_args(shaping=gamma))
    assert raw is None and w.max() <= 0.25  # f(p) gamma/(p+gamma) <= 1/4
    offpolicy_rl.reinforce_backward(model, ids, attn, mask, adv, 4, "token", 1.0, w)
    got = grads(model)
    model.zero_grad()
    p = torch.log_softmax(model(ids, attention_mask=attn).logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0].exp()
    (-(adv[:, None] * p / (p + gamma) * mask).sum() / mask.sum()).backward()
    torch.testing.assert_close(got, grads(model), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("script", [standard_rl, prefixrl, sft_rl, offpolicy_rl])
@pytest.mark.parametrize("micro,tokens", [(1, 0), (2, 0), (4, 0), (8, 30)])
def test_grad_std_is_the_spread_of_the_rescaled_micro_batch_gradients(script, micro, tokens):
    """Micro-batch k (b_k of the B rows) alone, scaled by B/b_k, estimates the full gradient; train/grad_std is
    the b_k/B-weighted spread of those estimates around it (micro-batches of 30 tokens: of 2, 2, 1, 2 and 1 rows)."""
    contexts, responses = random_batch()
    ids, attn, mask = utils.make_batch(contexts, responses, tasks.PAD, "cpu")
    adv = torch.linspace(-1, 1, 8)
    model = tiny_model()
    got = script.reinforce_backward(model, ids, attn, mask, adv, micro, "token", 1.0, micro_tokens=tokens)
    full, spans = grads(model).double(), utils.micro_batches(attn, micro, tokens)
    assert len({e - s for s, e in spans}) == (2 if tokens else 1)
    estimates, shares = [], torch.tensor([(e - s) / 8 for s, e in spans], dtype=torch.float64)
    for s, e in spans:  # micro-batch s:e alone: the advantages of the other rows set to 0
        model = tiny_model()
        script.reinforce_backward(model, ids, attn, mask, torch.where((torch.arange(8) >= s) & (torch.arange(8) < e), adv, 0.0), 8, "token", 1.0)
        estimates.append(8 / (e - s) * grads(model).double())
    estimates = torch.stack(estimates)
    torch.testing.assert_close((shares[:, None] * estimates).sum(0), full, rtol=1e-4, atol=1e-7)
    expected = (shares * (estimates - full).pow(2).sum(1)).sum().sqrt().item()
    assert math.isclose(got, expected, rel_tol=1e-4) and got > 0
    assert script.reinforce_backward(tiny_model(), ids, attn, mask, adv, 8, "token", 1.0) is None  # one micro-batch
    assert script.reinforce_backward(tiny_model(), ids, attn, mask, adv, 2, "token", 1.0, grad_std=False) is None  # not asked for


@pytest.mark.parametrize("flags", [{}, dict(ratio="sequence", clip=5.0), dict(shaping=0.1)])
def test_smoke_run(flags, toy_cache, teacher_traces, tmp_path):
    run_dir = str(tmp_path / "run")
    offpolicy_rl.main(offpolicy_rl.Args(run_dir=run_dir, cache_dir=toy_cache, traces=teacher_traces, **{**TINY, "threads": 1}, **flags))
    rows = read_metrics(run_dir)
    train = [r for r in rows if "train/grad_norm" in r]
    evals = [r for r in rows if "eval/heldout_pass@1" in r]
    assert [r["step"] for r in train] == [1, 2, 3] and [r["step"] for r in evals] == [0, 2, 3]
    for r in train:
        assert all(k in r for k in TRAIN_KEYS) and math.isfinite(r["train/grad_norm"])
        assert r["train/grad_std"] > 0 and 0 < r["train/min_is_weight"] <= r["train/max_is_weight"] <= flags.get("clip", math.inf)
    assert all(0 <= r[k] <= 1 for r in evals for k in EVAL_KEYS)
    flops = [r["flops"] for r in rows]
    assert flops == sorted(flops) and flops[0] == 4.0  # the rejection-sampling offset is charged


@pytest.mark.parametrize("script,flags,message", [
    ("offpolicy_rl.py", ["--clip", "0"], "--clip must be > 0"),
    ("offpolicy_rl.py", ["--shaping", "-1"], "--shaping must be > 0"),
    ("sft_rl.py", ["--sft-val-fraction", "1"], "--sft-val-fraction must be in [0, 1)"),
    ("sft_rl.py", ["--sft-steps", "-1"], "--sft-steps must be >= 0"),
])
def test_bad_input_stops_with_one_line(script, flags, message, tmp_path):
    out = subprocess.run([sys.executable, script, "--threads", "1", "--run-dir", str(tmp_path / "r"), *flags],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 2 and message in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not os.path.exists(tmp_path / "r")


def test_traces_without_behaviour_logprobs_need_shaping(toy_cache, teacher_traces, tmp_path,
                                                        capsys):
    traces, total = utils.load_traces(teacher_traces)
    for t in traces.values():
        t.behaviour_logprobs = []  # as re-tokenized traces from another model family
    path = str(tmp_path / "no_logprobs.json")
    utils.save_traces(path, {"source": "other model"}, traces, {pid: 1 for pid in traces}, {pid: t.flops for pid, t in traces.items()})
    args = dict(cache_dir=toy_cache, traces=path, **{**TINY, "threads": 1, "steps": 1})
    run_a = offpolicy_rl.Args(run_dir=str(tmp_path / "a"), **args)
    err = stops(capsys, lambda: offpolicy_rl.main(run_a))
    assert "use --shaping" in err and not os.path.exists(tmp_path / "a")  # made at start, removed
    offpolicy_rl.main(offpolicy_rl.Args(run_dir=str(tmp_path / "b"), shaping=0.1, **args))
    assert [r["step"] for r in read_metrics(str(tmp_path / "b")) if "train/grad_norm" in r] == [1]
