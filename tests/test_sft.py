"""SFT+RL: the SFT loss sees trace tokens only; a tiny run logs both phases."""

import math

import torch

import models
import sft_rl
import tasks
import utils
from conftest import SMOKE_TASK, read_metrics
from test_math import grads, random_batch, tiny_model
from test_smoke import EVAL_KEYS, TINY, TRAIN_KEYS


def test_sft_loss_gives_prompt_and_pad_tokens_exactly_zero_gradient(monkeypatch):
    contexts, traces = random_batch()  # contexts play the prompts, responses the traces
    ids, attn, mask = utils.make_batch(contexts, traces, tasks.PAD, "cpu")
    captured, token_logprobs = [], utils.token_logprobs

    def spy(*a, **k):
        logp, ent = token_logprobs(*a, **k)
        logp.retain_grad()
        captured.append(logp)
        return logp, ent

    monkeypatch.setattr(utils, "token_logprobs", spy)
    sft_rl.sft_backward(tiny_model(), ids, attn, mask, 8)
    g = captured[0].grad
    assert torch.all(g[mask == 0] == 0) and torch.all(g[mask == 1] != 0)


def test_sft_gradient_ignores_pad_ids_and_micro_batches():
    contexts, traces = random_batch()
    out = []
    for pad, micro in [(tasks.PAD, 8), (7, 8), (tasks.PAD, 2)]:
        model = tiny_model()
        ids, attn, mask = utils.make_batch(contexts, traces, pad, "cpu")
        sft_rl.sft_backward(model, ids, attn, mask, micro)
        out.append(grads(model))
    assert torch.equal(out[0], out[1])
    torch.testing.assert_close(out[2], out[0], rtol=1e-5, atol=1e-7)


def test_sft_loss_is_the_token_mean_cross_entropy_on_trace_tokens():
    contexts, traces = random_batch()
    ids, attn, mask = utils.make_batch(contexts, traces, tasks.PAD, "cpu")
    model = tiny_model()
    loss, _ = sft_rl.sft_backward(model, ids, attn, mask, 4)
    got = grads(model)
    model.zero_grad()
    logits = model(ids, attention_mask=attn).logits[:, :-1]
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
    expected = (ce * mask).sum() / mask.sum()
    expected.backward()
    assert math.isclose(loss, expected.item(), rel_tol=1e-5)
    torch.testing.assert_close(got, grads(model), rtol=1e-4, atol=1e-7)


def test_smoke_run(toy_cache, teacher_traces, tmp_path, monkeypatch):
    monkeypatch.setattr(tasks, "toy_reward", lambda p, prefix, r: float(r[0] % 2 == 0))  # groups of mixed rewards: a gradient
    run_dir = str(tmp_path / "run")
    args = sft_rl.Args(run_dir=run_dir, cache_dir=toy_cache, traces=teacher_traces, sft_steps=4, sft_batch=4, **{**TINY, "threads": 1})
    sft_rl.main(args)
    rows = read_metrics(run_dir)
    sft = [r for r in rows if "sft_step" in r]
    train = [r for r in rows if "train/grad_norm" in r]
    evals = [r for r in rows if "eval/heldout_pass@1" in r]
    assert rows[: len(sft)] == sft and all("step" not in r for r in sft)  # SFT first, then RL
    assert [r["sft_step"] for r in sft if "sft/loss" in r] == [1, 2, 3, 4]
    assert [r["sft_step"] for r in sft if "train/entropy" in r] == [0, 2, 4]  # base model, every eval_every, end
    assert all(math.isfinite(r["sft/loss"]) for r in sft if "sft/loss" in r)
    assert all(r["train/entropy"] > 0 for r in sft if "train/entropy" in r)
    assert [r["step"] for r in train] == [1, 2, 3] and [r["step"] for r in evals] == [0, 2, 3]
    for r in train:
        assert all(k in r for k in TRAIN_KEYS) and r["train/grad_std"] > 0 and r["train/grad_norm"] > 0  # 2 micro-batches
    assert all(0 <= r[k] <= 1 for r in evals for k in EVAL_KEYS)
    flops = [r["flops"] for r in rows]
    assert flops == sorted(flops) and flops[0] == 4.0  # the rejection-sampling offset, then SFT's 6·N·D
    n_params = utils.count_params(models.load_model("toy", toy_cache, "cpu", TINY["toy_pretrain_steps"])[0])
    traces, _ = utils.load_traces(teacher_traces)
    task = tasks.make_toy_task(tasks.TOY_LENGTH, **{k: v for k, v in SMOKE_TASK.items() if k != "task_seed"}, seed=SMOKE_TASK["task_seed"])
    lengths = {len(p.prompt_ids) + len(traces[p.id].token_ids) for p in task.train}  # rows differ by their entries
    tokens = (sft[-1]["flops"] - 4.0) / (6 * n_params)  # sft_steps x sft_batch rows of (prompt + trace)
    assert tokens == round(tokens) and 4 * 4 * min(lengths) <= tokens <= 4 * 4 * max(lengths) and len(lengths) > 1
    assert train[0]["flops"] > sft[-1]["flops"]


def test_sft_stops_when_the_validation_nll_stops_falling(toy_cache, teacher_traces, tmp_path, monkeypatch):
    """Held-out traces never enter an SFT batch, and SFT ends at the first evaluation whose validation
    NLL is not below the best before it; RL follows."""
    nlls, seen = iter([3.0, 2.0, 1.5, 1.7, 0.1]), []
    monkeypatch.setattr(sft_rl, "validation_nll", lambda model, task, problems, traces, args: (seen.append([p.id for p in problems]), next(nlls))[1])
    sft_backward, batches = sft_rl.sft_backward, []
    monkeypatch.setattr(sft_rl, "sft_backward", lambda model, ids, *a: (batches.append(ids.tolist()), sft_backward(model, ids, *a))[1])
    run_dir = str(tmp_path / "run")
    sft_rl.main(sft_rl.Args(run_dir=run_dir, cache_dir=toy_cache, traces=teacher_traces, sft_steps=20, sft_batch=4, sft_val_fraction=0.25,
                            **{**TINY, "threads": 1}))
    rows = read_metrics(run_dir)
    sft = [r for r in rows if "sft_step" in r]
    assert [r["sft/val_nll"] for r in sft if "sft/val_nll" in r] == [3.0, 2.0, 1.5, 1.7]  # stopped at the rise
    assert max(r["sft_step"] for r in sft) == 6 and [r["step"] for r in rows if "train/grad_norm" in r] == [1, 2, 3]
    (val_ids,) = {tuple(ids) for ids in seen}
    task = tasks.make_toy_task(tasks.TOY_LENGTH, **{k: v for k, v in SMOKE_TASK.items() if k != "task_seed"}, seed=SMOKE_TASK["task_seed"])
    val_prompts = [p.prompt_ids for p in task.train if p.id in val_ids]
    assert len(val_ids) == 1 and len(batches) == 6  # 1 of 4 traces held out; SFT steps 0..5
    assert not any(row[: len(v)] == v for ids in batches for row in ids for v in val_prompts)
