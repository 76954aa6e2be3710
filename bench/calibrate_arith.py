"""Calibrate the built-in word problems (--task arith) for a chat model: pass@1, pass@8 and
pass@budget per level, from `budget` samples per problem at temperature 1.0 (the trace-collection
setting). Prints one line per problem as it goes and a table at the end; writes --out as JSON.

    python bench/calibrate_arith.py --levels 2 3 4 --problems 4 --budget 192 --threads 2
"""

import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Tuple

import torch
import tyro
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import models  # noqa: E402
import tasks  # noqa: E402
import utils  # noqa: E402


@dataclass
class Args:
    model: str = "smollm2-135m"
    """model to calibrate (as --model of the scripts)"""
    levels: Tuple[int, ...] = (1, 2, 3, 4)
    """difficulty levels of --task arith"""
    problems: int = 4
    """training problems per level (task seed 0, the scripts' default draw)"""
    budget: int = 192
    """samples per problem: pass@budget is the share of problems with at least one correct sample"""
    max_new_tokens: int = 160
    """longest response in tokens"""
    batch: int = 64
    """samples per sampling call"""
    threads: int = 2
    """torch CPU threads"""
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    """torch device"""
    seed: int = 0
    """sampling seed"""
    out: str = "calibration.json"
    """where the per-problem counts go"""


def main(args: Args):
    models.check_args(args)
    _, generator = utils.seed_everything(args.seed, args.threads)
    model, tokenizer, _ = models.load_model(args.model, "cache", args.device)
    model.eval()
    rows = []
    for level in args.levels:
        task = tasks.make_arith_task(tokenizer, level, args.problems, 0, 0, args.max_new_tokens)
        counts, start = [], time.time()
        for p in task.train:
            correct = 0
            for s in tqdm(range(0, args.budget, args.batch), desc=f"level {level} {p.id}", mininterval=5, leave=False):
                n = min(args.batch, args.budget - s)
                responses, _, _ = utils.sample(model, [p.prompt_ids] * n, task.max_new_tokens, 1.0, task.eos_id, task.pad_id, generator)
                correct += sum(task.reward(p, [], r) for r in responses)
            counts.append(int(correct))
            print(f"level {level} {p.id}: {int(correct)}/{args.budget} correct  ({p.meta['text'][:70]}...)", flush=True)
        row = dict(level=level, problems=len(counts), budget=args.budget, counts=counts, seconds=round(time.time() - start),
                   pass1=sum(utils.pass_at_k(args.budget, c, 1) for c in counts) / len(counts),
                   pass8=sum(utils.pass_at_k(args.budget, c, 8) for c in counts) / len(counts) if args.budget >= 8 else float("nan"),
                   pass_budget=sum(c > 0 for c in counts) / len(counts))
        rows.append(row)
        utils.write_atomic(args.out, json.dumps(dict(args=vars(args), levels=rows), indent=1))
    print(f"\n{args.model}, temperature 1.0, {args.max_new_tokens} new tokens, {args.problems} problems x {args.budget} samples per level")
    print("| level | pass@1 | pass@8 | pass@%d | seconds |" % args.budget)
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['level']} | {r['pass1']:.4f} | {r['pass8']:.3f} | {r['pass_budget']:.2f} ({sum(c > 0 for c in r['counts'])}/{r['problems']}) | {r['seconds']} |")


if __name__ == "__main__":
    with utils.clean_errors():
        main(tyro.cli(Args))
