"""Time one step of standard_rl.py against one step of TRL's GRPOTrainer (scale/grpo.py) on the default toy:
the same base model, the same work (16 prompts x 8 rollouts of the same problems, up to the task's 19 new
tokens, micro-batches of 32, one AdamW step), alternating runs A B A B so that both sides share whatever
else the machine is doing. Needs the optional extra (pip install -r scale/requirements.txt).

    python bench/vs_trl.py --threads 1          # 6 pairs, 5 timed steps per run

Each run is the real loop: standard_rl.main, and scale/grpo.py's trainer on standard_rl's exported
mixture (scale/export.py --algo standard_rl), with evaluation switched off on both sides (not part of a
step). A step is timed from the end of the previous one to its own end (the first step of a run is not
timed) and split into sampling (utils.sample / transformers' generate), forward (utils.token_logprobs /
TRL's log-prob forward), backward (every Tensor.backward) and the rest (rewards, batching, clipping, the
optimizer step, logging). Printed: each pair's mean step times and their ratio, then the median ratio
and the mean split.

What differs between the two steps besides the trainer around them:
- sampling: utils.sample prefills each distinct prompt once and copies its KV cache to the prompt's 8
  rows, then draws by inverse CDF; TRL calls transformers' generate on all 128 rows (each prompt
  prefilled 8 times) with its logits processors;
- the forward: utils.token_logprobs runs a group's shared prompt once per micro-batch and its 8 responses
  from that prompt's KV cache (as sampling does), so each step's forward and backward cover about 600
  token positions per micro-batch of 32 instead of 1,024 (the toy's prompt is 15 of 32 tokens); TRL runs
  every row whole;
- the loss: standard_rl.py recomputes the lm head in the backward pass (a chunk of positions at a time)
  and computes train/grad_std (per-parameter norms of the gradient after each micro-batch); TRL's fused head
  computes log-probs and entropies in tiles;
- the optimizer is the same on both sides: torch AdamW, weight decay 0.01 on every parameter, not fused
  (scale/grpo.py's setting; TRL's own defaults would be fused AdamW without weight decay).
"""

import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass

import torch
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import standard_rl  # noqa: E402
import utils  # noqa: E402
from scale import export, grpo  # noqa: E402

PARTS = ("sampling", "forward", "backward")


@dataclass
class Args:
    pairs: int = 6
    """A B pairs (A: standard_rl.py, B: TRL)"""
    steps: int = 5
    """timed steps per run (each run takes one more, untimed, first)"""
    threads: int = 1
    """torch CPU threads, both sides"""
    cache_dir: str = "cache"
    """the toy base model and its traces (made on first use, as by the scripts)"""


class Clock:
    """Seconds per step, and per part of it, from wrappers around the functions that do each part."""

    def __init__(self):
        self.parts, self.steps, self.last = dict.fromkeys(PARTS, 0.0), [], None

    def wrap(self, owner, name, part):
        inner = getattr(owner, name)

        def timed(*a, **k):
            t = time.perf_counter()
            try:
                return inner(*a, **k)
            finally:
                self.parts[part] += time.perf_counter() - t

        setattr(owner, name, timed)
        return lambda: setattr(owner, name, inner)

    def step_end(self):
        now = time.perf_counter()
        if self.last is not None:  # the first step of a run is not timed
            self.steps.append(dict(total=now - self.last, **self.parts))
        self.last, self.parts = now, dict.fromkeys(PARTS, 0.0)


def swap(owner, name, new):
    old = getattr(owner, name)
    setattr(owner, name, new)
    return lambda: setattr(owner, name, old)


@contextlib.contextmanager
def patched(*undo_fns):
    try:
        yield
    finally:
        for undo in reversed(undo_fns):
            undo()


def run_ours(args, run_dir):
    clock, log = Clock(), utils.log_metrics

    def log_and_time(run_dir, row):
        log(run_dir, row)
        if "train/grad_norm" in row:
            clock.step_end()

    with patched(swap(utils, "evaluate", lambda *a, **k: ({1: 0.0}, [])), swap(utils, "save_final_eval", lambda *a, **k: None),
                 swap(utils, "log_metrics", log_and_time), clock.wrap(utils, "sample", "sampling"),
                 clock.wrap(utils, "token_logprobs", "forward"), clock.wrap(torch.Tensor, "backward", "backward")):
        standard_rl.main(standard_rl.Args(run_dir=run_dir, cache_dir=args.cache_dir, steps=args.steps + 1, threads=args.threads,
                                          eval_every=10**9, save_every=10**9, device="cpu"))
    return clock.steps


def run_trl(args, data, run_dir):
    from transformers import TrainerCallback

    clock = Clock()

    class StepEnd(TrainerCallback):
        def on_step_end(self, *a, **k):
            clock.step_end()

    trainer, _, _ = grpo.build(grpo.Args(data=data, run_dir=run_dir, cache_dir=args.cache_dir, steps=args.steps + 1, threads=args.threads),
                               grpo.read_export(data), callbacks=[StepEnd()])
    with patched(clock.wrap(trainer.model, "generate", "sampling"), clock.wrap(trainer, "_get_per_token_logps_and_entropies", "forward"),
                 clock.wrap(torch.Tensor, "backward", "backward")):
        trainer.train()
    return clock.steps


def main(args: Args):
    torch.set_num_threads(args.threads)
    tmp = tempfile.mkdtemp(prefix="vs_trl_")
    data = os.path.join(tmp, "data")
    export.main(export.Args(algo="standard_rl", out=data, cache_dir=args.cache_dir, steps=args.steps + 1, threads=args.threads, device="cpu"))
    load = os.getloadavg()[0]
    ours, theirs, ratios = [], [], []
    for i in range(args.pairs):
        a = run_ours(args, os.path.join(tmp, f"ours{i}"))
        b = run_trl(args, data, os.path.join(tmp, f"trl{i}"))
        ours, theirs = ours + a, theirs + b
        ta, tb = statistics.mean(s["total"] for s in a), statistics.mean(s["total"] for s in b)
        ratios.append(ta / tb)
        print(f"pair {i + 1}: standard_rl.py {ta:.3f} s/step, TRL {tb:.3f} s/step, ratio {ta / tb:.2f}", flush=True)
    print(f"\n{args.pairs} pairs x {args.steps} steps, {args.threads} thread(s), load average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end")
    print(f"standard_rl.py step / TRL step: median ratio {statistics.median(ratios):.2f} (pairs {min(ratios):.2f}-{max(ratios):.2f})")
    print(f"{'':16}{'step':>8}" + "".join(f"{p:>10}" for p in PARTS) + f"{'rest':>8}")
    for name, steps in (("standard_rl.py", ours), ("TRL", theirs)):
        mean = {k: statistics.mean(s[k] for s in steps) for k in ("total", *PARTS)}
        print(f"{name:16}{mean['total']:7.3f}s" + "".join(f"{mean[p]:9.3f}s" for p in PARTS) + f"{mean['total'] - sum(mean[p] for p in PARTS):7.3f}s")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    with utils.clean_errors():
        main(tyro.cli(Args, description=__doc__))
