"""scale/: the exported mixture and TRL's GRPOTrainer set to the scripts' objective. Needs the optional
extra (pip install -r scale/requirements.txt: TRL, datasets, tensorboard); skipped without it."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

pytest.importorskip("trl")
pytest.importorskip("datasets")
pytest.importorskip("tensorboard")

import models  # noqa: E402
import prefixrl  # noqa: E402
import standard_rl  # noqa: E402
import tasks  # noqa: E402
import utils  # noqa: E402
from conftest import SMOKE_TASK, read_metrics  # noqa: E402
from test_smoke import rows_as_scalars, tensorboard_scalars  # noqa: E402
from scale import export, grpo  # noqa: E402

TINY = dict(steps=2, prompts_per_step=4, rollouts=4, micro_batch=8, eval_every=1, eval_samples=4, threads=2, toy_pretrain_steps=20, **SMOKE_TASK)


def make_export(out, cache, traces, **flags):
    args = export.Args(out=str(out), cache_dir=cache, traces=traces, **{**TINY, **flags})
    export.main(args)
    return args


def read_rows(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def planted_reward(problem, prefix_ids, response_ids):
    """A reward that varies inside groups (the 20-step toy model never solves a problem): every
    group gets non-zero advantages, so the update has something to compare."""
    return float(sum(response_ids) % 3 == 0)


class StepRecorder:
    """The models that models.load_model returns, and for every optimizer step, each parameter's
    gradient (as the optimizer receives it, after clipping) and value before and after the step, by
    the parameter's name in its model (torch's global optimizer hooks)."""

    def __init__(self, monkeypatch):
        self.models, self.steps, self.handles, load = [], [], [], models.load_model

        def load_and_keep(*a, **k):
            out = load(*a, **k)
            if self.handles:  # inside the with block
                self.models.append(out[0])
            return out

        monkeypatch.setattr(models, "load_model", load_and_keep)

    def __enter__(self):
        params = lambda opt: [p for g in opt.param_groups for p in g["params"]]  # noqa: E731
        pre = lambda opt, a, k: self.steps.append({id(p): (p.grad.clone(), p.detach().clone()) for p in params(opt)})  # noqa: E731
        post = lambda opt, a, k: self.steps[-1].update({id(p): (*self.steps[-1][id(p)], p.detach().clone()) for p in params(opt)})  # noqa: E731
        self.handles = [register_optimizer_step_pre_hook(pre), register_optimizer_step_post_hook(post)]
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles = []

    def flat(self, i=None):
        """The one step's (or step i's) (gradient, before, after), each flattened over the last
        model's parameters in name order."""
        (step,), model = self.steps if i is None else [self.steps[i]], self.models[-1]
        named = sorted(model.named_parameters())
        assert {id(p) for _, p in named} == set(step)
        return [torch.cat([step[id(p)][i].flatten() for _, p in named]) for i in range(3)]


@pytest.mark.parametrize("script,algo,optimizer", [(prefixrl, "prefixrl", "adamw"), (standard_rl, "standard_rl", "adamw"), (prefixrl, "prefixrl", "sgd")])
def test_one_trl_step_updates_the_weights_as_one_script_step(script, algo, optimizer, toy_cache, teacher_traces, tmp_path, monkeypatch):
    """From the same weights and the same sampled completions, TRL's first step and the script's first
    step see the same prompts (prompt + prefix ids), the same gradient before clipping (its norm), the
    same clipped gradient, and make the same AdamW update, or the same SGD one (the toy's default)."""
    monkeypatch.setattr(tasks, "toy_reward", planted_reward)
    lr = 1e-2 if optimizer == "adamw" else 10.0  # moves far above float32 rounding (SGD's first step: lr times the gradient)
    ex = make_export(tmp_path / "data", toy_cache, teacher_traces, algo=algo, steps=1, lr=lr, optimizer=optimizer, temperature=0.7)

    # THE SCRIPT'S STEP: its rollouts (contexts, responses) and its update
    batches = []
    real_make_batch = utils.make_batch
    monkeypatch.setattr(utils, "make_batch", lambda c, r, *a: batches.append((c, r)) or real_make_batch(c, r, *a))
    run_dir = str(tmp_path / "script")
    with StepRecorder(monkeypatch) as ours:
        script.main(script.Args(**{**{f.name: getattr(ex, f.name) for f in dataclasses.fields(script.Args)}, "run_dir": run_dir}))
    (contexts, responses), = batches
    ours_norm = [r for r in read_metrics(run_dir) if "train/grad_norm" in r][0]["train/grad_norm"]

    # TRL'S STEP on the export, given the script's completions in place of its own draws
    seen = []

    def rollout(prompts, trainer):
        prompt_ids, _, _ = trainer._tokenize_prompts(prompts)  # the ids TRL would sample from
        seen.extend(prompt_ids)
        return dict(prompt_ids=prompt_ids, completion_ids=responses, logprobs=None)

    args = grpo.Args(data=ex.out, run_dir=str(tmp_path / "trl"), cache_dir=toy_cache, threads=2)
    with StepRecorder(monkeypatch) as theirs:
        trainer, _, _ = grpo.build(args, grpo.read_export(ex.out), rollout_func=rollout)
        trainer.train()
    rows = read_rows(os.path.join(ex.out, "train.jsonl"))
    assert contexts == [r["prompt_ids"] for r in rows for _ in range(ex.rollouts)]  # the export is the script's step
    assert [list(ids) for ids in seen] == contexts  # and TRL samples from the same prompt + prefix ids, row for row
    assert any(r["prefixed"] for r in rows) == (algo == "prefixrl")
    (grad_mine, before_mine, after_mine), (grad_trl, before_trl, after_trl) = ours.flat(), theirs.flat()
    assert torch.equal(before_mine, before_trl)  # the same weights
    trl_norm = trainer.state.log_history[0]["grad_norm"]
    assert set(trainer.lr_scheduler.get_last_lr()) == {ex.lr}  # constant, as the scripts' (a decaying one is lower after the step)
    assert abs(trl_norm - ours_norm) <= 1e-5 * ours_norm and ours_norm > 0
    torch.testing.assert_close(grad_trl, grad_mine, rtol=1e-4, atol=1e-6 * grad_mine.abs().max().item())
    update_mine, update_trl = after_mine - before_mine, after_trl - before_trl
    if optimizer == "sgd":  # momentum's first step is the gradient itself, with no weight decay
        torch.testing.assert_close(update_mine, -ex.lr * grad_mine, rtol=1e-4, atol=1e-6 * ex.lr * grad_mine.abs().max().item())
        torch.testing.assert_close(update_trl, update_mine, rtol=1e-4, atol=1e-5 * ex.lr * grad_mine.abs().max().item())
        return
    # Adam's first step moves a weight by lr g / (|g| + eps) (plus the decay): below |g| = 1e-6 that turns
    # float noise in g into a visible move, so there the gradient is all that is compared
    sure = grad_mine.abs() > 1e-6
    assert sure.float().mean() > 0.5 and update_mine.abs().max() > 0.5 * ex.lr
    torch.testing.assert_close(update_trl[sure], update_mine[sure], rtol=0, atol=1e-4 * ex.lr)


def test_export_rows_are_the_scripts_prompts_and_every_text_gives_its_ids(toy_cache, tmp_path):
    """The default toy's mixture (its 128 problems, cut as prefixrl.py cuts them, its steps x 16
    prompts): every row's prompt text, tokenized as TRL tokenizes it, gives exactly the row's ids
    (the problem's prompt, then the prefix), and TRL is left to tokenize the text itself."""
    task = tasks.make_toy_task(tasks.TOY_LENGTH, 11, 11, 128, 64, 0)
    traces = {}
    for p in task.train:
        ids = tasks.toy_solution_ids(*tasks.toy_solve(p.meta["params"]))
        traces[p.id] = utils.Trace(p.id, ids, task.decode(ids), 1, 1.0, [-0.1] * len(ids))
    path = str(tmp_path / "traces.json")
    utils.save_traces(path, {"source": "teacher"}, traces, {pid: 1 for pid in traces}, {pid: 1.0 for pid in traces})
    defaults = {k: getattr(prefixrl.Args(), k) for k in ("steps", "prompts_per_step", "rollouts", "micro_batch", "hard_min", "hard_max", "n_train", "n_heldout")}
    ex = make_export(tmp_path / "data", toy_cache, path, **defaults)
    rows = read_rows(os.path.join(ex.out, "train.jsonl"))
    assert len(rows) == defaults["steps"] * 16 and sum(r["prefixed"] for r in rows) == defaults["steps"] * 12
    for r in rows:
        p = next(q for q in task.train if q.id == r["problem_id"])
        assert r["prompt_ids"] == p.prompt_ids + r["prefix_ids"] and r["answer"] == p.answer
        assert r["prefix_ids"] == traces[p.id].token_ids[: len(r["prefix_ids"])] and len(r["prefix_ids"]) < tasks.toy_reasoning_end(p, traces[p.id].token_ids)
    trainer, _, _ = grpo.build(grpo.Args(data=ex.out, run_dir=str(tmp_path / "trl"), cache_dir=toy_cache, steps=1), grpo.read_export(ex.out))
    got, _, _ = trainer._tokenize_prompts([r["prompt"] for r in rows])
    assert [list(g) for g in got] == [r["prompt_ids"] for r in rows]
    assert "_tokenize_prompts" not in vars(trainer)  # TRL's own tokenization, nothing passed around it


def test_rows_whose_text_does_not_give_their_ids_are_given_as_ids(toy_cache, teacher_traces, tmp_path):
    ex = make_export(tmp_path / "data", toy_cache, teacher_traces)
    path = os.path.join(ex.out, "train.jsonl")
    rows = read_rows(path)
    for r in rows[:3]:  # text that tokenizes otherwise: one more token
        r["prompt"] += " <eos>"
    utils.write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))
    trainer, _, _ = grpo.build(grpo.Args(data=ex.out, run_dir=str(tmp_path / "trl"), cache_dir=toy_cache), grpo.read_export(ex.out))
    got, _, _ = trainer._tokenize_prompts([r["prompt"] for r in rows])
    assert [list(g) for g in got] == [r["prompt_ids"] for r in rows]


def test_trl_smoke_run_logs_the_scripts_metrics(toy_cache, teacher_traces, tmp_path):
    ex = make_export(tmp_path / "data", toy_cache, teacher_traces, steps=3)
    run_dir = str(tmp_path / "trl")
    grpo.main(grpo.Args(data=ex.out, run_dir=run_dir, cache_dir=toy_cache, eval_every=2, threads=2, tensorboard=True))
    rows = read_metrics(run_dir)
    assert tensorboard_scalars(os.path.join(run_dir, "tensorboard")) == rows_as_scalars(rows, "step")  # the same rows
    train = [r for r in rows if "train/grad_norm" in r]
    assert [r["step"] for r in train] == [1, 2, 3]
    for r in train:
        assert 0 <= r["train/reward_prefixed"] <= 1 and 0 <= r["train/reward_no_prefix"] <= 1
        assert 0 <= r["trl/completions/clipped_ratio"] <= 1  # TRL's: cut at --max-new-tokens
        assert 0 <= r["train/all_negative_frac"] <= 1 and r["train/entropy"] > 0 and r["train/response_len"] > 0
    assert [r["step"] for r in rows if "eval/heldout_pass@1" in r] == [0, 2, 3]  # at the start, every 2 steps, at the end
    flops = [r["flops"] for r in rows]
    assert flops == sorted(flops) and flops[0] == 4.0 < flops[-1]  # first the traces' FLOPs (the teacher file's 4.0), as prefixrl.py
    assert os.path.isfile(os.path.join(run_dir, "policy", "config.json"))


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def stop_at(monkeypatch, step):
    """grpo.build's trainer, killed (KeyboardInterrupt) as step `step` + 1 begins."""
    from transformers import TrainerCallback

    class Kill(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == step:
                raise KeyboardInterrupt(f"killed before step {step + 1}")

    real = grpo.build

    def build(*a, **k):
        trainer, task, model_id = real(*a, **k)
        trainer.add_callback(Kill())
        return trainer, task, model_id

    monkeypatch.setattr(grpo, "build", build)


def test_resume_continues_from_the_last_checkpoint_with_the_rows_of_an_uninterrupted_run(
        toy_cache, teacher_traces, tmp_path, monkeypatch):
    """Killed after step 3 with checkpoints every 2 steps: --resume drops step 3's row, continues
    from checkpoint-2 and ends with the uninterrupted run's metrics.jsonl (bytes) and weights."""
    from safetensors.torch import load_file

    monkeypatch.setattr(tasks, "toy_reward", planted_reward)  # non-zero advantages: weights move
    ex = make_export(tmp_path / "data", toy_cache, teacher_traces, steps=4)
    flags = dict(data=ex.out, cache_dir=toy_cache, eval_every=2, save_every=2, threads=1)
    whole, cut = str(tmp_path / "whole"), str(tmp_path / "cut")
    grpo.main(grpo.Args(run_dir=whole, **flags))
    with monkeypatch.context() as m:
        stop_at(m, 3)
        with pytest.raises(KeyboardInterrupt):
            grpo.main(grpo.Args(run_dir=cut, **flags))
    assert [r["step"] for r in read_metrics(cut)] == [0, 1, 2, 2, 3]  # eval at 0, 2; then step 3
    kept = [d for d in os.listdir(cut) if d.startswith(("checkpoint", "policy"))]
    assert kept == ["checkpoint-2"]
    grpo.main(grpo.Args(resume=cut, threads=1))
    metrics = [os.path.join(d, "metrics.jsonl") for d in (whole, cut)]
    with open(metrics[0]) as a, open(metrics[1]) as b:
        assert a.read() == b.read()
    rows = read_metrics(cut)
    assert [r["step"] for r in rows] == [0, 1, 2, 2, 3, 4, 4]
    assert all(r["train/grad_norm"] > 0 for r in rows if "train/grad_norm" in r)
    ours, theirs = (load_file(os.path.join(d, "policy", "model.safetensors")) for d in (whole, cut))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    with pytest.raises(SystemExit) as done:  # finished: nothing to resume
        grpo.main(grpo.Args(resume=cut))
    assert done.value.code == 0
    with pytest.raises(utils.InputError, match="drop --steps"):
        grpo.main(grpo.Args(resume=whole, steps=2))


def run_grpo(*argv, launcher=(sys.executable,)):
    return subprocess.run([*launcher, "scale/grpo.py", *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_a_process_count_other_than_the_one_asked_for_is_refused_with_one_line(tmp_path):
    """Before anything is loaded or written: --num-processes 2 on one process, and accelerate
    launch --cpu --num_processes 2 (which starts one process)."""
    data, run_dir = str(tmp_path / "no-export"), str(tmp_path / "run")
    out = run_grpo("--data", data, "--run-dir", run_dir, "--num-processes", "2")
    assert out.returncode == 2 and out.stderr.strip() == (
        "error: --num-processes 2 but 1 process is running; on CPUs launch with torchrun "
        "--nproc-per-node N (accelerate launch --cpu starts one)")
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    out = run_grpo("--data", data, "--run-dir", run_dir,
                   launcher=(accelerate, "launch", "--cpu", "--num_processes", "2"))
    assert out.returncode != 0
    assert ("error: accelerate launch was asked for several processes but started one; on CPUs "
            "launch with torchrun") in out.stderr
    assert not os.path.exists(run_dir)


def test_vllm_settings_reach_trl(toy_cache, teacher_traces, tmp_path):
    """TRL's importance-sampling correction is off unless asked for (the objective stays
    REINFORCE), vLLM's context is the longest prompt + --max-new-tokens (not the model's declared
    maximum), sleep mode is passed."""
    ex = make_export(tmp_path / "data", toy_cache, teacher_traces)
    rows = [r for name in ("train.jsonl", "heldout.jsonl")
            for r in read_rows(os.path.join(ex.out, name))]
    longest, meta = max(len(r["prompt_ids"]) for r in rows), grpo.read_export(ex.out)

    def config(name, **flags):
        args = grpo.Args(data=ex.out, run_dir=str(tmp_path / name), cache_dir=toy_cache, **flags)
        trainer, task, _ = grpo.build(args, meta)
        return trainer.args, task.max_new_tokens, trainer.model.config.max_position_embeddings

    got, new_tokens, declared = config("a", eval_every=1)
    assert not got.vllm_importance_sampling_correction and not got.vllm_enable_sleep_mode
    assert got.vllm_max_model_length == longest + new_tokens < declared
    assert got.save_strategy == "steps" and got.save_steps == 50
    got, _, _ = config("b", vllm_importance_sampling_correction=True, vllm_enable_sleep_mode=True,
                       vllm_max_model_length=longest + new_tokens + 5)
    assert got.vllm_importance_sampling_correction and got.vllm_enable_sleep_mode
    assert got.vllm_max_model_length == longest + new_tokens + 5
    with pytest.raises(utils.InputError, match="shorter than the longest prompt"):
        config("c", vllm_max_model_length=longest)


def random_completions(rows, rollouts, seed=0):
    """Per step, per rollout in the one-process order (each row's prompt `rollouts` times), a
    completion of 1 to 12 toy tokens, most ending with the end token."""
    rng = np.random.default_rng(seed)
    words = [i for i in range(len(tasks.VOCAB)) if i not in (tasks.PAD, tasks.BOS, tasks.EOS)]
    steps = {}
    for r in rows:
        for _ in range(rollouts):
            ids = [int(t) for t in rng.choice(words, rng.integers(1, 12))]
            ids += [tasks.EOS] if rng.random() < 0.8 else []
            steps.setdefault(r["step"], []).append(dict(prompt_ids=r["prompt_ids"], completion=ids))
    return [steps[s] for s in sorted(steps)]


def test_two_processes_update_the_weights_as_one(toy_cache, teacher_traces, tmp_path):
    """torchrun --nproc-per-node 2 (gloo, each process half of every step's rollouts) and one
    process, given the same completions: the same prompts, the same gradients at each of 2 steps
    (after the all-reduce and clipping), the same first AdamW update and the same metrics rows."""
    ex = make_export(tmp_path / "data", toy_cache, teacher_traces, lr=1e-2, optimizer="adamw")  # far above rounding
    completions = str(tmp_path / "completions.json")
    with open(completions, "w") as f:
        rows = read_rows(os.path.join(ex.out, "train.jsonl"))
        json.dump(random_completions(rows, ex.rollouts), f)
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1", TRL_EXPERIMENTAL_SILENCE="1")
    out = {}
    launchers = {1: [sys.executable], 2: [torchrun, "--standalone", "--nproc-per-node", "2"]}
    for n, launcher in launchers.items():
        run_dir = str(tmp_path / f"p{n}")
        done = subprocess.run([*launcher, __file__, ex.out, run_dir, toy_cache, completions],
                              cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        ranks = [read_rows(os.path.join(run_dir, f"rank{i}.jsonl"))[0] for i in range(n)]
        seen = [(r["world_size"], r["processes"], r["rank"]) for r in ranks]
        assert seen == [(n, n, i) for i in range(n)]
        rows = [{k: v for k, v in r.items() if k != "time"} for r in read_metrics(run_dir)]
        out[n] = torch.load(os.path.join(run_dir, "steps.pt")), rows
    (steps1, rows1), (steps2, rows2) = out[1], out[2]
    assert len(steps1) == len(steps2) == ex.steps == 2
    for (grad1, _, _), (grad2, _, _) in zip(steps1, steps2):
        # two processes sum each weight's per-token terms in another order: float32 rounding of terms
        # larger than their sum (5e-7 seen where the largest element is 0.03), far below a lost half
        torch.testing.assert_close(grad2, grad1, rtol=1e-4, atol=1e-4 * grad1.abs().max().item())
    (grad1, before1, after1), (grad2, before2, after2) = steps1[0], steps2[0]
    assert torch.equal(before2, before1)
    # as in the one-step test: Adam magnifies float noise in tiny gradients (so step 2 starts
    # a little apart)
    sure, update1, update2 = grad1.abs() > 1e-6, after1 - before1, after2 - before2
    assert sure.float().mean() > 0.5 and update1.abs().max() > 0.5 * ex.lr
    torch.testing.assert_close(update2[sure], update1[sure], rtol=0, atol=1e-4 * ex.lr)
    assert [r["step"] for r in rows2] == [r["step"] for r in rows1] == [1, 2]
    assert all(r["train/grad_norm"] > 0 for r in rows1)
    for r1, r2 in zip(rows1, rows2):
        assert r1.keys() == r2.keys()
        for k in r1:
            # TRL logs entropy as the mean over its micro-batches of each one's token mean (gathered
            # across processes): two processes cut the micro-batches otherwise, so it may move a little
            rel = 1e-2 if k == "train/entropy" else 1e-4
            assert r2[k] == pytest.approx(r1[k], rel=rel, abs=1e-7), k


def worker(data, run_dir, cache, completions):
    """One process of test_two_processes_update_the_weights_as_one: scale/grpo.py's main on the
    export, TRL given this process's share of each step's completions, every step recorded."""
    from accelerate import PartialState

    with open(completions) as f:
        completions = json.load(f)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tasks, "toy_reward", planted_reward)

        def rollout(prompts, trainer):
            rank = PartialState().process_index
            prompt_ids, _, _ = trainer._tokenize_prompts(prompts)
            k = len(prompts)  # this process's rollouts: its contiguous share of the step's, by rank
            mine = completions[trainer.state.global_step][rank * k : (rank + 1) * k]
            assert [list(ids) for ids in prompt_ids] == [c["prompt_ids"] for c in mine]
            return dict(prompt_ids=prompt_ids, completion_ids=[c["completion"] for c in mine],
                        logprobs=None)

        n = int(os.environ.get("WORLD_SIZE", "1"))
        args = grpo.Args(data=data, run_dir=run_dir, cache_dir=cache, threads=1, save_every=0,
                         num_processes=n)
        with StepRecorder(mp) as rec:
            grpo.main(args, rollout_func=rollout)
        state = PartialState()
        with open(os.path.join(run_dir, f"rank{state.process_index}.jsonl"), "w") as f:
            row = dict(world_size=n, processes=state.num_processes, rank=state.process_index)
            f.write(json.dumps(row) + "\n")
        if state.is_main_process:  # the gradients are all-reduced: every rank's are rank 0's
            steps = [rec.flat(i) for i in range(len(rec.steps))]
            torch.save(steps, os.path.join(run_dir, "steps.pt"))


if __name__ == "__main__":  # python|torchrun tests/test_scale.py DATA RUN_DIR CACHE COMPLETIONS
    worker(*sys.argv[1:5])
