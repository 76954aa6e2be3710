"""Each algorithm's training loop, spied on for one step of its main(): what the verifier sees, what
enters make_batch and the loss, the advantages, the off-policy weights, the PrefixRL mix, and that the
step moves the policy the way the advantages say. The spies wrap module-level names only (utils.sample,
utils.make_batch, utils.evaluate, utils.save_final_eval, tasks.load_task's task.reward, the script's
reinforce_backward / sft_backward) and read the calls in the order they happen."""

import inspect
import math

import numpy as np
import pytest
import torch

import offpolicy_rl
import prefixrl
import sft_rl
import standard_rl
import tasks
import utils
from conftest import SMOKE_TASK

SCRIPTS = [standard_rl, prefixrl, sft_rl, offpolicy_rl]
PROMPTS, ROLLOUTS = 8, 4
# non-default --std-normalize and --loss-agg, so a loop that drops either is seen
FLAGS = dict(steps=1, prompts_per_step=PROMPTS, rollouts=ROLLOUTS, micro_batch=16, eval_every=1, eval_samples=2, threads=1,
             toy_pretrain_steps=20, std_normalize=True, loss_agg="sequence", temperature=0.8, lr=1e-6, **SMOKE_TASK)
SCRIPT_FLAGS = {sft_rl: dict(sft_steps=2, sft_batch=4, sft_val_fraction=0.0)}
ATTEMPTS = 3  # every trace was accepted at its 3rd sample: the off-policy weight carries P(accept) = 1/3


def fake_reward(problem, prefix_ids, response_ids):
    """About half the rollouts pass (those whose first token has an even id), whatever a barely trained
    model writes, so groups mix 0s and 1s, and what passes is something one step can learn."""
    return float(len(response_ids) > 0 and response_ids[0] % 2 == 0)


@pytest.fixture(scope="module")
def step_traces(teacher_traces, tmp_path_factory):
    """The teacher traces, each with a behaviour log-prob of its own per token (so a shift shows) and
    accepted at attempt ATTEMPTS, stored in reverse order of the problems (so a trace taken by its
    position instead of its problem shows)."""
    traces, _ = utils.load_traces(teacher_traces)
    traces = dict(reversed(list(traces.items())))
    for t in traces.values():
        t.attempts, t.behaviour_logprobs = ATTEMPTS, [-0.05 * (k + 1) for k in range(len(t.token_ids))]
    path = str(tmp_path_factory.mktemp("step_traces") / "traces.json")
    utils.save_traces(path, {"source": "teacher"}, traces, {pid: ATTEMPTS for pid in traces}, {pid: 1.0 for pid in traces})
    return path, traces


def row_logprobs(model, ids, attn, temperature):
    """log pi_T of every next token, from one plain forward (not the scripts' chunked code)."""
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
    return torch.log_softmax(logits / temperature, -1).gather(-1, ids[:, 1:, None])[..., 0]


def record_one_step(script, flags, cache, traces_path, traces, run_dir):
    """One RL step of the script's main(), with every call that matters recorded in order as
    (kind, data) events."""
    events, seen = [], {}

    def wrap(owner, name, record):
        inner = getattr(owner, name)

        def spy(*a, **k):
            return record(inner, *a, **k)

        mp.setattr(owner, name, spy)
        return inner

    def on_sample(inner, model, prompts, *a, **k):
        out = inner(model, prompts, *a, **k)
        events.append(("sample", dict(prompts=[list(p) for p in prompts], responses=[list(r) for r in out[0]])))
        return out

    def on_load_task(inner, *a, **k):
        task = inner(*a, **k)

        def reward(p, prefix, response):
            value = fake_reward(p, prefix, response)
            events.append(("reward", dict(problem=p, prefix=list(prefix), response=list(response), value=value)))
            return value

        task.reward = reward
        seen["task"] = task
        return task

    def on_make_batch(inner, contexts, responses, *a, **k):
        events.append(("make_batch", dict(contexts=[list(c) for c in contexts], responses=[list(r) for r in responses])))
        return inner(contexts, responses, *a, **k)

    def on_backward(inner, *a, **k):
        call = inspect.signature(inner).bind(*a, **k)
        call.apply_defaults()
        data = {n: v.detach().clone() if torch.is_tensor(v) else v for n, v in call.arguments.items()}
        data["logp_before"] = row_logprobs(data["model"], data["ids"], data["attn"], data["temperature"])
        events.append(("backward", data))
        return inner(*a, **k)

    def on_evaluate(inner, model, task, problems, *a, **k):
        backward = [d for kind, d in events if kind == "backward"]
        if backward and "logp_after" not in backward[0]:  # the first evaluation after the step
            b = backward[0]
            b["logp_after"] = row_logprobs(model, b["ids"], b["attn"], b["temperature"])
        call = inspect.signature(inner).bind(model, task, problems, *a, **k)
        call.apply_defaults()
        events.append(("evaluate", dict(problems=[p.id for p in problems], contexts=call.arguments["contexts"])))
        return inner(model, task, problems, *a, **k)

    def on_final_eval(inner, run_dir, model, task, train_problems, n, *a, **k):
        events.append(("final_eval", dict(problems=[p.id for p in train_problems], n=n)))
        return inner(run_dir, model, task, train_problems, n, *a, **k)

    def on_sft_backward(inner, model, ids, attn, loss_mask, *a, **k):
        events.append(("sft_backward", dict(ids=ids.clone(), loss_mask=loss_mask.clone())))
        return inner(model, ids, attn, loss_mask, *a, **k)

    with pytest.MonkeyPatch.context() as mp:
        wrap(utils, "sample", on_sample)
        wrap(tasks, "load_task", on_load_task)
        wrap(utils, "make_batch", on_make_batch)
        wrap(utils, "evaluate", on_evaluate)
        wrap(utils, "save_final_eval", on_final_eval)
        wrap(script, "reinforce_backward", on_backward)
        if script is sft_rl:
            wrap(script, "sft_backward", on_sft_backward)
        args = script.Args(run_dir=run_dir, cache_dir=cache, traces=traces_path, **flags, **SCRIPT_FLAGS.get(script, {}))
        script.main(args)
    task = seen["task"]
    return dict(script=script, args=args, events=events, task=task, traces=traces,
                pool=[p for p in task.train if p.id in traces])


@pytest.fixture(scope="module", params=SCRIPTS, ids=lambda s: s.__name__)
def one_step(request, toy_cache, step_traces, tmp_path_factory):
    return record_one_step(request.param, FLAGS, toy_cache, *step_traces, str(tmp_path_factory.mktemp("run") / "run"))


@pytest.fixture(scope="module", params=SCRIPTS, ids=lambda s: s.__name__)
def one_token_step(request, toy_cache, step_traces, tmp_path_factory):
    """The same step with one-token responses: all of a response's log-prob is the token the reward judged."""
    return record_one_step(request.param, dict(FLAGS, max_new_tokens=1), toy_cache, *step_traces, str(tmp_path_factory.mktemp("run") / "run"))


def training_step(run):
    """The step's calls: the last sampling, make_batch and len(batch) rewards before the backward."""
    events = run["events"]
    (b,) = [i for i, (kind, _) in enumerate(events) if kind == "backward"]
    backward = events[b][1]
    last = {kind: d for kind, d in events[:b] if kind in ("sample", "make_batch")}  # the last of each kind
    rewards = [d for kind, d in events[:b] if kind == "reward"][-len(backward["ids"]):]
    return last["sample"], rewards, last["make_batch"], backward


def expected_advantages(values, std_normalize):
    r = np.array(values, dtype=float).reshape(-1, ROLLOUTS)
    a = r - r.mean(1, keepdims=True)
    if std_normalize:
        a = a / (r.std(1, ddof=1, keepdims=True) + 1e-6)
    return torch.tensor(a.reshape(-1), dtype=torch.float32)


def on_policy_rows(run):
    """Off-policy RL: each group's last row is the problem's trace; every other row is sampled."""
    return [run["script"] is not offpolicy_rl or j < ROLLOUTS - 1 for _ in range(PROMPTS) for j in range(ROLLOUTS)]


def test_what_the_verifier_the_batch_and_the_loss_see(one_step):
    """Sampled response -> task.reward(problem, prefix, response) -> make_batch(prompt + prefix, response)
    -> the loss's ids and mask (the response's tokens only) and advantages (reward - group mean, over
    the group's rewards, / std with --std-normalize), with --loss-agg and --temperature as given."""
    run, args = one_step, one_step["args"]
    sample, rewards, batch, backward = training_step(run)
    pool = {p.id for p in run["pool"]}
    assert len(rewards) == PROMPTS * ROLLOUTS
    for g in range(PROMPTS):  # a group: one problem, one prefix
        group = rewards[g * ROLLOUTS : (g + 1) * ROLLOUTS]
        assert len({(r["problem"].id, tuple(r["prefix"])) for r in group}) == 1 and group[0]["problem"].id in pool
    contexts = [r["problem"].prompt_ids + r["prefix"] for r in rewards]
    assert batch["contexts"] == contexts and batch["responses"] == [r["response"] for r in rewards]
    on = on_policy_rows(run)
    assert sample["prompts"] == [c for c, o in zip(contexts, on) if o]  # the verifier scores what was sampled
    assert sample["responses"] == [r["response"] for r, o in zip(rewards, on) if o]
    ids, mask = backward["ids"], backward["loss_mask"]
    for i, (c, r) in enumerate(zip(contexts, batch["responses"])):
        assert ids[i, : len(c) + len(r)].tolist() == c + r and torch.all(ids[i, len(c) + len(r) :] == run["task"].pad_id)
        assert mask[i].tolist() == [0] * (len(c) - 1) + [1] * len(r) + [0] * (mask.shape[1] - len(c) - len(r) + 1)
    values = [r["value"] for r in rewards]
    assert 0 < np.mean(values) < 1  # advantages that are not all zero
    torch.testing.assert_close(backward["advantages"].float(), expected_advantages(values, args.std_normalize), rtol=1e-5, atol=1e-6)
    assert backward["loss_agg"] == args.loss_agg and backward["temperature"] == args.temperature


def test_evaluation_is_on_the_pool_and_the_heldout_problems_without_prefix(one_step):
    """The eval rows and final_eval.json: the pool (problems with a trace) and the held-out problems, from
    their prompts alone."""
    run = one_step
    evals = [d for kind, d in run["events"] if kind == "evaluate"]
    pool, heldout = [p.id for p in run["pool"]], [p.id for p in run["task"].heldout]
    assert [e["problems"] for e in evals] == [pool, heldout] * 3  # at step 0, at the last step, and the final counts
    assert all(e["contexts"] is None for e in evals)  # no prefix
    assert [d for kind, d in run["events"] if kind == "final_eval"] == [dict(problems=pool, n=64)]


def test_one_step_raises_positive_and_lowers_negative_advantage_responses(one_token_step):
    """The learning signal: after one optimizer step, the log-prob of the responses the policy sampled
    went up on average where their advantage was positive and down where it was negative. (Off-policy
    RL's trace rows are left out: the traces share most of their tokens, so each one's log-prob also
    follows the other traces'.)"""
    run = one_token_step
    _, _, _, backward = training_step(run)
    adv, sampled = backward["advantages"], torch.tensor(on_policy_rows(run))
    change = ((backward["logp_after"] - backward["logp_before"]) * backward["loss_mask"]).sum(1)
    up, down = (adv > 0) & sampled, (adv < 0) & sampled
    assert up.any() and down.any()
    assert change[up].mean() > 0 > change[down].mean()


@pytest.mark.parametrize("one_step", [prefixrl], indirect=True, ids=lambda s: s.__name__)
def test_prefixrl_mixes_3_to_1_prefixes_of_each_problems_own_trace(one_step):
    """PrefixRL: 3 of 4 groups have a prefix, a cut in 40-80% of that problem's own trace's reasoning.
    (That the prefix is context, sampled from but not in the loss mask, and that the verifier gets it
    apart from the response: test_what_the_verifier_the_batch_and_the_loss_see.)"""
    run = one_step
    _, rewards, _, _ = training_step(run)
    task, traces = run["task"], run["traces"]
    groups = rewards[::ROLLOUTS]
    prefixed = [r for r in groups if r["prefix"]]
    assert len(prefixed) == round(PROMPTS * 0.75) and len(groups) - len(prefixed) == PROMPTS // 4
    for r in prefixed:
        trace = traces[r["problem"].id].token_ids
        reasoning = task.reasoning_end(r["problem"], trace)
        assert r["prefix"] == trace[: len(r["prefix"])]
        assert round(0.4 * reasoning) <= len(r["prefix"]) <= round(0.8 * reasoning)


@pytest.mark.parametrize("one_step", [offpolicy_rl], indirect=True, ids=lambda s: s.__name__)
def test_offpolicy_puts_the_trace_last_with_its_importance_weights(one_step):
    """Off-policy RL: each group is n - 1 sampled rollouts and the problem's stored trace, last; the
    trace is in its group's mean (the advantages test above); its tokens are weighted
    pi_T(y_t) / pi_0(y_t) * P(accept)^(1/L), with pi_0's log-probs the stored ones in order, P(accept) =
    1/attempts; every sampled row is weighted exactly 1."""
    run = one_step
    _, rewards, _, backward = training_step(run)
    traces, on = run["traces"], on_policy_rows(run)
    for i, r in enumerate(rewards):
        if not on[i]:
            assert r["response"] == traces[r["problem"].id].token_ids and r["prefix"] == []
    w, mask, logp = backward["token_weights"], backward["loss_mask"], backward["logp_before"]
    for i, r in enumerate(rewards):
        on_mask = mask[i] > 0
        if on[i]:
            assert torch.all(w[i][on_mask] == 1)
        else:
            t = traces[r["problem"].id]
            expected = (logp[i][on_mask] - torch.tensor(t.behaviour_logprobs) - math.log(t.attempts) / len(t.token_ids)).exp()
            torch.testing.assert_close(w[i][on_mask], expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("one_step", [sft_rl], indirect=True, ids=lambda s: s.__name__)
def test_sft_phase_learns_each_problems_own_trace_and_nothing_else(one_step):
    """SFT+RL's SFT steps: each row is a pool problem's prompt, then its own trace, then padding; the loss
    mask is 1 on the trace's tokens only."""
    run = one_step
    steps = [d for kind, d in run["events"] if kind == "sft_backward"]
    assert len(steps) == SCRIPT_FLAGS[sft_rl]["sft_steps"]
    for d in steps:
        ids, mask = d["ids"], d["loss_mask"]
        assert len(ids) == SCRIPT_FLAGS[sft_rl]["sft_batch"]
        for row, m in zip(ids.tolist(), mask.tolist()):
            (p,) = [p for p in run["pool"] if row[: len(p.prompt_ids)] == p.prompt_ids]
            trace, n = run["traces"][p.id].token_ids, len(p.prompt_ids)
            assert row[: n + len(trace)] == p.prompt_ids + trace and set(row[n + len(trace) :]) <= {run["task"].pad_id}
            assert m == [0] * (n - 1) + [1] * len(trace) + [0] * (len(row) - n - len(trace))
