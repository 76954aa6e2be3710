"""Reproduce the paper's figures on the default toy with one command: every method x seed, then plot.py.

    python reproduce.py --dry-run          # print the commands
    python reproduce.py                    # 6 methods x 3 seeds, os.cpu_count() runs at a time
    python reproduce.py --seeds 1 --methods prefixrl rl_n8 \
        --extra="--toy-length 15 --hard-min 11 --hard-max 11 --n-train 8 --trace-budget 131072"   # the stall

One run goes first, alone, with --jobs torch threads: it pretrains the toy base model and collects the
traces, both cached in cache/ and reused by every other run (same model, problems, budget and trace
seed). The others then run --jobs at a time with one torch thread each. Run dirs go to
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
    "prefixrl": ["prefixrl.py"],
    "rl_n8": ["standard_rl.py"],
    "rl_n64": ["standard_rl.py", "--rollouts", "64", "--prompts-per-step", "2"],  # 128 rollouts per step, as every method
    "sft_rl": ["sft_rl.py"],
    "offpolicy_rl": ["offpolicy_rl.py"],
    "prefixrl_prefixed_only": ["prefixrl.py", "--prefixed-only"],
}
POLL_S = 1.0  # how often running jobs are checked
MethodName = Literal["prefixrl", "rl_n8", "rl_n64", "sft_rl", "offpolicy_rl", "prefixrl_prefixed_only"]


@dataclass
class Args:
    out: str = "repro"
    """output folder: OUT/runs (run dirs), OUT/logs (each run's output), OUT/figures (plot.py)"""
    seeds: int = 3
    """seeds 1..SEEDS of every method"""
    methods: Tuple[MethodName, ...] = tuple(METHODS)
    """methods to run (prefixrl_prefixed_only: the back-generalization runs of paper §4 / Fig. 3)"""
    jobs: int = os.cpu_count() or 1
    """runs at a time (each with --threads 1)"""
    steps: Optional[int] = None
    """passed to every run as --steps (default: the scripts' own)"""
    extra: str = ""
    """more flags for every run, one string; write it --extra="--hard-min 11 --hard-max 11" (with '=')"""
    dry_run: bool = False
    """print the commands and exit"""
    python: str = sys.executable
    """python interpreter for the runs"""


@dataclass
class Job:
    name: str
    cmd: list
    run_dir: str
    log: str


def out_path(out):
    """OUT relative to the repo root (where the runs start) when it is inside it, else absolute."""
    rel = os.path.relpath(os.path.abspath(out), ROOT)
    return os.path.abspath(out) if rel.startswith("..") else rel


def make_jobs(args):
    out = out_path(args.out)
    jobs = []
    for seed in range(1, args.seeds + 1):
        for method in args.methods:
            name = f"{method}_s{seed}"
            run_dir = os.path.join(out, "runs", name)
            script, *flags = METHODS[method]
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
    threads = job.cmd[job.cmd.index("--threads") + 1]
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    proc = subprocess.Popen([python, *job.cmd[1:]], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    log.close()
    return proc


def run_pool(jobs, width, python, counter):
    """Run `jobs`, `width` at a time; print each as it ends. Returns the names of the failed ones."""
    pending, running, failed = list(jobs), [], []
    try:
        while pending or running:
            while pending and len(running) < width:
                job = pending.pop(0)
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
                    print(f"{head} done in {mins:.1f} min: {summary(job.run_dir)}", flush=True)
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
    if todo and args.jobs > 1:  # the first run is alone: give it every core
        todo[0].cmd[todo[0].cmd.index("--threads") + 1] = str(args.jobs)
    plot_cmd = f"python plot.py {os.path.join(out, 'runs')} --out {os.path.join(out, 'figures')}"
    if args.dry_run:
        for i, j in enumerate(todo):
            if i == 0:
                print("# first, alone (builds the base model and the trace cache):")
            if i == 1:
                print(f"# then, {args.jobs} at a time:")
            print(shlex.join(j.cmd) + f"  > {j.log}")
        print("# then the figures:")
        print(plot_cmd)
        return 0
    for run_dir in aside:
        os.rename(os.path.join(ROOT, run_dir), os.path.join(ROOT, f"{run_dir}.partial-{int(time.time())}"))
    counter, failed = [0, len(todo)], []
    if todo:
        print(f"{len(todo)} run(s) to go; {todo[0].name} runs alone first: it builds the base model and the trace cache for all", flush=True)
        failed = run_pool(todo[:1], 1, args.python, counter)
        if failed:
            print(f"the first run failed: the others are not started (see {todo[0].log})")
            return 1
        failed = run_pool(todo[1:], max(1, args.jobs), args.python, counter)

    import plot  # matplotlib only now

    print(f"figures: {plot_cmd}", flush=True)
    plot.main(plot.Args(runs=(os.path.join(ROOT, out, "runs"),), out=os.path.join(ROOT, out, "figures")))
    if failed:
        print(f"{len(failed)} run(s) failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(tyro.cli(Args)))
