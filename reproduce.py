"""Reproduce the paper's figures on the default toy with one command: every method x seed, then plot.py.

    python reproduce.py --dry-run          # print the commands
    python reproduce.py                    # 6 methods x 3 seeds, os.cpu_count() runs at a time
    python reproduce.py --seeds 1 --methods prefixrl rl_n8 --extra="--task-seed 7"   # other problems
    python reproduce.py --first-seed 4 --out repro456                                  # seeds 4-6

One run goes first, alone, with --jobs torch threads: it collects the
traces, cached in cache/ and reused by every other run (same model, problems, budget and trace
seed). The others then run --jobs at a time with one torch thread each. When prefixrl_other_family is
among the methods, the other family's base model (models.py: "toy-gpt2") samples its own traces into
OUT/traces/toy-gpt2.json, and the prefixrl_other_family runs get that file through --traces (paper
Fig. 10). For the default problems that collection ships in toy_models/toy-gpt2/traces.json (the
bytes `OMP_NUM_THREADS=1 python reproduce.py --collect-traces-to FILE` writes, 5-7 minutes; into
toy_models/ it also records the file's checksum: remove the old file first), so it is copied; for other
problems it is the first job after the first run, and those runs wait for it. Run dirs go to
OUT/runs/<method>_s<seed>, each run's output to OUT/logs/, figures and results.md to OUT/figures. A run dir that already holds a finished
run is kept and not run again, so an interrupted reproduction goes on where it stopped; an unfinished
one continues from its checkpoint.pt when it has one (--resume), else it is moved aside to
<dir>.partial-<time> (never deleted) and run again.
"""

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Literal, Optional, Tuple

import tyro

ROOT = os.path.dirname(os.path.abspath(__file__))
METHODS = {
    "prefixrl": ["prefixrl.py", "--steps", "500"],
    "rl_n8": ["standard_rl.py", "--steps", "800", "--eval-every", "40"],
    "rl_n64": ["standard_rl.py", "--rollouts", "64", "--prompts-per-step", "2", "--steps", "800", "--eval-every", "40"],  # 128 rollouts per step
    "sft_rl": ["sft_rl.py"],
    "offpolicy_rl": ["offpolicy_rl.py"],
    "prefixrl_prefixed_only": ["prefixrl.py", "--steps", "500", "--prefixed-only"],
    "prefixrl_other_family": ["prefixrl.py", "--steps", "500", "--traces", "{other_traces}"],
}
OTHER_FAMILY = "toy-gpt2"  # the base model whose traces prefixrl_other_family uses
# PrefixRL and standard RL end at about the same FLOPs (rejection sampling charged to PrefixRL), so
# their final values compare at equal compute, and standard RL has no less: on the default toy
# PrefixRL's 500 steps end at 2.82e13 (1.05e13 of traces, 3.56e10 per step), standard RL's 800 at
# 2.85e13. SFT+RL and off-policy RL keep the scripts' 400 steps (2.50e13 and 2.47e13).
POLL_S = 1.0  # how often running jobs are checked
MethodName = Literal["prefixrl", "rl_n8", "rl_n64", "sft_rl", "offpolicy_rl", "prefixrl_prefixed_only", "prefixrl_other_family"]


@dataclass
class Args:
    out: str = "repro"
    """output folder: OUT/runs (run dirs), OUT/logs (each run's output), OUT/figures (plot.py)"""
    seeds: int = 3
    """how many seeds of every method: FIRST_SEED .. FIRST_SEED + SEEDS - 1"""
    first_seed: int = 1
    """the first seed (--first-seed 4 --seeds 3: seeds 4-6, other seeds than the committed figures')"""
    methods: Tuple[MethodName, ...] = tuple(METHODS)
    """methods to run (prefixrl_prefixed_only: the back-generalization runs of paper §4 / Fig. 3)"""
    jobs: int = os.cpu_count() or 1
    """runs at a time (each with --threads 1)"""
    steps: Optional[int] = None
    """passed to every run as --steps (default: each method's own in METHODS, else its script's)"""
    extra: str = ""
    """more flags for every run, one string; write it --extra="--hard-min 11 --hard-max 11" (with '=')"""
    dry_run: bool = False
    """print the commands and exit"""
    python: str = sys.executable
    """python interpreter for the runs"""
    collect_traces_to: Optional[str] = None
    """(the prefixrl_other_family job) collect traces with --collect-model, for the problems that
    --extra gives, into this file, and exit"""
    collect_model: Literal["toy-gpt2", "toy"] = OTHER_FAMILY
    """the base model whose traces --collect-traces-to collects (toy: the collection every run's
    rejection sampling makes, shipped in toy_models/toy/traces.json)"""


@dataclass
class Job:
    name: str
    cmd: list
    run_dir: Optional[str]
    log: str
    threads: int = 1
    needs: Optional[str] = None
    """the name of a job that must finish first (the other family's traces)"""

    def set_threads(self, n):
        self.threads = n
        if "--threads" in self.cmd:
            self.cmd[self.cmd.index("--threads") + 1] = str(n)


def out_path(out):
    """OUT relative to the repo root (where the runs start) when it is inside it, else absolute."""
    rel = os.path.relpath(os.path.abspath(out), ROOT)
    return os.path.abspath(out) if rel.startswith("..") else rel


def other_traces_path(out):
    return os.path.join(out, "traces", f"{OTHER_FAMILY}.json")


SHIPPED_OTHER_TRACES = os.path.join("toy_models", OTHER_FAMILY, "traces.json")
"""the other family's traces for the default problems, as collect_other_traces writes them (tests/test_toy_models.py)"""


def shipped_other_traces(extra):
    """SHIPPED_OTHER_TRACES if it is the collection that collect_other_traces(path, extra) would make (the
    same model, problems, budget and seed: the file's key), else None."""
    import models
    import prefixrl
    import tasks
    import utils

    run = tyro.cli(prefixrl.Args, args=shlex.split(extra))
    steps = models.toy_pretrain_steps(OTHER_FAMILY, run.toy_pretrain_steps)
    model_dir = models.shipped_toy_dir(OTHER_FAMILY, steps, 0, run.toy_length) if run.task == "toy" and not run.dataset else None
    path = model_dir and models.shipped_traces(model_id := models.toy_model_id(OTHER_FAMILY, model_dir))
    if not path:
        return None
    task = tasks.load_task(run, None)  # the toy needs no tokenizer
    key = utils.traces_key(model_id, task, task.train, run.trace_budget, 1.0, run.trace_seed)
    return path if utils.traces_file_key(path) == key else None  # unreadable (None): collected, as for other problems


def other_traces_job(args):
    """Traces from the other family's base model, collected once for every prefixrl_other_family run."""
    out = out_path(args.out)
    cmd = ["python", "reproduce.py", "--collect-traces-to", other_traces_path(out), f"--extra={args.extra}"]
    return Job("traces_" + OTHER_FAMILY, cmd, None, os.path.join(out, "logs", f"traces_{OTHER_FAMILY}.log"))


def collect_other_traces(path, extra, name=OTHER_FAMILY):
    """The task, budget and trace seed are those every run gets from --extra; the model is `name`.
    utils.collect_traces caches them in `path` (keyed by model, problems, budget, seed)."""
    import models
    import prefixrl
    import tasks
    import utils

    run = tyro.cli(prefixrl.Args, args=shlex.split(extra))
    models.check_args(collection_args(run, name))
    utils.seed_everything(0, int(os.environ.get("OMP_NUM_THREADS", "1")))
    model, tokenizer, model_id = models.load_model(name, run.cache_dir, "cpu", run.toy_pretrain_steps, toy_length=run.toy_length)
    task = tasks.load_task(run, tokenizer)
    traces, _ = utils.collect_traces(model, task, task.train, run.trace_budget, 1.0, run.trace_seed, path, model_id=model_id)
    print(f"{name}: traces for {len(traces)}/{len(task.train)} problems -> {path} (sha256 {models.record_checksum(path)})")


def collection_args(run, name=OTHER_FAMILY):
    """A trace collection as flags that utils.check_args knows: the runs' problems and budget, sampled by
    `name`'s model from the prompts alone (standard_rl.py's flags: no prefix)."""
    import standard_rl

    shared = {k: v for k, v in vars(run).items() if k in standard_rl.Args.__dataclass_fields__ and k != "model"}
    return standard_rl.Args(**shared, model=name)


def check_runs(args):
    """Every run's flags (its method's, --steps and --extra), refused here as its script would refuse
    them, so that a bad --extra stops the reproduction with one line before any run starts."""
    import contextlib
    import importlib
    import io

    import models
    import utils

    try:
        extra = shlex.split(args.extra)
    except ValueError as e:
        raise utils.InputError(f"--extra must be flags as a shell splits them ({e}), got {args.extra!r}") from None
    for flag in ("--seed", "--threads", "--run-dir", "--resume"):
        if any(f == flag or f.startswith(flag + "=") for f in extra):
            raise utils.InputError(f"--extra must not give {flag}: reproduce.py sets it for each run")
    for method in args.methods:
        script, *flags = METHODS[method]
        flags = [f for f in flags if f not in ("--traces", "{other_traces}")]  # that file is made by the reproduction
        flags += (["--steps", str(args.steps)] if args.steps is not None else []) + extra
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                run = tyro.cli(importlib.import_module(script[:-3]).Args, args=flags)
        except SystemExit:  # tyro printed why in a box: the lines between its title and its rule
            body = [ln.strip("│╭╮╰╯─ ") for ln in err.getvalue().splitlines()[1:]]
            why = " ".join(body[: body.index("")] if "" in body else body) or f"see python {script} --help"
            raise utils.InputError(f"--extra {args.extra!r} does not suit {script} (method {method}): {why}") from None
        try:
            models.check_args(run)
            if method == "prefixrl_other_family":
                models.check_args(collection_args(run))
        except utils.InputError as e:
            raise utils.InputError(f"method {method} ({shlex.join([script, *flags])}): {e}") from None


def make_jobs(args):
    out = out_path(args.out)
    jobs = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for method in args.methods:
            name = f"{method}_s{seed}"
            run_dir = os.path.join(out, "runs", name)
            script, *flags = [f.format(other_traces=other_traces_path(out)) for f in METHODS[method]]
            cmd = ["python", script, "--seed", str(seed), "--threads", "1", "--run-dir", run_dir, *flags]
            if args.steps is not None:
                cmd += ["--steps", str(args.steps)]
            jobs.append(Job(name, cmd + shlex.split(args.extra), run_dir, os.path.join(out, "logs", f"{name}.log")))
    return jobs


def finished(run_dir):
    """True when the run logged its last eval row (step == its --steps)."""
    try:
        with open(os.path.join(ROOT, run_dir, "args.json")) as f:
            steps = json.load(f)["steps"]
        with open(os.path.join(ROOT, run_dir, "metrics.jsonl")) as f:
            for line in f:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if row.get("step") == steps and "eval/train_pass@1" in row:
                    return True
    except (OSError, ValueError, KeyError):
        pass
    return False


def summary(run_dir):
    try:
        with open(os.path.join(ROOT, run_dir, "metrics.jsonl")) as f:
            evals = [r for r in map(json.loads, f) if "eval/train_pass@1" in r]
        r = evals[-1]
        return f"train pass@1 {r['eval/train_pass@1']:.3f}, held-out pass@1 {r['eval/heldout_pass@1']:.3f}"
    except (OSError, ValueError, IndexError, KeyError, TypeError):
        return "no eval row"


def start(job, python):
    os.makedirs(os.path.dirname(os.path.join(ROOT, job.log)), exist_ok=True)
    log = open(os.path.join(ROOT, job.log), "w")
    env = dict(os.environ, OMP_NUM_THREADS=str(job.threads), MKL_NUM_THREADS=str(job.threads))
    proc = subprocess.Popen([python, *job.cmd[1:]], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    log.close()
    return proc


def run_pool(jobs, width, python, counter, done=()):
    """Run `jobs`, `width` at a time, each after the job it needs (or one in `done`, finished before);
    print each as it ends. Returns the names of the failed ones."""
    pending, running, failed, done = list(jobs), [], [], set(done)
    try:
        while pending or running:
            for job in [j for j in pending if j.needs in failed]:
                pending.remove(job)
                failed.append(job.name)
                print(f"{job.name} not run: {job.needs} failed", flush=True)
            while len(running) < width and (ready := [j for j in pending if j.needs is None or j.needs in done]):
                job = ready[0]
                pending.remove(job)
                running.append((job, start(job, python), time.time()))
                print(f"started {job.name}", flush=True)
            time.sleep(POLL_S)
            for item in list(running):
                job, proc, t0 = item
                if proc.poll() is None:
                    continue
                running.remove(item)
                counter[0] += 1
                head, mins = f"[{counter[0]}/{counter[1]}] {job.name}", (time.time() - t0) / 60
                if proc.returncode == 0:
                    done.add(job.name)
                    print(f"{head} done in {mins:.1f} min: {summary(job.run_dir) if job.run_dir else 'traces collected'}", flush=True)
                else:
                    failed.append(job.name)
                    print(f"{head} FAILED (exit {proc.returncode}) after {mins:.1f} min; see {job.log}", flush=True)
    except KeyboardInterrupt:
        for _, proc, _ in running:  # only the processes started here
            proc.terminate()
        print("interrupted: run reproduce.py again to go on (finished runs are kept)")
        raise
    return failed


def main(args: Args):
    import utils

    utils.check_args(args)
    check_runs(args)
    jobs = make_jobs(args)
    out = out_path(args.out)
    todo, aside = [], []
    for j in jobs:
        if finished(j.run_dir):
            print(f"# {j.name}: finished already in {j.run_dir}, kept")
            continue
        if os.path.exists(os.path.join(ROOT, j.run_dir, "checkpoint.pt")):  # scripts that save checkpoints
            j.cmd = ["python", j.cmd[1], "--resume", j.run_dir, "--threads", "1"]
            print(f"# {j.name}: continues from its checkpoint in {j.run_dir}")
        elif os.path.exists(os.path.join(ROOT, j.run_dir)):
            aside.append(j.run_dir)
            print(f"# {j.name}: an unfinished run in {j.run_dir} is moved to {j.run_dir}.partial-<time> and run again")
        todo.append(j)
    ordered, shipped = list(todo), None
    need_other = (any(j.name.startswith("prefixrl_other_family") for j in todo)
                  and not os.path.exists(os.path.join(ROOT, other_traces_path(out))))
    if need_other and (shipped := shipped_other_traces(args.extra)):
        print(f"# the other family's traces: {SHIPPED_OTHER_TRACES}, copied to {other_traces_path(out)} (the same bytes as "
              f"`OMP_NUM_THREADS=1 python reproduce.py --collect-traces-to FILE` writes in 5-7 minutes)")
    elif need_other:
        traces = other_traces_job(args)  # the other family's base model and traces: early, its runs last
        for j in todo:
            j.needs = traces.name if j.name.startswith("prefixrl_other_family") else None
        ordered = [j for j in todo if j.needs is None]
        ordered = ordered[:1] + [traces] + ordered[1:] + [j for j in todo if j.needs]
    first, rest = ordered[:1], ordered[1:]  # the first builds the base model and the trace cache for all
    for j in first:
        j.set_threads(max(1, args.jobs))  # alone: every core
    plot_cmd = f"python plot.py {os.path.join(out, 'runs')} --out {os.path.join(out, 'figures')}"
    if args.dry_run:
        for i, j in enumerate(ordered):
            if i == 0:
                print("# first, alone (builds the base model and the trace cache):")
            if i == 1:
                print(f"# then, {args.jobs} at a time (runs that need the other family's traces wait for them):")
            print(shlex.join(j.cmd) + f"  > {j.log}")
        print("# then the figures:")
        print(plot_cmd)
        return 0
    for run_dir in aside:
        os.rename(os.path.join(ROOT, run_dir), os.path.join(ROOT, f"{run_dir}.partial-{int(time.time())}"))
    if shipped:
        import shutil

        os.makedirs(os.path.dirname(os.path.join(ROOT, other_traces_path(out))), exist_ok=True)
        shutil.copyfile(shipped, os.path.join(ROOT, other_traces_path(out)))
    counter, failed = [0, len(ordered)], []
    if todo:
        print(f"{len(todo)} run(s) to go; {first[0].name} runs alone first: it builds the base model and the trace cache for all", flush=True)
        failed = run_pool(first, 1, args.python, counter)
        if failed:
            print(f"the first run failed: the others are not started (see {first[0].log})")
            return 1
        failed = run_pool(rest, max(1, args.jobs), args.python, counter, done=[j.name for j in first])

    import plot  # matplotlib only now

    print(f"figures: {plot_cmd}", flush=True)
    plot.main(plot.Args(runs=(os.path.join(ROOT, out, "runs"),), out=os.path.join(ROOT, out, "figures")))
    if failed:
        print(f"{len(failed)} run(s) failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    import utils

    cli = utils.cli(Args, __doc__.splitlines()[0])
    with utils.clean_errors():
        if cli.collect_traces_to:
            collect_other_traces(cli.collect_traces_to, cli.extra, cli.collect_model)
            raise SystemExit(0)
        raise SystemExit(main(cli))
