"""Each script finishes a tiny run and writes the metrics it promises."""

import math
import subprocess
import sys

import pytest
import os

import prefixrl
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
