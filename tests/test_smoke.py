"""Each script finishes a tiny run and writes the metrics it promises."""

import math
import subprocess
import sys

import pytest
import os

import prefixrl
import sft_rl
import standard_rl
from conftest import SMOKE_TASK, read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(steps=3, prompts_per_step=4, rollouts=4, micro_batch=8, eval_every=2, eval_samples=8, threads=2,
            toy_pretrain_steps=20, **SMOKE_TASK)
TRAIN_KEYS = ["step", "flops", "train/reward_no_prefix", "train/all_negative_frac", "train/grad_norm",
              "train/entropy", "train/response_len"]
EVAL_KEYS = ["eval/train_pass@1", "eval/heldout_pass@1", "eval/heldout_pass@8"]


@pytest.mark.parametrize("script", [standard_rl, prefixrl])
def test_smoke_run(script, toy_cache, teacher_traces, tmp_path):
    run_dir = str(tmp_path / "run")
    script.main(script.Args(run_dir=run_dir, cache_dir=toy_cache, traces=teacher_traces, **TINY))
    rows = read_metrics(run_dir)
    train = [r for r in rows if "train/grad_norm" in r]
    evals = [r for r in rows if "eval/heldout_pass@1" in r]
    assert [r["step"] for r in train] == [1, 2, 3]
    assert [r["step"] for r in evals] == [0, 2, 3]
    for r in train:
        assert all(k in r for k in TRAIN_KEYS) and math.isfinite(r["train/grad_norm"])
    for r in evals:
        assert all(0 <= r[k] <= 1 for k in EVAL_KEYS)
    flops = [r["flops"] for r in rows]
    assert flops == sorted(flops) and flops[-1] > flops[0]
    if script is prefixrl:
        assert all("train/reward_prefixed" in r for r in train)
        assert evals[0]["flops"] == 4.0  # the rejection-sampling offset: the teacher file's FLOPs of these training problems
    else:
        assert evals[0]["flops"] == 0.0  # standard RL does not use the traces, so pays nothing for them


@pytest.mark.parametrize("eval_samples", [4, 8])
def test_summary_shows_only_the_pass_at_k_measured(eval_samples, toy_cache, teacher_traces, tmp_path, capsys):
    """Fewer than 8 evaluation samples per problem measure no pass@8: the summary leaves it out
    (never 'nan') and metrics.jsonl holds null; with 8 it is shown, as logged."""
    run_dir = str(tmp_path / "run")
    flags = {**TINY, "steps": 1, "eval_samples": eval_samples}
    standard_rl.main(standard_rl.Args(run_dir=run_dir, cache_dir=toy_cache, traces=teacher_traces, **flags))
    summary = [ln for ln in capsys.readouterr().out.splitlines() if "held-out pass@1" in ln]
    last = [r for r in read_metrics(run_dir) if "eval/heldout_pass@1" in r][-1]
    assert len(summary) == 1 and "nan" not in summary[0]
    if eval_samples < 8:
        assert last["eval/heldout_pass@8"] is None and "pass@8" not in summary[0]
    else:
        assert f"pass@8 {last['eval/heldout_pass@8']:.3f};" in summary[0]


@pytest.mark.parametrize("flags,message", [
    (["--cut-min", "0.9", "--cut-max", "0.5"], "cut range"),
    (["--rollouts", "1"], "--rollouts must be >= 2"),
    (["--model", "./no/such/model"], "does not exist"),
])
def test_bad_input_stops_with_one_line(flags, message, tmp_path):
    out = subprocess.run([sys.executable, "prefixrl.py", "--run-dir", str(tmp_path / "r"), *flags],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert not os.path.exists(tmp_path / "r")  # nothing written that a later run would trust


@pytest.mark.parametrize("script", [standard_rl, prefixrl])
def test_final_eval_counts_for_pass_at_k(script, toy_cache, teacher_traces, tmp_path, monkeypatch):
    """final_eval.json: per problem of the pool (the problems with a trace) and of the held-out set, how
    many of 64 samples passed. With a verifier that passes every response to some problems and none to
    the others, the counts are 64 and 0."""
    import json

    import tasks

    monkeypatch.setattr(tasks, "toy_reward", lambda p, prefix, r: float(p.meta["family"] % 2 == 0))
    run_dir = str(tmp_path / "run")
    script.main(script.Args(run_dir=run_dir, cache_dir=toy_cache, traces=teacher_traces, **{**TINY, "steps": 1}))
    final = json.load(open(os.path.join(run_dir, "final_eval.json")))
    task = tasks.make_toy_task(tasks.TOY_LENGTH, *(SMOKE_TASK[k] for k in ("hard_min", "hard_max", "n_train", "n_heldout", "task_seed")))
    train, heldout = ([64 * (p.meta["family"] % 2 == 0) for p in problems] for problems in (task.train, task.heldout))
    assert final == dict(n=64, temperature=script.Args.eval_temperature, train_counts=train, heldout_counts=heldout)
    assert 0 < sum(final["train_counts"] + final["heldout_counts"]) < 64 * 8  # both kinds of problem are there


def test_prefixed_only_logs_accuracy_by_prefix_length(toy_cache, teacher_traces, tmp_path):
    run_dir = str(tmp_path / "run")
    prefixrl.main(prefixrl.Args(run_dir=run_dir, cache_dir=toy_cache, traces=teacher_traces, prefixed_only=True, **TINY))
    evals = [r for r in read_metrics(run_dir) if "eval/train_pass@1" in r]
    for r in evals:
        assert all(0 <= r[f"eval/prefix@{f}_pass@1"] <= 1 for f in ("0.2", "0.4", "0.6", "0.8"))
    assert all(r["train/reward_no_prefix"] is None for r in read_metrics(run_dir) if "train/grad_norm" in r)


def test_prefixrl_no_prefix_metrics_cover_the_original_groups_only(toy_cache, teacher_traces, tmp_path, monkeypatch):
    """With every prefixed rollout rewarded and every original one not, the no-prefix all-negative
    fraction is 1 while the fraction over all groups is the original groups' share, 1 in 4."""
    import tasks

    monkeypatch.setattr(tasks, "toy_reward", lambda p, prefix, r: float(len(prefix) > 0))
    run_dir = str(tmp_path / "run")
    prefixrl.main(prefixrl.Args(run_dir=run_dir, cache_dir=toy_cache, traces=teacher_traces, **TINY))
    train = [r for r in read_metrics(run_dir) if "train/grad_norm" in r]
    for r in train:
        assert r["train/all_negative_frac_no_prefix"] == 1.0 and r["train/all_negative_frac"] == 0.25
        assert r["train/reward_no_prefix"] == 0.0 and r["train/reward_prefixed"] == 1.0
        assert 0 < r["train/entropy_no_prefix"] and 0 < r["train/entropy"]


def tensorboard_scalars(path):
    """{tag: [(step, value)]} of the event files in `path` (not its subdirectories)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(path, size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def rows_as_scalars(rows, step_key):
    out = {}
    for r in rows:
        for k, v in r.items():
            if k not in ("step", "sft_step") and isinstance(v, (int, float)):
                out.setdefault(k, []).append((r[step_key], pytest.approx(v, rel=1e-6)))
    return out


@pytest.mark.parametrize("script,extra", [(prefixrl, {}), (sft_rl, dict(sft_steps=4, sft_batch=4))])
def test_tensorboard_event_files_hold_the_metrics_rows(script, extra, toy_cache, teacher_traces, tmp_path):
    """--tensorboard: every number of metrics.jsonl, read back from RUN_DIR/tensorboard under its own name
    at its step (SFT rows from RUN_DIR/tensorboard/sft); a resumed run rewrites them, no row twice."""
    pytest.importorskip("tensorboard")
    run_dir = str(tmp_path / "run")
    script.main(script.Args(run_dir=run_dir, cache_dir=toy_cache, traces=teacher_traces, tensorboard=True, save_every=100, **TINY, **extra))

    def check():
        rows = read_metrics(run_dir)
        rl, sft = [r for r in rows if "step" in r], [r for r in rows if "sft_step" in r]
        assert tensorboard_scalars(os.path.join(run_dir, "tensorboard")) == rows_as_scalars(rl, "step")
        if sft:
            assert tensorboard_scalars(os.path.join(run_dir, "tensorboard", "sft")) == rows_as_scalars(sft, "sft_step")
        return rows

    first = check()
    assert any("train/grad_norm" in r for r in first)
    # killed after its last checkpoint, before the policy was written: --resume logs the last evaluation again
    import shutil

    shutil.rmtree(os.path.join(run_dir, "policy"))
    script.main(script.Args(resume=run_dir, threads=TINY["threads"]))
    assert check() == first
