"""How hard the default toy is for its base model: per-step accuracy by family and the exact pass@1.

    python bench/calibrate_toy.py                      # the "toy" base model on the default problems
    python bench/calibrate_toy.py --model toy-gpt2     # the other family's base model
    python bench/calibrate_toy.py --model repro/runs/rl_n8_s1/policy   # a trained policy

It takes prefixrl.py's flags (model, cache and task flags matter: --cache-dir, --toy-pretrain-steps,
--toy-length, --hard-min, --hard-max, --n-train, --n-heldout, --task-seed, --threads).

Teacher-forces the one correct solution of every problem (training candidates and held-out) and prints:
p(right | hard step) per family and overall, and over the families whose rule lies ahead of (or behind)
p(right | easy step), and the exact probability of
sampling the correct solution (at temperature 1), by number of hard steps H: the reward rate, since
the reward checks every value. Also by group of families that a shared feature would pick out (the
rule the lower or the upper of its pair of offsets): a trained policy that learned such a feature
shows a gap between the groups.
"""

import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import models  # noqa: E402
import prefixrl  # noqa: E402
import tasks  # noqa: E402
import utils  # noqa: E402


@torch.no_grad()
def main(args: prefixrl.Args):
    models.check_args(args)
    torch.set_num_threads(args.threads)
    model, _, _ = models.load_model(args.model, args.cache_dir, "cpu", args.toy_pretrain_steps, toy_length=args.toy_length)
    task = tasks.make_toy_task(args.toy_length, args.hard_min, args.hard_max, args.n_train, args.n_heldout, args.task_seed)
    problems = task.train + task.heldout
    by_family, easy, exact = models.toy_calibration(model, problems)
    print(f"model {args.model}, {len(problems)} problems (H {args.hard_min}..{args.hard_max}, length {args.toy_length})")
    print(f"p(right | easy step) = {np.mean(easy):.4f}")
    print(f"p(right | hard step) = {np.mean([v for vs in by_family.values() for v in vs]):.3f} overall; by family:")
    print("  " + "  ".join(f"F{f}:{np.mean(v):.2f}" for f, v in sorted(by_family.items())))
    half = tasks.MOD // 2  # a feature shared by families would split them: rule the lower or the upper offset of its pair
    for side, upper in (("lower", False), ("upper", True)):
        fams = [f for f in sorted(by_family) if (tasks.FAMILY_RULE[f] >= half) == upper]
        print(f"  families whose rule is the {side} offset of its pair ({len(fams)}): mean "
              f"{np.mean([np.mean(by_family[f]) for f in fams]):.2f}, {sum(np.mean(by_family[f]) >= 0.9 for f in fams)} at >= 0.9")
    for h, v in sorted(exact.items()):
        print(f"exact pass@1 at H = {h}: mean {np.mean(v):.2e}, median {np.median(v):.2e} ({len(v)} problems)")


if __name__ == "__main__":
    with utils.clean_errors():
        main(utils.cli(prefixrl.Args, __doc__))
