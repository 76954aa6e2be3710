"""Bad flags stop at start-up with one line (exit 2), before any model is loaded; --final-eval-samples is the
final evaluation's size."""

import ast
import json
import os
import re
import subprocess
import sys
import time

import pytest
import torch

import models
import offpolicy_rl
import plot
import prefixrl
import reproduce
import sft_rl
import standard_rl
import tasks
import utils
from test_real_lm import FakeChatTokenizer
from test_smoke import ROOT, TINY

SCRIPTS = {"prefixrl": prefixrl, "standard_rl": standard_rl, "sft_rl": sft_rl, "offpolicy_rl": offpolicy_rl}


@pytest.fixture
def no_model_loading(monkeypatch):
    def load_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the flags were checked")

    monkeypatch.setattr(models, "load_model", load_model)


def refused(script, tmp_path, message, **flags):
    run_dir = str(tmp_path / "run")
    with pytest.raises(utils.InputError, match=message) as e:
        SCRIPTS[script].main(SCRIPTS[script].Args(**{"run_dir": run_dir, "cache_dir": str(tmp_path / "cache"), **TINY, **flags}))
    assert "\n" not in str(e.value) and not os.path.exists(run_dir)
    return str(e.value)


@pytest.mark.parametrize("script,flag,value,allowed", [
    ("prefixrl", "cut_min", -0.1, r"in \[0, 1\]"),
    ("prefixrl", "cut_max", 1.5, r"in \[0, 1\]"),
    ("prefixrl", "prefixed_fraction", 1.5, r"in \[0, 1\]"),
    ("prefixrl", "prefixed_fraction", -0.25, r"in \[0, 1\]"),
    ("sft_rl", "sft_val_fraction", 1.0, r"in \[0, 1\)"),
    ("sft_rl", "sft_val_fraction", -0.1, r"in \[0, 1\)"),
])
def test_fraction_out_of_range_is_refused_before_loading(script, flag, value, allowed, tmp_path, no_model_loading):
    refused(script, tmp_path, f"--{flag.replace('_', '-')} must be {allowed}, got {value}", **{flag: value})


@pytest.mark.parametrize("script,flag,least", [
    ("standard_rl", "eval_every", 1), ("prefixrl", "eval_every", 1), ("sft_rl", "eval_every", 1), ("offpolicy_rl", "eval_every", 1),
    ("standard_rl", "eval_samples", 1), ("offpolicy_rl", "final_eval_samples", 1), ("standard_rl", "prompts_per_step", 1),
    ("prefixrl", "cuts_per_trace", 1), ("prefixrl", "n_train", 1), ("standard_rl", "n_heldout", 1), ("sft_rl", "trace_budget", 1),
    ("offpolicy_rl", "save_every", 1), ("standard_rl", "steps", 1),
    ("sft_rl", "sft_batch", 1), ("standard_rl", "rollouts", 2),
])
def test_zero_count_is_refused_before_loading(script, flag, least, tmp_path, no_model_loading):
    refused(script, tmp_path, f"--{flag.replace('_', '-')} must be >= {least}", **{flag: 0})


@pytest.mark.parametrize("flags,message", [
    (dict(prompts_per_step=4, prefixed_fraction=0.1), r"leaves no prefixed prompt per step \(round\(4 x 0.1\) = 0\)"),
    (dict(cut_min=0.0, cut_max=0.0), "--cut-max must be > 0"),
    (dict(cut_min=0.9, cut_max=0.5), "cut range must satisfy"),
    (dict(temperature=0.0), "--temperature must be >= 0.01 and finite"),
    (dict(eval_temperature=float("nan")), "--eval-temperature must be >= 0.01 and finite"),
    (dict(lr=float("inf")), "--lr must be > 0 and finite"),
    (dict(grad_clip=-1.0), "--grad-clip must be > 0"),
    (dict(seed=2**32), r"--seed must be in 0..2\*\*32-1"),
    (dict(task_seed=-1), r"--task-seed must be in 0..2\*\*32-1"),
    (dict(threads=utils.MAX_THREADS + 1), "--threads must be in 1..1024"),
    (dict(max_new_tokens=-1), "--max-new-tokens must be >= 0"),
    (dict(level=7), r"--level must be in 1..6"),
    (dict(hard_min=5, hard_max=3), r"need 0 <= --hard-min <= --hard-max <= 11"),
    (dict(toy_length=41), r"--toy-length must be in 2..40"),
    (dict(device="banana"), "--device must be cpu"),
    (dict(loss_agg="mean"), "--loss-agg must be one of token, sequence"),
    (dict(task="chess"), "--task must be 'toy', 'arith'"),
    (dict(task="missing.jsonl"), "--task must be 'toy', 'arith' or an existing .jsonl file"),
    (dict(traces="missing.json"), "--traces must be an existing file"),
    (dict(model="toy", task="arith"), "--model toy is a toy base model, with no chat template"),
    (dict(model="smollm2-135m"), "--task toy is written in the toy vocabulary"),
    (dict(model="toy-gpt2", max_new_tokens=200), "--model toy-gpt2 has 128 positions"),
])
def test_prefixrl_flag_and_combination_refused_before_loading(flags, message, tmp_path, no_model_loading):
    refused("prefixrl", tmp_path, message, **flags)


@pytest.mark.parametrize("script,flags,message", [
    ("offpolicy_rl", dict(shaping=0.1, clip=2.0), "--clip applies to importance ratios, which --shaping replaces"),
    ("offpolicy_rl", dict(shaping=0.1, ratio="sequence"), "--ratio applies to importance ratios"),
    ("sft_rl", dict(sft_lr=0.0), "--sft-lr must be > 0"),
    ("standard_rl", dict(cache_dir=__file__), "--cache-dir must be a directory"),
])
def test_script_flag_refused_before_loading(script, flags, message, tmp_path, no_model_loading):
    refused(script, tmp_path, message, **flags)


# INPUT FILES: read at start-up too, each refusal naming the fix for that file
def first_trace(data, **change):
    return json.dumps(dict(data, traces=[dict(data["traces"][0], **change)]))


TRACES_DAMAGE = {
    "not JSON": lambda data: "not json {",
    "no format": lambda data: json.dumps([data]),
    "a bad trace": lambda data: first_trace(data, attempts=0),
    "an unknown field": lambda data: first_trace(data, colour="red"),
}
NOT_TRACES, GIVE = r"is not a prefixrl traces file", r"; give a traces-\*.json of a --cache-dir"


@pytest.mark.parametrize("script,damage,message", [
    ("prefixrl", "not JSON", r"is not JSON \(JSONDecodeError at line 1 column 1\)" + GIVE),
    ("standard_rl", "no format", NOT_TRACES + r' \(no "format": "prefixrl-traces-v2"\)' + GIVE),
    ("sft_rl", "a bad trace", NOT_TRACES + r" \(trace 0's attempts must be an integer >= 1\)"),
    ("offpolicy_rl", "an unknown field", NOT_TRACES + r" \(trace 0 has an unknown field colour\)"),
])
def test_bad_traces_file_is_refused_before_loading(script, damage, message, teacher_traces,
                                                   tmp_path, no_model_loading):
    path = tmp_path / "traces.json"
    path.write_text(TRACES_DAMAGE[damage](json.load(open(teacher_traces))))
    err = refused(script, tmp_path, message, traces=str(path))
    assert "delete" not in err  # the user's file: never "delete it"


def test_traces_for_other_problems_are_refused_before_loading(teacher_traces, tmp_path,
                                                              no_model_loading):
    message = (r"holds traces for other problems: none of its 4 problem ids \(such as 'toy:.*'\) "
               r"is one of the 4 training problems here \(such as 'toy:.*'\); give traces "
               r"collected for this task, with the same task flags")
    refused("prefixrl", tmp_path, message, traces=teacher_traces, task_seed=5)  # the teacher's: 0


def test_a_bad_dataset_is_refused_before_loading(tmp_path, no_model_loading):
    path = tmp_path / "data.jsonl"
    path.write_text('{"problem": "a", "answer": "1"}\n{"problem": "b", "answer": 2\n')
    message = r"data.jsonl:2: not valid JSON"
    refused("prefixrl", tmp_path, message, model="smollm2-135m", dataset=str(path))


TOKENIZER = r"tokenizer files \(tokenizer.json, or tokenizer.model, or vocab.json \+ merges.txt\)"


@pytest.mark.parametrize("files,message", [
    (["config.json"], f"lacks {TOKENIZER} and weights"),
    (["config.json", "vocab.json", "merges.txt"], r"lacks weights \(model.safetensors, pytorch_"),
    (["config.json", "model.safetensors", "merges.txt"], f"lacks {TOKENIZER}; copy"),
    (["config.json", "tokenizer.json", "model.safetensors.index.json", "model-1.safetensors"],
     r"lacks 1 of the 2 weight shards its model.safetensors.index.json names \(model-2.safe"),
])
def test_model_dir_missing_files_are_named_before_loading(files, message, tmp_path,
                                                          no_model_loading):
    model = tmp_path / "model"
    model.mkdir()
    for name in files:
        index = {"weight_map": {"a": "model-1.safetensors", "b": "model-2.safetensors"}}
        (model / name).write_text(json.dumps(index if name.endswith("index.json") else {}))
    message = f"model directory '{model}' has config.json but {message}"
    err = refused("standard_rl", tmp_path, message, model=str(model), task="arith")
    assert err.endswith("copy them from where the model came from (save_pretrained writes them: "
                        "model.save_pretrained(DIR), tokenizer.save_pretrained(DIR))")
    for name in ("tokenizer.json", "model-2.safetensors", "model.safetensors"):
        (model / name).write_text("{}")
    models.check_model_path(str(model))  # every file there: left to the loader


def timed(cmd):
    start = time.time()
    out = subprocess.run([sys.executable, *cmd], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)  # pretraining takes minutes
    return out, time.time() - start


def test_a_bad_traces_file_is_refused_in_seconds_on_a_cold_cache(tmp_path):
    """From the command line, with an empty --cache-dir and the default flags: refused before the
    toy base model's pretraining (minutes) could start, in < 5 s, or at most 2 s more than
    importing the script takes when a busy machine makes that slow."""
    bad, cache, run_dir = tmp_path / "traces.json", tmp_path / "cache", tmp_path / "run"
    bad.write_text("not json")
    for script in SCRIPTS:
        flags = ["--traces", str(bad), "--cache-dir", str(cache), "--run-dir", str(run_dir)]
        out, took = timed([f"{script}.py", *flags])
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and len(lines) == 1, (script, out.stderr)
        assert f"traces file '{bad}' is not JSON" in lines[0]
        imported = timed(["-c", f"import {script}"])[1] if took >= 5 else 0
        assert took < max(5, imported + 2), f"{script}.py: {took:.1f}s (import: {imported:.1f}s)"
    assert not cache.exists() and not run_dir.exists()


@pytest.mark.parametrize("flags,advice", [
    (dict(), "lower --hard-min and --hard-max"),
    (dict(task="arith"), "lower --level"),
    (dict(dataset="mine.jsonl"), "give easier problems than those of mine.jsonl"),
    (dict(task="mine.jsonl"), "give easier problems than those of mine.jsonl"),
])
def test_no_trace_found_advises_what_this_task_can_change(flags, advice):
    err = utils.no_trace_found(prefixrl.Args(trace_budget=7, **flags), 4)
    assert str(err) == ("no correct trace found for any of 4 problems within --trace-budget 7 "
                        f"samples each; raise --trace-budget, or {advice}")


def test_train_ids_are_those_of_the_task_loaded_later(tmp_path):
    """tasks.train_ids, with no tokenizer, gives the ids of tasks.load_task's training problems."""
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps({"problem": f"{i}+1?", "answer": i}) for i in range(6)))
    jsonl = dict(dataset=str(path), n_train=3, task_seed=2)
    for flags in (dict(TINY), dict(task="arith", level=2, n_train=5), jsonl):
        args = prefixrl.Args(**flags)
        loaded = tasks.load_task(args, FakeChatTokenizer())
        assert tasks.train_ids(args) == [p.id for p in loaded.train]


def test_toy_gpt2_context_must_fit_its_positions():
    """prompt (L + 3) + longest prefix (round(0.8 (L + 11)): a value per step, an entry per hard step) + response
    (L + 11 + 7): 128 positions at L = 35, 131 at 36."""
    models.check_args(prefixrl.Args(model="toy-gpt2", toy_length=35))
    with pytest.raises(utils.InputError, match="take 131 at --toy-length 36"):
        models.check_args(prefixrl.Args(model="toy-gpt2", toy_length=36))


def test_reproduce_and_plot_flags(tmp_path):
    with pytest.raises(utils.InputError, match=r"method rl_n8 \(standard_rl.py --steps 800 --eval-every 40 --eval-every 0\): --eval-every must be >= 1"):
        reproduce.main(reproduce.Args(out=str(tmp_path / "r"), methods=("rl_n8",), extra="--eval-every 0", dry_run=True))
    with pytest.raises(utils.InputError, match="does not suit standard_rl.py .method rl_n8.: Unrecognized options: --cut-min"):
        reproduce.main(reproduce.Args(out=str(tmp_path / "r"), methods=("prefixrl", "rl_n8"), extra="--cut-min 0.5", dry_run=True))
    with pytest.raises(utils.InputError, match="--extra must not give --run-dir"):
        reproduce.main(reproduce.Args(out=str(tmp_path / "r"), extra="--run-dir x", dry_run=True))
    with pytest.raises(utils.InputError, match=r"method prefixrl_other_family .*: --model toy-gpt2 has 128 positions, but .* take 129"):
        reproduce.main(reproduce.Args(out=str(tmp_path / "r"), extra="--max-new-tokens 114", dry_run=True))  # its traces: 15 + 114 tokens
    with pytest.raises(utils.InputError, match="--seeds must be >= 1, got 0"):
        reproduce.main(reproduce.Args(out=str(tmp_path / "r"), seeds=0, dry_run=True))
    assert not os.path.exists(tmp_path / "r")
    with pytest.raises(utils.InputError, match="--smooth must be >= 1, got 0"):
        plot.main(plot.Args(runs=(str(tmp_path),), out=str(tmp_path / "figures"), smooth=0))
    with pytest.raises(utils.InputError, match="RUNS must name run dirs"):
        plot.main(plot.Args(runs=(str(tmp_path / "nothing*"),), out=str(tmp_path / "figures")))
    assert not os.path.exists(tmp_path / "figures")


ENTRY_POINTS = [  # every entry point from the command line, with an empty cache: one line, exit 2, nothing pretrained
    (["prefixrl.py", "--prefixed-fraction", "1.5"], "--prefixed-fraction must be in [0, 1], got 1.5"),
    (["standard_rl.py", "--eval-every", "0"], "--eval-every must be >= 1, got 0"),
    (["sft_rl.py", "--sft-val-fraction", "1.5"], "--sft-val-fraction must be in [0, 1), got 1.5"),
    (["offpolicy_rl.py", "--final-eval-samples", "0"], "--final-eval-samples must be >= 1, got 0"),
    (["reproduce.py", "--dry-run", "--extra=--cut-min 2"], "--cut-min must be in [0, 1], got 2.0"),
    (["plot.py", ".", "--smooth", "0"], "--smooth must be >= 1, got 0"),
    (["bench/calibrate_arith.py", "--budget", "0"], "--budget must be >= 1, got 0"),
    (["bench/calibrate_toy.py", "--n-heldout", "0"], "--n-heldout must be >= 1, got 0"),
    (["bench/calibrate_toy.py", "--token-prior"], "--token-prior needs --traces FILE"),
    (["bench/one_success.py", "--lr", "0"], "--lr must be > 0 and finite, got 0.0"),
    (["bench/takeoff.py", "runs", "--window", "0"], "--window must be >= 1, got 0"),
    (["bench/is_weights.py", "no-such-run"], "'no-such-run/metrics.jsonl' does not exist"),
    (["bench/prefix_success.py", "--fractions", "0.2", "1.4"], "--fractions must be in [0, 1], got (0.2, 1.4)"),
    (["bench/sampler_speed.py", "--rows", "0"], "--rows must be >= 1, got 0"),
    (["bench/step_memory.py", "standard_rl.py", "--steps", "0"], "--steps must be >= 1, got 0"),
    (["bench/step_memory.py", "train.py"], "give one of prefixrl.py, standard_rl.py, sft_rl.py, offpolicy_rl.py"),
]


def test_every_entry_point_refuses_a_bad_flag_with_one_line(tmp_path):
    cache = str(tmp_path / "cache")
    procs = [subprocess.Popen([sys.executable, *cmd, *(["--cache-dir", cache] if cmd[0].endswith("_rl.py") or "toy" in cmd[0] else [])],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for cmd, _ in ENTRY_POINTS]
    for (cmd, message), proc in zip(ENTRY_POINTS, procs):  # all at once: most of each is importing torch
        err = proc.communicate(timeout=300)[1]
        lines = err.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (cmd, proc.returncode, err)
    assert not os.path.exists(cache)


HELP = ["prefixrl.py", "standard_rl.py", "sft_rl.py", "offpolicy_rl.py", "reproduce.py", "plot.py"]


def test_help_names_the_script_and_one_default_per_flag():
    """--help: under the usage line, the first line of the script's docstring; each flag shows at
    most one default, its docstring's own where it states one (--run-dir's, not tyro's None too)."""
    env = dict(os.environ, COLUMNS="1000")  # no line wrapped
    procs = [subprocess.Popen([sys.executable, script, "--help"], cwd=ROOT, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for script in HELP]
    for script, proc in zip(HELP, procs):  # all at once: most of each is importing torch
        out, err = proc.communicate(timeout=300)
        with open(os.path.join(ROOT, script)) as f:
            description = ast.get_docstring(ast.parse(f.read())).splitlines()[0]
        lines = out.splitlines()
        assert proc.returncode == 0 and lines[0].startswith(f"usage: {script} "), (script, err)
        assert lines[2] == description, (script, out)
        flags = re.split(r"\n│ (?=-)", out)[1:]  # a block per flag: the flag, then its help
        assert len(flags) >= 5 and all(block.count("default:") <= 1 for block in flags), out
        if script.endswith("_rl.py"):
            run_dir = next(block for block in flags if block.startswith("--run-dir"))
            assert "(default: runs/<script>__<seed>__<time>)" in run_dir, run_dir
            assert "None)" not in run_dir, run_dir


@pytest.mark.parametrize("script,n", [("prefixrl", 3), ("standard_rl", None), ("sft_rl", 5), ("offpolicy_rl", 1)])
def test_final_eval_draws_the_samples_asked_for(script, n, toy_cache, teacher_traces, tmp_path, monkeypatch):
    """final_eval.json: n samples of each of the 4 training and 4 held-out problems (64 unless --final-eval-samples)."""
    drawn, sample = [], utils.sample
    monkeypatch.setattr(utils, "sample", lambda model, prompts, *a, **k: drawn.append(len(prompts)) or sample(model, prompts, *a, **k))
    run_dir, module = str(tmp_path / "run"), SCRIPTS[script]
    flags = dict(TINY, steps=1, **({"final_eval_samples": n} if n else {}), **({"sft_steps": 2} if script == "sft_rl" else {}))
    module.main(module.Args(run_dir=run_dir, cache_dir=toy_cache, traces=teacher_traces, **flags))
    n = n or 64
    with open(os.path.join(run_dir, "final_eval.json")) as f:
        final = json.load(f)
    assert final["n"] == n and len(final["train_counts"]) == 4 and len(final["heldout_counts"]) == 4
    assert all(0 <= c <= n for c in final["train_counts"] + final["heldout_counts"])
    assert drawn[-2:] == [4 * n, 4 * n]  # the final evaluation's two draws, the run's last


def test_prefixes_cut_to_no_token_are_refused(toy_cache, teacher_traces, tmp_path):
    """--cut-max 0.01 of 12 values rounds every cut to 0 tokens: empty prefixes are original problems, so
    PrefixRL would be standard RL under another name; refused before any step."""
    run_dir = str(tmp_path / "run")
    with pytest.raises(utils.InputError, match="every cut is empty .* raise --cut-max"):
        prefixrl.main(prefixrl.Args(run_dir=run_dir, cache_dir=toy_cache, traces=teacher_traces, cut_min=0.0, cut_max=0.01, **{**TINY, "steps": 1}))
    assert not os.path.exists(os.path.join(run_dir, "metrics.jsonl"))


@pytest.mark.parametrize("script", [prefixrl, standard_rl, sft_rl, offpolicy_rl])
def test_optimizer_sgd_is_what_rl_steps_with(script, toy_cache, teacher_traces, tmp_path):
    """On the toy task RL's optimizer is by default SGD with momentum 0.9 at lr 0.05 (its momentum
    buffers are what the checkpoint holds, args.json records both); sft_rl.py's SFT stays AdamW
    (exp_avg); --optimizer adamw gives AdamW at 1e-4."""
    extra = {"sft_steps": 2} if script is sft_rl else {}
    cases = ((None, "sgd", 0.05, "momentum_buffer"), ("adamw", "adamw", 1e-4, "exp_avg"))
    for given, name, lr, state_key in cases[: 2 if script is standard_rl else 1]:
        run_dir = str(tmp_path / name)
        script.main(script.Args(run_dir=run_dir, cache_dir=toy_cache, traces=teacher_traces, **{**TINY, "steps": 1},
                                **extra, optimizer=given))
        state = torch.load(os.path.join(run_dir, utils.CHECKPOINT), weights_only=False)["state"]
        assert all(state_key in s for s in state["optimizer"]["state"].values()) and state["optimizer"]["state"]
        assert state["optimizer"]["param_groups"][0]["lr"] == lr
        with open(os.path.join(run_dir, "args.json")) as f:
            recorded = json.load(f)
        assert (recorded["optimizer"], recorded["lr"], recorded["grad_clip"]) == (name, lr, 0.25 if name == "sgd" else 1.0)
        if script is sft_rl:
            assert state["sft_optimizer"]["state"] and all("exp_avg" in s for s in state["sft_optimizer"]["state"].values())
    opt = utils.optimizer(torch.nn.Linear(2, 2), "sgd", 0.05)
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.9 and opt.defaults["lr"] == 0.05


def test_the_rl_optimizer_defaults_follow_the_task():
    """--optimizer / --lr / --grad-clip left out: SGD at 0.05 clipped at 0.25 on the toy task, AdamW at 1e-4
    clipped at 1.0 on any other (a real LM's scale is not the toy's); what is given is kept, and a given
    optimizer without --lr or --grad-clip gets its own."""
    sgd, adamw = ("sgd", 0.05, 0.25), ("adamw", 1e-4, 1.0)
    for flags, want in ((dict(), sgd), (dict(task="arith", model="smollm2-135m"), adamw),
                        (dict(dataset="problems.jsonl", model="smollm2-135m"), adamw),
                        (dict(optimizer="adamw"), adamw), (dict(task="arith", optimizer="sgd"), sgd),
                        (dict(optimizer="sgd", lr=0.01, grad_clip=2.0), ("sgd", 0.01, 2.0)),
                        (dict(lr=3e-5, task="arith"), ("adamw", 3e-5, 1.0)), (dict(grad_clip=0.5), ("sgd", 0.05, 0.5))):
        for script in (prefixrl, standard_rl, sft_rl, offpolicy_rl):
            args = script.Args(**flags)
            models.rl_optimizer_defaults(args)
            assert (args.optimizer, args.lr, args.grad_clip) == want, (script.__name__, flags)
