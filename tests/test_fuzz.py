"""Fuzzed flags: every draw of flag values, across and beyond their ranges, is either refused at
start-up (exit 2, one line on stderr, before any model is loaded, nothing written) or finishes a tiny
run (exit 0, a well-formed metrics.jsonl and final_eval.json). reproduce.py's draws run --dry-run.

The scripts run in this process as their __main__ runs them (tyro.cli, then main under
utils.clean_errors), so any exception but SystemExit is a traceback and fails the test. Each draw
gives 1-4 flags a drawn value on top of a tiny valid run; the traces file is the exact solutions of
the drawn task's problems, so that no run depends on how a barely pretrained model samples. Learning
rates are drawn up to 1: a larger one may make a run diverge, which its NaN check stops mid-run.
Profiles: "ci" (the default; the same draws every time) and "long" (more draws, new ones each time):

    PREFIXRL_FUZZ=long python -m pytest -q -s tests/test_fuzz.py
"""

import contextlib
import io
import json
import math
import os
import shutil
import tempfile
from collections import Counter

import torch
import tyro
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import models
import offpolicy_rl
import prefixrl
import reproduce
import sft_rl
import standard_rl
import tasks
import utils

PROFILES = {
    "ci": settings(max_examples=300, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck)),
    "long": settings(max_examples=1000, database=None, deadline=None, suppress_health_check=list(HealthCheck)),
}
PROFILE = os.environ.get("PREFIXRL_FUZZ", "ci")
SCRIPTS = {"prefixrl": prefixrl, "standard_rl": standard_rl, "sft_rl": sft_rl, "offpolicy_rl": offpolicy_rl, "reproduce": reproduce}
TINY = dict(threads=1, toy_pretrain_steps=2, hard_min=1, hard_max=4, n_train=4, n_heldout=4, steps=2, prompts_per_step=2, rollouts=2,
            micro_batch=4, eval_every=1, eval_samples=2, final_eval_samples=2, save_every=1, sft_steps=2, sft_batch=2)
ODD = (math.nan, math.inf, -math.inf)


def ints(lo, hi, *more):
    return st.one_of(st.integers(lo, hi), st.sampled_from(more)) if more else st.integers(lo, hi)


def floats(lo, hi, *edges):
    return st.one_of(st.floats(lo, hi), st.sampled_from(edges + ODD))


SEED = ints(-2, 3, 2**32 - 1, 2**32)
FLAGS = {  # flag -> values of its type, in range (tiny) and beyond
    "seed": SEED, "task_seed": SEED, "trace_seed": SEED, "threads": st.sampled_from([-1, 0, 1, utils.MAX_THREADS + 1]),
    "device": st.sampled_from(["cpu", "cuda", "cuda:7", "banana"]), "model": st.sampled_from(["toy", "toy-gpt2"]),
    "task": st.sampled_from(["toy", "arith", "missing.jsonl", "chess"]), "level": ints(-1, 8),
    "max_new_tokens": ints(-1, 30, 200), "toy_pretrain_steps": ints(-1, 3), "toy_length": ints(0, 14, 60, 61),
    "hard_min": ints(-1, 13), "hard_max": ints(-1, 13), "n_train": ints(-1, 6), "n_heldout": ints(-1, 5), "trace_budget": ints(-1, 3),
    "trace_temperature": floats(-1, 3, 0.0), "steps": ints(-1, 3), "prompts_per_step": ints(-1, 4), "rollouts": ints(-1, 4),
    "temperature": floats(-0.5, 3, 0.0), "lr": floats(-0.5, 1, 0.0), "grad_clip": floats(-1, 5, 0.0), "std_normalize": st.booleans(),
    "loss_agg": st.sampled_from(["token", "sequence"]), "micro_batch": ints(-1, 9), "gradient_checkpointing": st.booleans(),
    "eval_every": ints(-1, 3), "eval_samples": ints(-1, 9), "eval_temperature": floats(-0.5, 3, 0.0), "final_eval_samples": ints(-1, 5),
    "save_every": ints(-1, 3), "sample_tokens": ints(-1, 60, 10**6), "micro_batch_tokens": ints(-1, 60), "grad_std": st.booleans(),
    "dtype": st.sampled_from(["float32", "bfloat16"]),
}
OWN_FLAGS = {
    "prefixrl": {"cuts_per_trace": ints(-1, 3), "cut_min": floats(-0.5, 1.5, 0.0, 1.0), "cut_max": floats(-0.5, 1.5, 0.0, 0.01, 1.0),
                 "prefixed_fraction": floats(-0.5, 1.5, 0.0, 1.0), "prefixed_only": st.booleans()},
    "standard_rl": {},
    "sft_rl": {"sft_steps": ints(-1, 3), "sft_val_fraction": floats(-0.5, 1.5, 0.0, 1.0), "sft_lr": floats(-0.5, 1, 0.0), "sft_batch": ints(-1, 4)},
    "offpolicy_rl": {"ratio": st.sampled_from(["token", "sequence"]), "clip": st.none() | floats(-1, 5, 0.0),
                     "shaping": st.none() | floats(-1, 1, 0.0), "accept_correction": st.booleans()},
    "reproduce": {"seeds": ints(-1, 3), "jobs": ints(-1, 3), "steps": st.none() | ints(-1, 3),
                  "methods": st.lists(st.sampled_from(list(reproduce.METHODS)), max_size=3, unique=True).map(tuple),
                  "extra": st.sampled_from(["", "--hard-min 9 --hard-max 9", "--rollouts 1", "--cut-min 2", "--task-seed 7 --eval-every 0",
                                            "--seed 3", "--nosuch 1", "--steps x", "'unclosed", "--prefixed-fraction 0.01"])},
}


def argv(flags):
    """--name=value (so that a negative number is a value, not a flag), --name / --no-name, None: not given."""
    out = []
    for name, value in flags.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, tuple):
            out += [flag, *value]
        elif value is not None:
            out.append(f"{flag}={value!r}" if isinstance(value, float) else f"{flag}={value}")
    return out


def run_cli(module, args):
    """(exit code, stderr) of `python SCRIPT ARGS`, run as its __main__ runs it."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), utils.clean_errors():
            result = module.main(tyro.cli(module.Args, args=args))
        code = result or 0  # reproduce.main returns its exit code
    except SystemExit as e:
        code = e.code
    return code, err.getvalue()


def traces_for(a, out_dir):
    """The exact solutions of the toy task that `a` draws, or None when there is no such task."""
    try:
        task = tasks.make_toy_task(a.toy_length, a.hard_min, a.hard_max, a.n_train, a.n_heldout, a.task_seed)
    except (utils.InputError, ValueError):
        return None
    traces = {}
    for p in task.train:
        ids = tasks.toy_solution_ids(*tasks.toy_solve(p.meta["params"]))
        traces[p.id] = utils.Trace(p.id, ids, task.decode(ids), 1, 1.0, [-0.1] * len(ids))
    path = os.path.join(out_dir, "traces.json")
    utils.save_traces(path, {"source": "teacher"}, traces, {pid: 1 for pid in traces}, {pid: 1.0 for pid in traces})
    return path


def strict_json(line):
    return json.loads(line, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(f"{c} in metrics.jsonl")))


def check_run(run_dir, a):
    """metrics.jsonl: one JSON object per line, finite numbers or null; a training row at every step, an
    eval row at 0, every --eval-every and the last step; FLOPs never decrease. final_eval.json: the
    --final-eval-samples asked for, a count per held-out problem."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        rows = [strict_json(line) for line in f]
    for r in rows:
        assert isinstance(r, dict) and all(v is None or isinstance(v, (int, float)) and math.isfinite(v) for v in r.values()), r
    train = [r["step"] for r in rows if "train/grad_norm" in r]
    evals = [r for r in rows if "eval/heldout_pass@1" in r]
    assert train == list(range(1, a.steps + 1))
    assert [r["step"] for r in evals] == sorted({0, a.steps, *range(0, a.steps + 1, a.eval_every)})
    assert all(0 <= r["eval/train_pass@1"] <= 1 and 0 <= r["eval/heldout_pass@1"] <= 1 for r in evals)
    flops = [r["flops"] for r in rows]
    assert flops == sorted(flops)
    with open(os.path.join(run_dir, "final_eval.json")) as f:
        final = json.load(f)
    assert final["n"] == a.final_eval_samples and len(final["heldout_counts"]) == a.n_heldout
    assert all(0 <= c <= a.final_eval_samples for c in final["train_counts"] + final["heldout_counts"])


def test_fuzzed_flags_are_refused_up_front_or_run(teacher_traces, tmp_path, monkeypatch):
    loads, outcomes, cache = [], Counter(), str(tmp_path / "cache")  # its toy base models: 1-3 pretraining steps each
    load_model = models.load_model
    monkeypatch.setattr(models, "load_model", lambda *a, **k: loads.append(a[0]) or load_model(*a, **k))
    threads = torch.get_num_threads()

    @PROFILES[PROFILE]
    @given(st.data())
    def draw_and_run(data):
        name = data.draw(st.sampled_from(list(SCRIPTS)), label="script")
        strategies = {**FLAGS, **OWN_FLAGS[name]} if name != "reproduce" else OWN_FLAGS[name]
        picked = data.draw(st.lists(st.sampled_from(sorted(strategies)), min_size=1, max_size=4, unique=True), label="flags")
        flags = {k: data.draw(strategies[k], label=k) for k in picked}
        module, work = SCRIPTS[name], tempfile.mkdtemp()
        try:
            run_dir = os.path.join(work, "run")
            if name == "reproduce":
                base = dict(out=os.path.join(work, "repro"), dry_run=True)
            else:
                base = {k: v for k, v in dict(TINY, cache_dir=cache, run_dir=run_dir).items() if k in module.Args.__dataclass_fields__}
            args = argv(base) + argv(flags)
            if name != "reproduce":
                with contextlib.redirect_stderr(io.StringIO()):
                    a = tyro.cli(module.Args, args=args)
                args += argv(dict(traces=traces_for(a, work) or teacher_traces))
            loads.clear()
            code, err = run_cli(module, args)
            lines = err.strip().splitlines()
            if code == 2:
                assert len(lines) == 1 and lines[0].startswith("error: "), (args, err)
                assert not loads and not os.path.exists(run_dir), f"refused after loading a model or writing: {args}: {err}"
                outcomes[name, "refused"] += 1
            else:
                assert code == 0, (args, code, err)
                if name != "reproduce":
                    check_run(run_dir, tyro.cli(module.Args, args=args))
                outcomes[name, "ran"] += 1
        finally:
            shutil.rmtree(work, ignore_errors=True)
            torch.set_num_threads(threads)

    draw_and_run()
    print(f"\nfuzzed flags ({PROFILE} profile): {sum(outcomes.values())} draws; " +
          ", ".join(f"{s}: {outcomes[s, 'ran']} ran, {outcomes[s, 'refused']} refused" for s in SCRIPTS))
    for s in SCRIPTS:  # both sides of the property were exercised for every script
        assert outcomes[s, "ran"] >= 1 and outcomes[s, "refused"] >= 1, outcomes
