"""How hard the default toy is for its base model: per-step accuracy by family and the exact pass@1.

    python bench/calibrate_toy.py                      # the "toy" base model on the default problems
    python bench/calibrate_toy.py --model toy-gpt2     # the other family's base model
    python bench/calibrate_toy.py --model repro/runs/rl_n8_s1/policy   # a trained policy
    python bench/calibrate_toy.py --model repro/runs/prefixrl_s1/policy --families 1 6 40   # and where they err

It takes prefixrl.py's flags (model, cache and task flags matter: --cache-dir, --toy-pretrain-steps,
--toy-length, --hard-min, --hard-max, --n-train, --n-heldout, --task-seed, --threads).

Teacher-forces the one correct solution of every problem (training candidates and held-out) and prints:
p(right | hard step) per family and overall, p(right | easy step), and the exact probability of
sampling the correct solution (at temperature 1), by number of hard steps H: the reward rate, since
the reward checks every value. With a trace cache for these flags (written by prefixrl.py), also the count
behind standard RL's stall or escape: the rollouts reproduce.py gives RL n=8 (PrefixRL's FLOPs) spread over the
pool, times each pool problem's exact pass@1, is the expected number of successes per pool problem at the
base rate, and 1 - exp(-that) the share of pool problems expected to see at least one. Also, over the families not learned (below 0.9), the table entries that a
shared feature would pick out (the rule the smaller or the larger value of its pair): a trained policy
that learned such a feature shows a gap between the two groups. With --families, p(right) at each hard
step by its position in the solution, over those families' training problems: where a policy that
learned them with a prefix still errs without one (docs/measurements.md, "Where PrefixRL stops").
"""

import os
import sys
from dataclasses import dataclass
from typing import Tuple

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import models  # noqa: E402
import prefixrl  # noqa: E402
import reproduce  # noqa: E402
import standard_rl  # noqa: E402
import tasks  # noqa: E402
import utils  # noqa: E402


@dataclass
class Args(prefixrl.Args):
    families: Tuple[int, ...] = ()
    """also p(right) at each hard step by position, over these families' training problems (e.g. those
    `python bench/takeoff.py RUN_DIR --detail` shows learned with a prefix only, with --model RUN_DIR/policy)"""


def by_position(model, problems):
    """p(right) at each hard step of each problem, in the order its solution takes them: {H: [problems, H]}."""
    rows = {}
    for p in problems:
        uses = {k: iter(v) for k, v in models.toy_calibration(model, [p])[0].items()}  # each entry's uses, in order
        family, _, adds = p.meta["params"]
        rows.setdefault(p.meta["hard"], []).append([next(uses[(family, b)]) for b in adds if b >= tasks.BIG])
    return {h: np.array(v) for h, v in rows.items()}


@torch.no_grad()
def main(args: Args):
    models.check_args(args)
    torch.set_num_threads(args.threads)
    model, _, model_id = models.load_model(args.model, args.cache_dir, "cpu", args.toy_pretrain_steps, toy_length=args.toy_length)
    task = tasks.make_toy_task(args.toy_length, args.hard_min, args.hard_max, args.n_train, args.n_heldout, args.task_seed)
    problems = task.train + task.heldout
    by_entry, easy, exact = models.toy_calibration(model, problems)
    by_family = models.by_family(by_entry)
    print(f"model {args.model}, {len(problems)} problems (H {args.hard_min}..{args.hard_max}, length {args.toy_length})")
    print(f"p(right | easy step) = {np.mean(easy):.4f}")
    print(f"p(right | hard step) = {np.mean([v for vs in by_family.values() for v in vs]):.3f} overall; by family:")
    print("  " + "  ".join(f"F{f}:{np.mean(v):.2f}" for f, v in sorted(by_family.items())))
    # a feature shared by families would split the table entries of the families not learned (mean p(right) below
    # 0.9): those whose rule is the smaller value of its pair against those whose rule is the larger (every family has
    # as many of each)
    unlearned = {f for f, v in by_family.items() if np.mean(v) < 0.9}
    print(f"  {len(by_family) - len(unlearned)} families at >= 0.9; the table entries of the other {len(unlearned)}:")
    for side, smaller in (("smaller", True), ("larger", False)):
        ps = [np.mean(v) for (f, b), v in by_entry.items() if f in unlearned
              and (tasks.FAMILY_RULE[f][b - tasks.BIG] < tasks.FAMILY_DECOY["base"][f][b - tasks.BIG]) == smaller]
        print(f"    rule the {side} value of its pair ({len(ps)} entries): mean p(right) {np.mean(ps):.2f}")
    for h, v in sorted(exact.items()):
        print(f"exact pass@1 at H = {h}: mean {np.mean(v):.2e}, median {np.median(v):.2e} ({len(v)} problems)")
    if args.families:
        chosen = [p for p in task.train if p.meta["family"] in set(args.families)]
        if not chosen:
            raise utils.InputError(f"--families {' '.join(map(str, args.families))}: no training problem of these families "
                                   f"(the training problems are of families 0..{min(len(task.train), tasks.FAMILIES) - 1})")
        for h, ps in sorted(by_position(model, chosen).items()):
            print(f"p(right | hard step) by position 1..{h}, {len(ps)} training problems of families "
                  f"{' '.join(str(p.meta['family']) for p in chosen if p.meta['hard'] == h)}: " + " ".join(f"{v:.2f}" for v in ps.mean(0)))
    trace_path = utils.trace_cache_path(args.cache_dir, model_id, task, args.trace_budget, args.trace_seed)
    if os.path.exists(trace_path):
        rl_successes(model, task, trace_path)
    else:
        print(f"no trace cache {trace_path} (run prefixrl.py with these flags first): the pool's count is left out")


def rl_successes(model, task, trace_path):
    """Standard RL's expected successes per pool problem at the base model's exact pass@1."""
    traces, _ = utils.load_traces(trace_path, problems=task.train)
    pool = [p for p in task.train if p.id in traces]
    flags = reproduce.METHODS["rl_n8"]
    steps = int(flags[flags.index("--steps") + 1])
    rollouts = steps * standard_rl.Args.prompts_per_step * standard_rl.Args.rollouts
    # one problem at a time: toy_calibration groups its exact pass@1 by H, not by problem
    exact = {p.id: next(iter(models.toy_calibration(model, [p])[2].values()))[0] for p in task.train}
    expected = np.array([exact[p.id] * rollouts / len(pool) for p in pool])
    print(f"pool: {len(pool)} of {len(task.train)} training problems have a trace; exact pass@1 mean "
          f"{np.mean([exact[p.id] for p in pool]):.2e} (all training problems: {np.mean([exact[p.id] for p in task.train]):.2e})")
    print(f"standard RL n=8 in reproduce.py: {steps} steps x {standard_rl.Args.prompts_per_step} prompts x "
          f"{standard_rl.Args.rollouts} rollouts = {rollouts} on the pool: expected successes per pool problem at the "
          f"base rate mean {expected.mean():.2f} (median {np.median(expected):.2f}); share of pool problems expected "
          f"to see one or more: {np.mean(1 - np.exp(-expected)):.2f}")


if __name__ == "__main__":
    with utils.clean_errors():
        main(utils.cli(Args, __doc__))
