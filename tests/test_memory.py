"""Memory: sampling bounded by --sample-tokens (KV cache, prefill logits, rows that ended), training
(micro-batches by tokens, train/grad_std's one copy, bfloat16 weights, checkpointing with shared
contexts), and the start-up estimate against peaks measured on this CPU.

Peaks are measured as a subprocess's peak resident memory (tests/peak_memory.py): /proc/self/clear_refs
resets VmHWM before the model is made, VmHWM - VmRSS(before) after two steps; glibc hands every block of
64 KiB or more back at once (MALLOC_MMAP_THRESHOLD_), so the peak is that of live tensors, not of a heap
that keeps freed memory."""

import copy
import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch
from transformers import GPT2LMHeadModel, LlamaForCausalLM

import models
import offpolicy_rl
import prefixrl
import sft_rl
import standard_rl
import tasks
import utils
from test_math import grads, random_batch, tiny_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_llama(seed=0, **config):
    torch.manual_seed(seed)
    return LlamaForCausalLM(models.toy_config(**{"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, **config})).eval()


def prompts_of(n, seed=1, lengths=(3, 5, 8, 4)):
    """n prompts, 8 rows of each distinct one (a group's rollouts share their prompt)."""
    g = torch.Generator().manual_seed(seed)
    distinct = [torch.randint(5, 38, (lengths[i % len(lengths)],), generator=g).tolist() for i in range((n + 7) // 8)]
    return [distinct[i // 8] for i in range(n)]


class Spy:
    """Every forward of the model during sampling: its input rows and KV-cache tokens; and every lm-head output."""

    def __init__(self, model):
        self.calls, self.head_outputs = [], []
        self.handles = [model.register_forward_hook(self.forward, with_kwargs=True),
                        model.get_output_embeddings().register_forward_hook(lambda m, i, out: self.head_outputs.append(tuple(out.shape)))]

    def forward(self, module, args, kwargs, out):
        keys = utils.kv_cache(out).layers[0].keys  # [rows, heads, tokens, head dim] after this forward
        self.calls.append(dict(rows=kwargs["input_ids"].shape[0], width=kwargs["input_ids"].shape[1], cached=keys.shape[0] * keys.shape[2]))

    def remove(self):
        for h in self.handles:
            h.remove()


def test_the_kv_cache_is_bounded_by_the_budget_not_by_rows_times_new_tokens():
    model, prompts = tiny_llama(), prompts_of(64)
    longest, new = max(map(len, prompts)), 40
    for budget in [200, 1000, utils.SAMPLE_TOKENS]:
        spy = Spy(model)
        utils.sample(model, prompts, new, 1.0, 2, 0, torch.Generator().manual_seed(0), max_tokens=budget)
        spy.remove()
        rows = min(64, budget // (longest + new))
        assert max(c["rows"] for c in spy.calls) == rows  # the chunk
        assert max(c["cached"] for c in spy.calls) <= min(budget, 64 * (longest + new))
    assert max(c["cached"] for c in spy.calls) > 1000  # unbounded, the cache holds every row


def test_prefill_keeps_the_last_positions_logits_only(monkeypatch):
    model, prompts = tiny_llama(), prompts_of(24, lengths=(9, 4, 7))
    drawn = []
    draw = utils.draw
    monkeypatch.setattr(utils, "draw", lambda logits, *a, **k: drawn.append(tuple(logits.shape)) or draw(logits, *a, **k))
    spy = Spy(model)
    utils.sample(model, prompts, 6, 1.0, 2, 0, torch.Generator().manual_seed(0))
    spy.remove()
    vocab = model.config.vocab_size
    assert drawn[0] == (24, vocab)  # one position's logits per row reach the sampler
    assert spy.calls[0] == dict(rows=3, width=9, cached=3 * 9)  # the prefill: each distinct prompt once, whole
    assert spy.head_outputs[0] == (3, 1, vocab)  # and its lm head ran on the last position only
    assert all(shape[1] == 1 for shape in spy.head_outputs)


def test_rows_leave_the_kv_cache_when_a_quarter_of_it_has_ended():
    """Rows that ended leave the KV cache together, as soon as they are a quarter of it: after step s the
    forward runs the rows still in the cache, which shrinks to those with L_i > s (row i's response has
    L_i tokens) at the first step where those are at most three quarters of it."""
    model, prompts = tiny_llama(), prompts_of(48)
    spy = Spy(model)
    responses, _, _ = utils.sample(model, prompts, 200, 1.0, 2, 0, torch.Generator().manual_seed(0))
    spy.remove()
    ended = sum(r[-1] == 2 for r in responses)
    assert 30 < ended < 48  # most ended early, others did not
    decoding, cached = [c["rows"] for c in spy.calls[1:]], len(prompts)
    expected = []
    for s in range(1, len(decoding) + 1):
        alive = sum(len(r) > s for r in responses)
        cached = alive if 4 * alive <= 3 * cached else cached
        expected.append(cached)
    assert decoding == expected
    assert min(decoding) < len(prompts)  # it shrank


def test_the_same_rows_per_chunk_give_the_same_draws_whatever_the_budget():
    model, prompts = tiny_llama(), prompts_of(40)
    longest, new = max(map(len, prompts)), 12
    by_rows = utils.sample(model, prompts, new, 0.7, 2, 0, torch.Generator().manual_seed(3), batch_size=8)
    by_tokens = utils.sample(model, prompts, new, 0.7, 2, 0, torch.Generator().manual_seed(3), max_tokens=8 * (longest + new) + 5)
    assert by_rows == by_tokens


# TRAINING: micro-batches by tokens, train/grad_std's copy, bfloat16 weights, checkpointing with shared contexts
SCRIPTS = [standard_rl, prefixrl, sft_rl, offpolicy_rl]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda s: s.__name__)
@pytest.mark.parametrize("tokens", [1, 25, 40, 1000])
def test_micro_batches_by_tokens_stay_within_the_budget_and_leave_the_gradient_unchanged(script, tokens):
    contexts, responses = random_batch()
    ids, attn, mask = utils.make_batch(contexts, responses, tasks.PAD, "cpu")
    lengths = attn.sum(1).tolist()
    spans = utils.micro_batches(attn, 8, tokens)
    assert [r for s, e in spans for r in range(s, e)] == list(range(8))  # every row once, in order
    assert all(e - s == 1 or (e - s) * max(lengths[s:e]) <= tokens for s, e in spans)
    assert all(e == 8 or (e - s + 1) * max(lengths[s : e + 1]) > tokens for s, e in spans)  # as many rows as fit
    seen = []
    token_logprobs = utils.token_logprobs

    def spy(model, ids, *a, **k):  # the rows' own width: all-pad columns are not run
        logp, ent = token_logprobs(model, ids, *a, **k)
        seen.append(ids.shape[0])
        return logp, ent

    out = []
    for micro, micro_tokens in [(8, 0), (8, tokens)]:
        model = tiny_model()
        utils.token_logprobs = spy
        try:
            script.reinforce_backward(model, ids, attn, mask, torch.linspace(-1, 1, 8), micro, "sequence", 1.0, micro_tokens=micro_tokens)
        finally:
            utils.token_logprobs = token_logprobs
        out.append(grads(model))
    assert seen == [8] + [e - s for s, e in spans]
    torch.testing.assert_close(out[1], out[0], rtol=1e-5, atol=1e-7)


def test_token_logprobs_skip_the_columns_that_are_padding_in_every_row():
    model = tiny_model()
    contexts, responses = random_batch()
    ids, attn, mask = utils.make_batch(contexts[:2], responses[:2], tasks.PAD, "cpu")
    wide = [torch.cat([x, torch.full((2, 5), fill, dtype=x.dtype)], 1) for x, fill in ((ids, tasks.PAD), (attn, 0))]
    widths = []
    hook = model.model.register_forward_hook(lambda m, args, kwargs, out: widths.append(kwargs["input_ids"].shape[1]), with_kwargs=True)
    logp, ent = utils.token_logprobs(model, *wide)
    hook.remove()
    assert widths == [ids.shape[1]] and logp.shape == (2, ids.shape[1] + 4) and (logp[:, -5:] == 0).all()
    torch.testing.assert_close(logp[:, :-5], utils.token_logprobs(model, ids, attn)[0])


def test_grad_std_updates_its_one_copy_of_the_gradient_in_place():
    model = tiny_model()
    contexts, responses = random_batch()
    ids, attn, mask = utils.make_batch(contexts, responses, tasks.PAD, "cpu")
    utils.token_logprobs(model, ids[:4], attn[:4])[0].sum().backward()
    sq, copy = utils.grad_change(model, None)
    first = [c.clone() for c in copy]
    utils.token_logprobs(model, ids[4:], attn[4:])[0].sum().backward()
    held = [c.data_ptr() for c in copy]
    sq2, same = utils.grad_change(model, copy)
    assert same is copy and [c.data_ptr() for c in same] == held  # no second copy
    assert torch.equal(torch.cat([c.flatten() for c in same]), grads(model))
    assert math.isclose(sq2, (grads(model) - torch.cat([c.flatten() for c in first])).double().pow(2).sum().item(), rel_tol=1e-5)
    assert math.isclose(sq, torch.cat([c.flatten() for c in first]).double().pow(2).sum().item(), rel_tol=1e-5)


def test_bf16_adamw_is_torchs_adamw_on_float32_weights():
    models_ = [tiny_model(), tiny_model()]
    opts = [torch.optim.AdamW(models_[0].parameters(), lr=1e-2), utils.BF16AdamW(models_[1].parameters(), lr=1e-2)]
    contexts, responses = random_batch()
    ids, attn, _ = utils.make_batch(contexts, responses, tasks.PAD, "cpu")
    for step in range(4):
        for m, opt in zip(models_, opts):
            opt.zero_grad()
            (utils.token_logprobs(m, ids, attn)[0].sum() * (step - 1.5)).backward()
            opt.step()
    torch.testing.assert_close(torch.cat([p.flatten() for p in models_[1].parameters()]),
                               torch.cat([p.flatten() for p in models_[0].parameters()]), rtol=1e-5, atol=1e-6)


def test_bf16_adamw_keeps_float32_moments_and_moves_bf16_weights_by_updates_below_their_step():
    """lr 1e-6 on weights of about 0.02 (a bfloat16 step there is 1.2e-4): 100 steps of a constant gradient move a
    float32 weight by ~1e-4; rounded to nearest, a bfloat16 weight never moves; rounded stochastically, on average as far."""
    w0 = torch.full((4096,), 0.02)
    weights = {name: torch.nn.Parameter(w0.clone().to(dtype)) for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    opts = {"fp32": torch.optim.AdamW([weights["fp32"]], lr=1e-6, weight_decay=0.0),
            "bf16": utils.BF16AdamW([weights["bf16"]], lr=1e-6, weight_decay=0.0, seed=0)}
    for _ in range(100):
        for name, w in weights.items():
            w.grad = torch.ones_like(w)
            opts[name].step()
    state = opts["bf16"].state[weights["bf16"]]
    assert weights["bf16"].dtype == torch.bfloat16 and state["exp_avg"].dtype == state["exp_avg_sq"].dtype == torch.float32
    moved = {name: (w0.to(w.dtype).float() - w.float()).mean().item() for name, w in weights.items()}
    assert moved["fp32"] > 9e-5 and abs(moved["bf16"] - moved["fp32"]) < 0.05 * moved["fp32"]
    nearest = (w0.to(torch.bfloat16).float() - 1e-6).to(torch.bfloat16).float()
    assert torch.equal(nearest, w0.to(torch.bfloat16).float())  # what round-to-nearest would do: nothing


def test_bf16_adamw_resumes_with_the_same_draws():
    contexts, responses = random_batch()
    ids, attn, _ = utils.make_batch(contexts, responses, tasks.PAD, "cpu")

    def step(model, opt):
        opt.zero_grad()
        utils.token_logprobs(model, ids, attn)[0].sum().backward()
        opt.step()

    model = tiny_model().to(torch.bfloat16)
    opt = utils.adamw(model, 1e-3, seed=7)
    assert isinstance(opt, utils.BF16AdamW)
    step(model, opt)
    saved = (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()))
    step(model, opt)
    resumed = tiny_model().to(torch.bfloat16)
    resumed.load_state_dict(saved[0])
    opt2 = utils.adamw(resumed, 1e-3, seed=0)
    opt2.load_state_dict(saved[1])
    step(resumed, opt2)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), resumed.parameters()))


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_gradient_checkpointing_keeps_the_shared_context_forward(kind):
    """Under checkpointing a Llama's group context still runs once (and again in the backward pass), with
    the gradient of the plain forward; GPT-2, which drops its KV cache under checkpointing, runs whole rows."""
    contexts, responses = random_batch()
    ids, attn, mask = utils.make_batch(contexts, responses, tasks.PAD, "cpu")
    out = []
    for checkpointing in [False, True]:
        torch.manual_seed(0)
        model = tiny_model() if kind == "llama" else GPT2LMHeadModel(models.toy_config("gpt2", n_embd=32, n_layer=2))
        models.disable_dropout(model)
        if checkpointing:
            models.enable_activation_checkpointing(model)
            assert getattr(model, utils.SHARED_CONTEXT_CHECKPOINTING) == (kind == "llama")
        model.train()
        prefills = []
        prefill_once = utils.prefill_once
        utils.prefill_once = lambda *a, **k: prefills.append(1) or prefill_once(*a, **k)
        try:
            prefixrl.reinforce_backward(model, ids, attn, mask, torch.linspace(-1, 1, 8), 4, "token", 1.0)
        finally:
            utils.prefill_once = prefill_once
        out.append(grads(model))
        assert len(prefills) == (0 if checkpointing and kind == "gpt2" else 4 if checkpointing else 2)  # 2 micro-batches
    torch.testing.assert_close(out[1], out[0], rtol=1e-5, atol=1e-7)


def test_offpolicy_weights_and_bf16_runs_take_a_micro_batch_at_a_time(toy_cache, teacher_traces, tmp_path, monkeypatch):
    """Off-policy RL's importance-weight forward (no gradient) runs --micro-batch rows at a time as the loss
    does, and a --dtype bfloat16 run trains bfloat16 weights with float32 AdamW moments to finite metrics."""
    from test_smoke import TINY

    rows, token_logprobs = [], utils.token_logprobs
    monkeypatch.setattr(utils, "token_logprobs", lambda model, ids, *a, **k: rows.append(len(ids)) or token_logprobs(model, ids, *a, **k))
    run_dir = str(tmp_path / "run")
    args = offpolicy_rl.Args(run_dir=run_dir, cache_dir=toy_cache, traces=teacher_traces, **{**TINY, "micro_batch": 2, "steps": 2, "dtype": "bfloat16", "optimizer": "adamw"})
    offpolicy_rl.main(args)
    assert rows and max(rows) == 2  # the trace rows' weights too (TINY: 4 prompts, so 4 trace rows)
    metrics = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    assert all(math.isfinite(r["train/grad_norm"]) for r in metrics if "train/grad_norm" in r)
    state = torch.load(os.path.join(run_dir, utils.CHECKPOINT), weights_only=False)["state"]
    assert {v.dtype for v in state["model"].values()} == {torch.bfloat16}
    moments = [s["exp_avg"] for s in state["optimizer"]["state"].values()]
    assert moments and {m.dtype for m in moments} == {torch.float32}


# THE ESTIMATE: against peaks measured on this CPU (tests/peak_memory.py), and the refusal
CONFIGS = {  # each dominated by another part of the estimate; sample_tokens: the rows in one chunk
    "llama: weights, AdamW and the gradient's copy": dict(
        hidden=384, layers=6, heads=6, vocab=4096, prompt=4, new=8, rows=8, rollouts=4,
        micro_batch=4, sample_tokens=8 * 12),
    "gpt2: a micro-batch's activations": dict(
        kind="gpt2", hidden=256, layers=4, heads=4, vocab=512, prompt=16, new=112, rows=16,
        rollouts=8, micro_batch=16, sample_tokens=16 * 128),
    "llama: the sampler's KV cache, checkpointed micro-batches of 1024 tokens": dict(
        hidden=128, layers=8, heads=4, vocab=256, prompt=8, new=120, rows=128, rollouts=8,
        micro_batch=128, micro_tokens=1024, checkpointing=True, sample_tokens=128 * 128),
}


@pytest.mark.parametrize("config", list(CONFIGS))
def test_the_estimate_is_within_30_percent_of_the_measured_peak(config):
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1")
    script = os.path.join(ROOT, "tests", "peak_memory.py")
    out = subprocess.run([sys.executable, script, json.dumps(CONFIGS[config])], env=env,
                         capture_output=True, text=True, timeout=3600)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert 0.7 <= got["total"] / got["measured"] <= 1.3, got


def test_a_run_that_cannot_fit_is_refused_with_one_line_and_exit_2(toy_cache, teacher_traces,
                                                                   tmp_path, monkeypatch, capsys):
    from test_smoke import TINY

    run_dir = str(tmp_path / "run")
    args = prefixrl.Args(run_dir=run_dir, cache_dir=toy_cache, traces=teacher_traces, **TINY)
    monkeypatch.setenv(utils.MEMORY_GB_ENV, "0.001")  # a device of 1 MB
    with pytest.raises(SystemExit) as exit, utils.clean_errors():
        prefixrl.main(args)
    out, err = capsys.readouterr()
    assert exit.value.code == 2 and not os.path.exists(run_dir)  # before anything is written
    needs = r"error: this run needs about [0-9.]+ GB and cpu holds 0.0 GB: lower --sample-tokens"
    last = err.rstrip("\n").split("\n")[-1]  # after the weights' progress bar: one line
    assert re.fullmatch(rf"{needs} .*\({utils.MEMORY_GB_ENV}=0 skips this check\)", last), err
    assert err.count("error") == 1
    assert len([line for line in out.splitlines() if line.startswith("memory estimate: ")]) == 1
    model, tokenizer, _ = models.load_model(args.model, toy_cache, "cpu", args.toy_pretrain_steps)
    task = tasks.load_task(args, tokenizer)
    monkeypatch.setenv(utils.MEMORY_GB_ENV, "0")  # the check off
    assert utils.check_memory(model, task, args)["total"] > 1e6
    monkeypatch.delenv(utils.MEMORY_GB_ENV)  # this machine's free memory: the toy fits
    assert 1e6 < utils.check_memory(model, task, args)["total"] < utils.free_memory("cpu")


def test_the_estimate_counts_the_optimizers_state():
    """AdamW keeps two float32 moments per weight, SGD (--optimizer sgd) one momentum buffer; sft_rl.py
    also keeps SFT's AdamW."""
    model = tiny_llama()
    n = sum(p.numel() for p in model.parameters())
    for script, optimizer, state in ((prefixrl, "adamw", 8 * n), (prefixrl, "sgd", 4 * n), (sft_rl, "sgd", 12 * n)):
        args = script.Args(optimizer=optimizer)
        assert utils.memory_estimate(model, args, 8, 8, per_token=(1, 1), cuda=False)["adamw"] == state
