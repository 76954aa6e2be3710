"""Runs that survive: checkpoints, --resume after SIGKILL / SIGTERM / SIGINT in any phase (toy
pretraining, trace collection, RL, evaluation) giving the uninterrupted run's metrics byte for byte,
determinism, and bad input stopping with one line and exit code 2."""

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import models
import offpolicy_rl
import prefixrl
import sft_rl
import standard_rl
import tasks
import utils
from conftest import read_metrics
from test_smoke import ROOT, TINY

KILL = dict(TINY, steps=8, save_every=2, eval_every=4, threads=1)  # evaluations at 0, 4, 8
SHORT = dict(TINY, steps=3, save_every=100, threads=1)  # checkpoints at 0 and 3 only, unless a signal arrives
SFT = dict(sft_steps=3, sft_batch=4)


def cli(settings):
    return [x for k, v in settings.items() for x in (f"--{k.replace('_', '-')}", str(v))]


def metrics_bytes(run_dir):
    """metrics.jsonl and groups.jsonl, the logs a resumed run must give back byte for byte."""
    logs = []
    for name in ("metrics.jsonl", "groups.jsonl"):
        with open(os.path.join(run_dir, name), "rb") as f:
            logs.append(f.read())
    return logs


def train_steps(run_dir, key="step"):
    return [r[key] for r in read_metrics(run_dir) if key in r and ("train/grad_norm" in r or "sft/loss" in r)]


def checkpoint(run_dir):
    return torch.load(os.path.join(run_dir, utils.CHECKPOINT), weights_only=True)


@pytest.fixture(scope="module")
def reference(toy_cache, teacher_traces, tmp_path_factory):
    """Uninterrupted runs, made once per (script, settings) and shared by the tests of this module."""
    done = {}

    def get(script, settings):
        key = (script.__name__, json.dumps(settings, sort_keys=True))
        if key not in done:
            run_dir = str(tmp_path_factory.mktemp(f"ref_{script.__name__}") / "run")
            script.main(script.Args(run_dir=run_dir, cache_dir=toy_cache, traces=teacher_traces, **settings))
            done[key] = run_dir
        return done[key]

    return get


def test_same_seed_gives_byte_identical_metrics(reference, toy_cache, teacher_traces, tmp_path):
    first = reference(prefixrl, KILL)
    second = str(tmp_path / "run")
    prefixrl.main(prefixrl.Args(run_dir=second, cache_dir=toy_cache, traces=teacher_traces, **KILL))
    assert metrics_bytes(first) == metrics_bytes(second)
    rows = read_metrics(first)
    assert not any(k in r for r in rows for k in utils.WALL_CLOCK)  # wall clock lives in time.jsonl
    with open(os.path.join(first, "time.jsonl")) as f:
        clock = [json.loads(line) for line in f]
    assert [r["step"] for r in clock] == list(range(1, 9))
    # each step's rollouts and training seconds fit in that step's wall time
    for before, r in zip([0.0] + [r["time"] for r in clock], clock):
        assert 0 < r["time_rollouts"] and 0 < r["time_training"] and r["time_rollouts"] + r["time_training"] <= r["time"] - before
    # the final policy, a Hugging Face directory, is the last checkpoint's model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    policy = AutoModelForCausalLM.from_pretrained(os.path.join(first, utils.POLICY_DIR))
    AutoTokenizer.from_pretrained(os.path.join(first, utils.POLICY_DIR))
    ckpt = checkpoint(first)
    assert ckpt["step"] == 8 and ckpt["values"]["flops"] == rows[-1]["flops"]
    for name, p in policy.state_dict().items():
        assert torch.equal(p, ckpt["state"]["model"][name])


def wait_for_train_row(run_dir, step, proc, timeout=180):
    path, t0 = os.path.join(run_dir, "metrics.jsonl"), time.time()
    while time.time() - t0 < timeout and proc.poll() is None:
        if os.path.exists(path):
            with open(path) as f:
                for line in f:
                    try:
                        row = json.loads(line)
                    except ValueError:  # a line being written
                        continue
                    if "train/grad_norm" in row and row["step"] >= step:
                        return
        time.sleep(0.05)
    raise AssertionError(f"no training row for step {step} (rc {proc.poll()})")


@pytest.mark.parametrize("script,settings,own", [(prefixrl, KILL, 4), (offpolicy_rl, SHORT, 3), (sft_rl, dict(SHORT, **SFT), 4)])
def test_groups_log_holds_each_steps_problems_and_successes(script, settings, own, reference):
    """groups.jsonl: a row per training step, each group's problem and its on-policy successes (offpolicy_rl:
    the n - 1 own rollouts, not the trace); their no-prefix mean is the step's train/reward_no_prefix."""
    run_dir = reference(script, settings)
    with open(os.path.join(run_dir, "groups.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    train = [r for r in read_metrics(run_dir) if "train/grad_norm" in r]
    assert [r["step"] for r in rows] == [r["step"] for r in train] == list(range(1, settings["steps"] + 1))
    with open(os.path.join(run_dir, "args.json")) as f:
        a = json.load(f)
    train_ids = {p.id for p in tasks.make_toy_task(a["toy_length"], a["hard_min"], a["hard_max"], a["n_train"], a["n_heldout"], a["task_seed"]).train}
    for row, metrics in zip(rows, train):
        assert row["rollouts"] == own and len(row["problems"]) == len(row["successes"]) == settings["prompts_per_step"]
        assert all(0 <= k <= own for k in row["successes"]) and set(row["problems"]) <= train_ids
        plain = [k for k, n in zip(row["successes"], row.get("prefix_tokens", [0] * len(row["successes"]))) if n == 0]
        assert sum(plain) / (own * len(plain)) == pytest.approx(metrics["train/reward_no_prefix"])
    if script is prefixrl:  # 3 prefixed groups and 1 original a step
        assert all(sum(n > 0 for n in r["prefix_tokens"]) == 3 for r in rows)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_kill_or_signal_in_rl_then_resume_equals_the_uninterrupted_run(sig, reference, toy_cache,
                                                                       teacher_traces, tmp_path):
    expected = reference(prefixrl, KILL)
    run_dir, log = str(tmp_path / "run"), open(tmp_path / "log", "w")
    flags = ["--run-dir", run_dir, "--cache-dir", toy_cache, "--traces", teacher_traces, *cli(KILL)]
    proc = subprocess.Popen([sys.executable, "prefixrl.py", *flags], cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        wait_for_train_row(run_dir, 5, proc)  # step 5 logged: its checkpoint is step 4 (or 6)
    finally:
        proc.send_signal(sig)  # SIGKILL: no handler runs; SIGINT: the step in progress is finished
        proc.wait()
    stopped_at = checkpoint(run_dir)["step"]
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL and stopped_at in (4, 6)
    else:  # after the step in progress, or at once if the last checkpoint holds it
        last = open(tmp_path / "log").read().strip().splitlines()[-1]
        assert proc.returncode == 130 and stopped_at == train_steps(run_dir)[-1] >= 5
        assert last.endswith(f"step {stopped_at} in {run_dir}/{utils.CHECKPOINT}; continue with: "
                             f"python prefixrl.py --resume {run_dir}")
    assert 8 not in train_steps(run_dir)
    out = resume(run_dir)
    assert f"from its checkpoint at step {stopped_at}" in out.stdout
    assert train_steps(run_dir) == list(range(1, 9))  # none duplicated, none missing
    assert [r["step"] for r in read_metrics(run_dir) if "eval/heldout_pass@1" in r] == [0, 4, 8]
    assert metrics_bytes(run_dir) == metrics_bytes(expected)
    assert os.path.isdir(os.path.join(run_dir, utils.POLICY_DIR))


def resume(run_dir, launcher=("prefixrl.py",)):
    """--resume RUN_DIR from the command line: it names the run dir first, the total time and the
    results last."""
    cmd = [sys.executable, *launcher, "--resume", run_dir, "--threads", "1"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert lines[0] == f"prefixrl.py: continuing the run in {run_dir}"
    assert lines[-1].startswith("done in ")
    results = f"; results in {run_dir}/: metrics.jsonl, final_eval.json, {utils.POLICY_DIR}/"
    assert lines[-1].endswith(results)
    return out


SIGNAL_AT = """import os, runpy, signal, sys
import {module}
signal.signal(signal.SIGINT, signal.default_int_handler)  # as from a terminal (see below)
{setup}
real, calls = {module}.{function}, [0]


def signalling(*a, **k):  # a real signal to this process, at a known point of the run
    calls[0] += 1
    if calls[0] == {call}:
        os.kill(os.getpid(), signal.{sig})
    return real(*a, **k)


{module}.{function} = signalling
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""
"""`python -c SIGNAL_AT prefixrl.py FLAGS` runs prefixrl.py FLAGS, after `setup`, with a signal sent
to it at the call-th call of module.function. SIGINT is made Python's KeyboardInterrupt first, as in
a terminal: pytest started as a background job (`pytest &` in a script) has SIGINT ignored, and its
children inherit that, so the signal would never arrive."""
LENIENT = "lambda p, prefix, r: float(sum(r) % 257 == 0)"
"""a toy reward that the 20-step model meets by chance: the smoke task's traces take 3 rounds"""


def launcher(module="utils", function="sample", call=0, sig=signal.SIGINT, setup=""):
    code = SIGNAL_AT.format(module=module, function=function, call=call, sig=sig.name, setup=setup)
    return ["-c", code, "prefixrl.py"]


def run_and_signal(run_dir, cache, flags, sig, at, setup=""):
    """prefixrl.py, signalled at `at` = (module, function, call): (exit code, its last line)."""
    cmd = [*launcher(*at, sig, setup), "--run-dir", run_dir, "--cache-dir", cache, *cli(flags)]
    out = subprocess.run([sys.executable, *cmd], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    assert out.stdout.startswith(f"prefixrl.py: run dir {run_dir}\n")  # named at the start
    return out.returncode, out.stderr.strip().splitlines()[-1]


def continue_with(run_dir):
    return f"continue with: python prefixrl.py --resume {run_dir}"


def test_signal_in_pretraining_keeps_no_half_model_and_resume_pretrains(teacher_traces, tmp_path):
    run_dir, cache = str(tmp_path / "run"), str(tmp_path / "c")
    at = ("torch.optim", "AdamW.step", 5)  # the 5th of 20 pretraining steps, on a cold cache
    rc, last = run_and_signal(run_dir, cache, dict(KILL, traces=teacher_traces), signal.SIGINT, at)
    assert rc == 130 and last == ("SIGINT: stopped; the toy base model's pretraining was not "
                                  f"finished: nothing of it is cached; {continue_with(run_dir)}")
    assert os.listdir(cache) == [] and os.listdir(run_dir) == ["args.json"]
    out = resume(run_dir)
    assert "stopped before its first checkpoint: the run starts again" in out.stdout
    assert "pretrained toy base model" in out.stdout
    # the uninterrupted run pretrains on a cold cache too, with the same --threads: on a CPU with AMX,
    # oneDNN's bf16 kernels make the pretraining's sums depend on the thread count (with
    # ONEDNN_MAX_CPU_ISA=AVX512_CORE they do not), so toy_cache's model (2 threads) can be another
    expected, expected_cache = str(tmp_path / "expected"), str(tmp_path / "expected_cache")
    subprocess.run([sys.executable, "prefixrl.py", "--run-dir", expected, "--cache-dir", expected_cache,
                    *cli(dict(KILL, traces=teacher_traces))], cwd=ROOT, check=True, capture_output=True, timeout=300)
    models_made = [glob.glob(os.path.join(c, "toy-base-*", "model.safetensors")) for c in (cache, expected_cache)]
    assert all(len(m) == 1 for m in models_made)
    assert models.file_sha256(models_made[0][0]) == models.file_sha256(models_made[1][0])
    assert metrics_bytes(run_dir) == metrics_bytes(expected)


@pytest.mark.parametrize("call,stopped_at", [(4, 4), (7, 8)])  # held-out at step 4; the final one
def test_signal_in_evaluation_stops_at_once_and_resume_continues_exactly(call, stopped_at,
                                                                         reference, toy_cache,
                                                                         teacher_traces, tmp_path):
    """Evaluations (2 calls each) at steps 0, 4 and 8, then the final one; checkpoints every 2
    steps, so none is needed: the last checkpoint holds all the work, and the run stops at once."""
    expected, run_dir = reference(prefixrl, KILL), str(tmp_path / "run")
    flags, at = dict(KILL, traces=teacher_traces), ("utils", "evaluate", call)
    rc, last = run_and_signal(run_dir, toy_cache, flags, signal.SIGTERM, at)
    path = os.path.join(run_dir, utils.CHECKPOINT)
    assert rc == 143 and last == ("SIGTERM: stopped; no update since the checkpoint at step "
                                  f"{stopped_at} in {path}; {continue_with(run_dir)}")
    assert checkpoint(run_dir)["step"] == stopped_at
    assert not os.path.exists(os.path.join(run_dir, utils.POLICY_DIR))
    resume(run_dir)
    assert metrics_bytes(run_dir) == metrics_bytes(expected)


def test_signal_in_trace_collection_keeps_its_rounds_and_resume_collects_the_same(toy_cache,
                                                                                  tmp_path,
                                                                                  monkeypatch):
    """With a reward the 20-step model meets by chance, the collection finds some traces in its
    first round of batches and the others in later rounds; stopped in round 2, it goes on from round
    1's partial cache and ends with the uninterrupted collection's traces, attempts and FLOPs, and
    the run with its metrics."""
    settings, caches = dict(KILL, steps=2, trace_budget=512), []
    for name in ("expected", "stopped"):  # the toy model alone: no traces cached
        caches.append(str(tmp_path / f"cache_{name}"))
        shutil.copytree(toy_cache, caches[-1], ignore=shutil.ignore_patterns("traces-*"))
    monkeypatch.setattr(tasks, "toy_reward", eval(LENIENT))
    expected = str(tmp_path / "expected")
    prefixrl.main(prefixrl.Args(run_dir=expected, cache_dir=caches[0], **settings))
    monkeypatch.undo()
    run_dir, setup = str(tmp_path / "run"), f"import tasks\ntasks.toy_reward = {LENIENT}"
    at = ("utils", "sample", 2)  # the start of round 2
    rc, last = run_and_signal(run_dir, caches[1], settings, signal.SIGTERM, at, setup=setup)
    [partial] = glob.glob(os.path.join(caches[1], "traces-*" + utils.PARTIAL))
    kept = [t["problem_id"] for t in json.load(open(partial))["traces"]]
    assert rc == 143 and last == (f"SIGTERM: stopped; trace collection kept its {len(kept)} traces "
                                  f"so far and each problem's attempts in {partial}; "
                                  f"{continue_with(run_dir)}")
    out = resume(run_dir, launcher(setup=setup))  # no signal: the reward alone
    assert f"trace collection goes on from {partial}: {len(kept)} traces so far" in out.stdout
    assert not os.path.exists(partial)
    collected = [json.load(open(glob.glob(os.path.join(c, "traces-*.json"))[0])) for c in caches]
    for field in ("traces", "attempts", "flops", "total_flops"):
        assert collected[0][field] == collected[1][field]
    found = [t["problem_id"] for t in collected[0]["traces"]]
    assert 0 < len(kept) < len(found) and kept == found[: len(kept)]  # stopped in the middle
    assert metrics_bytes(run_dir) == metrics_bytes(expected)


@pytest.mark.parametrize("script,extra,key,at,sig", [
    (standard_rl, {}, "step", 2, signal.SIGTERM),
    (offpolicy_rl, {}, "step", 2, signal.SIGTERM),
    (sft_rl, SFT, "sft_step", 2, signal.SIGTERM),  # in the SFT phase
    (sft_rl, SFT, "step", 1, signal.SIGINT),  # in the RL phase
])
def test_signal_saves_a_checkpoint_and_resume_continues_exactly(script, extra, key, at, sig, reference, toy_cache, teacher_traces,
                                                                tmp_path, monkeypatch):
    settings = dict(SHORT, **extra)
    expected = reference(script, settings)
    log_metrics = utils.log_metrics

    def log_then_signal(run_dir, row):  # the signal arrives while step `at` is being logged
        log_metrics(run_dir, row)
        if row.get(key) == at and ("train/grad_norm" in row or "sft/loss" in row):
            os.kill(os.getpid(), sig)

    monkeypatch.setattr(utils, "log_metrics", log_then_signal)
    run_dir, handlers = str(tmp_path / "run"), {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(SystemExit) as e:
        script.main(script.Args(run_dir=run_dir, cache_dir=toy_cache, traces=teacher_traces, **settings))
    assert e.value.code == 128 + sig  # 143 for SIGTERM, 130 for SIGINT
    assert handlers == {s: signal.getsignal(s) for s in handlers}  # the previous handlers are back
    ckpt = checkpoint(run_dir)
    assert ckpt["step"] == at and ckpt["values"].get("phase", "rl") == ("sft" if key == "sft_step" else "rl")
    assert train_steps(run_dir, key)[-1] == at and not os.path.exists(os.path.join(run_dir, utils.POLICY_DIR))
    monkeypatch.undo()
    script.main(script.Args(resume=run_dir, threads=1))
    assert metrics_bytes(run_dir) == metrics_bytes(expected)


def test_nan_gradient_stops_before_the_update_and_keeps_the_last_checkpoint(toy_cache, teacher_traces, tmp_path, monkeypatch, capsys):
    token_logprobs, calls = utils.token_logprobs, [0]

    def poisoned(*a, **k):  # 2 micro-batches a step: step 3 gets NaN log-probs (the no-grad check at load is not a step)
        calls[0] += torch.is_grad_enabled()
        logp, ent = token_logprobs(*a, **k)
        return (logp * float("nan"), ent) if calls[0] > 4 else (logp, ent)

    monkeypatch.setattr(utils, "token_logprobs", poisoned)
    run_dir = str(tmp_path / "run")
    args = standard_rl.Args(run_dir=run_dir, cache_dir=toy_cache, traces=teacher_traces, **dict(SHORT, steps=5, save_every=2))
    err = stops(capsys, lambda: standard_rl.main(args))
    assert "step 3: grad_norm is nan; stopped before the update, the last good checkpoint (step 2) stays in" in err
    assert checkpoint(run_dir)["step"] == 2 and train_steps(run_dir) == [1, 2]


@pytest.mark.parametrize("script", [standard_rl, prefixrl, offpolicy_rl], ids=lambda s: s.__name__)
def test_nan_logits_stop_the_run_even_when_no_row_has_a_gradient(script, toy_cache, teacher_traces, tmp_path, monkeypatch, capsys):
    """Step 3's rollouts come from a policy whose logits are NaN: its rollouts fail, so most rows have no
    advantage and are not run, but the sampler's entropy (train/entropy) is NaN and stops the run."""
    sample, calls = utils.sample, [0]

    def poisoned(model, prompts, max_new_tokens, temperature, *a, **k):
        calls[0] += temperature == 1.0  # a training step's rollouts (evaluations sample at 0.7)
        if calls[0] == 3:
            with torch.no_grad():
                model.get_output_embeddings().weight.fill_(float("nan"))
        return sample(model, prompts, max_new_tokens, temperature, *a, **k)

    monkeypatch.setattr(utils, "sample", poisoned)
    run_dir = str(tmp_path / "run")
    args = script.Args(run_dir=run_dir, cache_dir=toy_cache, traces=teacher_traces, **dict(SHORT, steps=5, save_every=2))
    err = stops(capsys, lambda: script.main(args))
    assert "step 3: " in err and " is nan; stopped before the update, the last good checkpoint (step 2) stays in" in err
    assert script is offpolicy_rl or "step 3: entropy is nan" in err  # its trace rows have a gradient: NaN
    assert checkpoint(run_dir)["step"] == 2 and train_steps(run_dir) == [1, 2]


# BAD INPUT: one line naming the problem and the fix, exit code 2, nothing written that a later run would trust
def stops(capsys, fn):
    with pytest.raises(SystemExit) as e:
        with utils.clean_errors():
            fn()
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after any progress bar
    assert e.value.code == 2 and last.startswith("error: "), last
    return last


@pytest.mark.parametrize("settings,message", [
    (dict(lr=0.0), "--lr must be > 0 and finite, got 0.0"),
    (dict(lr=-1e-4), "--lr must be > 0"),
    (dict(micro_batch=5), "batch 4x4 is not divisible by --micro-batch 5; give a divisor of 16"),
    (dict(micro_batch=0), "--micro-batch must be >= 1, got 0"),
    (dict(save_every=0), "--save-every must be >= 1, got 0"),
])
def test_flags_out_of_range(settings, message, tmp_path, capsys):
    run_dir = str(tmp_path / "run")
    cache = str(tmp_path / "cache")  # never the default cache/ (it would be used if a check did not fire)
    err = stops(capsys, lambda: prefixrl.main(prefixrl.Args(run_dir=run_dir, cache_dir=cache, **dict(TINY, threads=1, **settings))))
    assert message in err and not os.path.exists(run_dir) and not os.path.exists(cache)


def test_run_dir_with_a_run_needs_resume(reference, tmp_path, capsys):
    run_dir = str(tmp_path / "run")
    shutil.copytree(reference(prefixrl, KILL), run_dir)
    before = metrics_bytes(run_dir)
    err = stops(capsys, lambda: prefixrl.main(prefixrl.Args(run_dir=run_dir, cache_dir=str(tmp_path / "cache"), **dict(TINY, threads=1))))
    assert f"run dir '{run_dir}' already holds a run; continue it with --resume {run_dir}, or pick another --run-dir" in err
    assert metrics_bytes(run_dir) == before
    stopped = str(tmp_path / "stopped")  # stopped before its first checkpoint: args.json alone
    os.makedirs(stopped)
    shutil.copy(os.path.join(run_dir, "args.json"), stopped)
    args = prefixrl.Args(run_dir=stopped, cache_dir=str(tmp_path / "c"), **dict(TINY, threads=1))
    err = stops(capsys, lambda: prefixrl.main(args))
    assert f"run dir '{stopped}' already holds a run; continue it with --resume {stopped}" in err
    assert os.listdir(stopped) == ["args.json"]


def test_resume_problems_are_named(reference, tmp_path, capsys):
    finished = reference(prefixrl, KILL)
    err = stops(capsys, lambda: prefixrl.main(prefixrl.Args(resume=str(tmp_path))))
    assert "no args.json there, so it is not a run dir" in err
    err = stops(capsys, lambda: standard_rl.main(standard_rl.Args(resume=finished)))
    assert "holds a prefixrl run; resume it with prefixrl.py" in err
    err = stops(capsys, lambda: prefixrl.main(prefixrl.Args(resume=finished, lr=1.0)))
    assert "--resume takes every flag from" in err and "drop --lr" in err
    with pytest.raises(SystemExit) as e:  # a finished run: nothing to do, exit 0
        prefixrl.main(prefixrl.Args(resume=finished, threads=1))
    assert e.value.code == 0 and "nothing to resume" in capsys.readouterr().out


def unfinished_copy(reference, tmp_path):
    run_dir = str(tmp_path / "run")
    shutil.copytree(reference(prefixrl, KILL), run_dir)
    shutil.rmtree(os.path.join(run_dir, utils.POLICY_DIR))
    return run_dir


def test_resume_drops_the_rows_logged_after_the_checkpoint(reference, tmp_path):
    run_dir = unfinished_copy(reference, tmp_path)  # its checkpoint is step 8: the final evaluation row came after it
    with open(os.path.join(run_dir, "metrics.jsonl"), "a") as f:
        f.write('{"step": 9, "flops": 1')  # and a row cut short by a kill
    with open(os.path.join(run_dir, "time.jsonl"), "a") as f:
        f.write('{"step": 9, "time": 1.0}\n')
    prefixrl.main(prefixrl.Args(resume=run_dir, threads=1))
    assert metrics_bytes(run_dir) == metrics_bytes(reference(prefixrl, KILL))
    with open(os.path.join(run_dir, "time.jsonl")) as f:
        assert [json.loads(line)["step"] for line in f] == list(range(1, 9))


def test_damaged_checkpoint_or_metrics_are_named(reference, tmp_path, capsys):
    run_dir = unfinished_copy(reference, tmp_path)
    path = os.path.join(run_dir, utils.CHECKPOINT)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])  # cut short
    err = stops(capsys, lambda: prefixrl.main(prefixrl.Args(resume=run_dir, threads=1)))
    assert f"checkpoint '{path}' is unreadable or not a prefixrl checkpoint" in err
    open(path, "wb").write(data)
    with open(os.path.join(run_dir, "args.json")) as f:
        saved = json.load(f)
    with open(os.path.join(run_dir, "args.json"), "w") as f:
        json.dump(dict(saved, seed=7), f)  # a checkpoint from another run
    err = stops(capsys, lambda: prefixrl.main(prefixrl.Args(resume=run_dir, threads=1)))
    assert "belongs to another run: its flags differ from args.json in seed" in err
    with open(os.path.join(run_dir, "args.json"), "w") as f:
        json.dump(saved, f)
    metrics = os.path.join(run_dir, "metrics.jsonl")
    rows = open(metrics).read().splitlines(keepends=True)
    open(metrics, "w").write("".join(rows[:3]))
    err = stops(capsys, lambda: prefixrl.main(prefixrl.Args(resume=run_dir, threads=1)))
    assert f"'{metrics}' has 3 rows, fewer than the {len(rows) - 1} it had at the checkpoint (step 8)" in err
    os.remove(path)
    err = stops(capsys, lambda: prefixrl.main(prefixrl.Args(resume=run_dir, threads=1)))
    assert f"run dir '{run_dir}' has metrics.jsonl but no checkpoint.pt (removed?), so it" in err


def test_unreadable_models_are_named(toy_cache, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    err = stops(capsys, lambda: models.load_model(str(tmp_path / "empty"), toy_cache, "cpu"))
    assert "holds no config.json, so it is not a Hugging Face model" in err
    toy = models.toy_model_dir(toy_cache, TINY["toy_pretrain_steps"], 0)
    cut = str(tmp_path / "cut")
    shutil.copytree(toy, cut)
    weights = os.path.join(cut, "model.safetensors")
    open(weights, "r+b").truncate(os.path.getsize(weights) // 2)
    err = stops(capsys, lambda: models.load_model(cut, toy_cache, "cpu"))
    assert f"could not load model '{cut}'" in err and "cut short" in err
    # the toy base-model cache: damaged or made for another key
    cache = str(tmp_path / "cache")
    shutil.copytree(toy_cache, cache, ignore=shutil.ignore_patterns("traces-*"))
    copy = os.path.join(cache, os.path.basename(toy))
    marker = os.path.join(copy, "prefixrl_toy.json")
    meta = json.load(open(marker))
    json.dump(dict(meta, steps=999), open(marker, "w"))
    err = stops(capsys, lambda: models.load_model("toy", cache, "cpu", TINY["toy_pretrain_steps"]))
    assert f"toy base model cache '{copy}' holds a model pretrained with steps=999, seed=0, length=12, not steps=20, seed=0, length=12; delete it" in err
    open(marker, "w").write('{"steps": 2')
    err = stops(capsys, lambda: models.load_model("toy", cache, "cpu", TINY["toy_pretrain_steps"]))
    assert f"toy base model cache '{copy}' is damaged (JSONDecodeError in prefixrl_toy.json); delete it to pretrain again" in err
    json.dump(meta, open(marker, "w"))
    open(os.path.join(copy, "model.safetensors"), "r+b").truncate(100)
    err = stops(capsys, lambda: models.load_model("toy", cache, "cpu", TINY["toy_pretrain_steps"]))
    assert f"toy base model cache '{copy}' is damaged (SafetensorError" in err


def test_no_trace_found_or_given(toy_cache, teacher_traces, tmp_path, capsys):
    run_dir = str(tmp_path / "run")
    hard = dict(TINY, threads=1, hard_min=9, hard_max=10, trace_budget=1)  # a 20-step model never solves these at once
    err = stops(capsys, lambda: prefixrl.main(prefixrl.Args(run_dir=run_dir, cache_dir=toy_cache, **hard)))
    assert ("no correct trace found for any of 4 problems within --trace-budget 1 samples each; "
            "raise --trace-budget, or lower --hard-min") in err
    assert not os.path.exists(run_dir)
    empty = str(tmp_path / "empty.json")
    utils.save_traces(empty, {"source": "nothing"}, {}, {}, {})
    err = stops(capsys, lambda: prefixrl.main(prefixrl.Args(run_dir=run_dir, cache_dir=toy_cache, traces=empty, **dict(TINY, threads=1))))
    assert f"traces file '{empty}' holds no traces" in err and not os.path.exists(run_dir)


@pytest.mark.parametrize("damage", [
    lambda d: d.pop("total_flops"),
    lambda d: d.pop("key"),
    lambda d: d["traces"][0].update(token_ids="1 2 3"),
    lambda d: d["traces"][0].update(attempts=0),
    lambda d: d["traces"][0].pop("behaviour_logprobs"),
])
def test_malformed_traces_file_is_named(damage, teacher_traces, tmp_path):
    data = json.load(open(teacher_traces))
    damage(data)
    path = str(tmp_path / "bad.json")
    json.dump(data, open(path, "w"))
    with pytest.raises(utils.InputError, match="is not a prefixrl traces file"):
        utils.load_traces(path)
