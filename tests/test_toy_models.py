"""The toy base models shipped in toy_models/: the bytes recorded, the calibration recorded, loaded with no
pretraining; and the command that remakes them runs."""

import json
import os
import subprocess
import sys

import pytest
import torch

import models
import tasks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_calibrate_toy():
    """bench/calibrate_toy.py as a module (bench/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("calibrate_toy", os.path.join(ROOT, "bench", "calibrate_toy.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_calibrate_toy_by_position_is_each_hard_step_in_solution_order():
    """--families: p(right) at the k-th hard step of a problem's solution is the teacher-forced probability
    of that step's tokens (its entry and value), position by position, not use by use of an entry."""
    import utils
    calibrate_toy = load_calibrate_toy()
    model, _, _ = models.load_model("toy", "unused-cache", "cpu")
    task = tasks.make_toy_task(tasks.TOY_LENGTH, 11, 11, 3, 1, 0)
    got = calibrate_toy.by_position(model, task.train)[11]
    for p, row in zip(task.train, got):
        solution = tasks.toy_solution_ids(p.meta["values"], p.meta["entries"])
        ids, attn, _ = utils.make_batch([p.prompt_ids], [solution], tasks.PAD, "cpu")
        with torch.no_grad():
            logp = utils.token_logprobs(model, ids, attn)[0][0, len(p.prompt_ids) - 1 :]
        ends = tasks.toy_step_ends(solution)
        hard = [float(logp[b:e].sum().exp()) for b, e in zip([0] + ends, ends) if e - b == 2]  # entry + value
        assert row.tolist() == pytest.approx(hard, rel=1e-5)
        assert len({b for b in p.meta["params"][2] if b >= tasks.BIG}) < len(hard)  # entries used more than once: the order matters


@pytest.mark.parametrize("name", list(models.TOY_MODELS))
def test_shipped_toy_model_matches_its_checksum_and_calibration(name, tmp_path):
    path = os.path.join(models.SHIPPED, name)
    assert models.file_sha256(os.path.join(path, "model.safetensors")) == models.shipped_checksums()[f"{name}/model.safetensors"]
    with open(os.path.join(path, "prefixrl_toy.json")) as f:
        made = json.load(f)
    assert (made["steps"], made["seed"], made["toy_steps"], made["rules"]) == (models.TOY_PRETRAIN_STEPS[name], 0, tasks.TOY_LENGTH, tasks.RULES)
    cache = tmp_path / "empty-cache"
    model, _, model_id = models.load_model(name, str(cache), "cpu")  # the scripts' defaults
    assert not cache.exists()  # loaded from the repo: nothing pretrained, nothing cached
    # named by the recorded checksum, not the checkout's path: trace caches and files carry over
    assert model_id == f"{name}@sha256:{models.shipped_checksums()[f'{name}/model.safetensors'][:16]}"
    calibration = models.calibration_summary(model)
    assert calibration == pytest.approx(made["calibration"], rel=1e-4, abs=1e-6)
    assert 0.4 < calibration["p_right_hard"] < 0.6 and calibration["p_right_easy"] > 0.95  # the rule-or-decoy coin


def test_pretrain_command_remakes_a_model(tmp_path):
    out = tmp_path / "toy"
    cmd = [sys.executable, "models.py", "pretrain", "--name", "toy-gpt2", "--steps", "3", "--out", str(out), "--threads", "1"]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, timeout=300)
    with open(out / "prefixrl_toy.json") as f:
        made = json.load(f)
    assert made["steps"] == 3 and made["name"] == "toy-gpt2" and set(made["calibration"]) >= {"p_right_hard", "exact_pass1"}
    assert models.shipped_toy_dir("toy-gpt2", 3, 0, tasks.TOY_LENGTH) is None  # another recipe is never taken for the shipped one
    bad = subprocess.run([sys.executable, "models.py", "pretrian"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "usage: python models.py pretrain" in bad.stderr


def test_calibrate_toy_counts_standard_rls_successes_on_the_pool_only(capsys, tmp_path):
    """bench/calibrate_toy.py's count: standard RL's rollouts spread over the pool (the problems with a trace),
    times each pool problem's exact pass@1; the pool is not all training problems (rejection sampling finds the
    easier ones, which is why the count is twice the all-problem estimate)."""
    import numpy as np

    import utils
    calibrate_toy = load_calibrate_toy()
    model, _, _ = models.load_model("toy", "unused-cache", "cpu")
    task = tasks.make_toy_task(tasks.TOY_LENGTH, 11, 11, 6, 1, 0)
    exact = [next(iter(models.toy_calibration(model, [p])[2].values()))[0] for p in task.train]
    pool = [task.train[i] for i in np.argsort(exact)[-2:]]  # the two easiest: a pool mean far from the mean of all six
    traces = {p.id: utils.Trace(p.id, tasks.toy_solution_ids(p.meta["values"], p.meta["entries"]), "", 1, 1.0, [], 1.0) for p in pool}
    trace_path = str(tmp_path / "traces.json")
    utils.save_traces(trace_path, {"model": "toy"}, traces, {p.id: 1 for p in task.train}, {p.id: 1.0 for p in task.train})
    calibrate_toy.rl_successes(model, task, trace_path)
    out = capsys.readouterr().out
    rollouts = 800 * 16 * 8  # reproduce.py's RL n=8: 800 steps of 16 prompts x 8 rollouts
    pool_exact = sorted(exact)[-2:]
    assert f"pool: 2 of 6 training problems have a trace; exact pass@1 mean {np.mean(pool_exact):.2e}" in out
    assert f"= {rollouts} on the pool" in out
    assert f"mean {np.mean(pool_exact) * rollouts / 2:.2f}" in out
    assert f"one or more: {np.mean(1 - np.exp(-np.array(pool_exact) * rollouts / 2)):.2f}" in out


@pytest.mark.parametrize("name", list(models.TOY_MODELS))
def test_shipped_traces_are_the_default_collection(name, tmp_path):
    """toy_models/NAME/traces.json (the runs copy toy's instead of rejection sampling for 3-5 minutes, reproduce.py
    toy-gpt2's instead of 5-7): its recorded checksum; the key of the default problems' collection by that model
    (a change to the task, the budget or the model makes it stale and this fails: remake it with the command in
    models.shipped_traces); each trace a correct solution written by the model, with the log-probs the model
    gives it at temperature 1."""
    import torch

    import reproduce
    import utils
    path = os.path.join(models.SHIPPED, name, "traces.json")
    assert models.file_sha256(path) == models.shipped_checksums()[f"{name}/traces.json"]
    task = tasks.make_toy_task(tasks.TOY_LENGTH, 11, 11, tasks.FAMILIES, tasks.FAMILIES, 0)
    model, _, model_id = models.load_model(name, str(tmp_path), "cpu")
    assert models.shipped_traces(model_id) == path and models.shipped_traces("toy@sha256:another") is None
    assert utils.traces_file_key(path) == utils.traces_key(model_id, task, task.train, 2048, 1.0, 0)  # the scripts' defaults
    if name == reproduce.OTHER_FAMILY:
        assert reproduce.shipped_other_traces("") == path
    with open(path) as f:
        data = json.load(f)
    assert data["total_flops"] == sum(data["flops"].values()) and all(1 <= a <= data["key"]["budget"] for a in data["attempts"].values())
    by_id = {p.id: p for p in task.train}
    for t in data["traces"]:
        p = by_id[t["problem_id"]]
        assert task.reward(p, [], t["token_ids"]) == 1.0
        ids, attn, mask = utils.make_batch([p.prompt_ids], [t["token_ids"]], task.pad_id, "cpu")
        with torch.no_grad():
            logp = utils.token_logprobs(model, ids, attn)[0][mask > 0]
        torch.testing.assert_close(logp, torch.tensor(t["behaviour_logprobs"]), rtol=0, atol=1e-4)  # batched sampling: float32 rounding
