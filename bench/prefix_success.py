"""Success vs prefix length on a real LM, on a CPU (the paper's Fig. 3): how often the base model
solves a problem when it continues the first F of a correct trace's reasoning (the tokens before its
final answer, task.reasoning_end), F = 0 (no prefix), 0.2, ..., 0.8.

Traces come from rejection sampling the model itself (utils.collect_traces, cached in --cache-dir);
only problems with a trace are measured. Each (problem, F) gets --samples continuations; the
reward reads the continuation only, so a prefix never answers for it. Writes --out/prefix_success.png
and prefix_success.json.

    python bench/prefix_success.py --model smollm2-135m --level 2 --problems 8 --trace-budget 48 --samples 16 --threads 1
"""

import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Tuple

import numpy as np
import torch
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import models  # noqa: E402
import tasks  # noqa: E402
import utils  # noqa: E402


@dataclass
class Args:
    model: str = "smollm2-135m"
    """chat model (as --model of the scripts)"""
    level: int = 2
    """--task arith level: low, so that a small budget finds traces"""
    problems: int = 8
    """training problems drawn (task seed 0); those with a trace are measured"""
    trace_budget: int = 48
    """rejection-sampling samples per problem"""
    samples: int = 16
    """continuations per (problem, prefix fraction)"""
    fractions: Tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8)
    """prefix lengths, as fractions of the trace's reasoning"""
    temperature: float = 1.0
    """sampling temperature of the traces and the continuations"""
    max_new_tokens: int = 160
    """longest response in tokens"""
    batch: int = 64
    """samples per sampling call"""
    threads: int = 1
    """torch CPU threads"""
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    """torch device"""
    seed: int = 0
    """sampling seed"""
    cache_dir: str = "cache"
    """where the traces are cached"""
    out: str = "docs/real-lm"
    """where the figure and the numbers go"""


def main(args: Args):
    models.check_args(args)
    start = time.time()
    _, generator = utils.seed_everything(args.seed, args.threads)
    model, tokenizer, model_id = models.load_model(args.model, args.cache_dir, args.device)
    model.eval()
    task = tasks.make_arith_task(tokenizer, args.level, args.problems, 0, 0, args.max_new_tokens)
    path = utils.trace_cache_path(args.cache_dir, model_id, task, args.trace_budget, args.seed)
    traces, trace_flops = utils.collect_traces(model, task, task.train, args.trace_budget, args.temperature, args.seed, path, args.batch, model_id)
    solved = [p for p in task.train if p.id in traces]
    print(f"traces for {len(solved)}/{len(task.train)} problems ({time.time() - start:.0f}s)", flush=True)
    if not solved:
        raise utils.InputError(f"no trace found within --trace-budget {args.trace_budget}; raise it or lower --level")

    success = {}  # fraction -> per-problem success rate
    for f in args.fractions:
        contexts = [p.prompt_ids + traces[p.id].token_ids[: round(f * task.reasoning_end(p, traces[p.id].token_ids))] for p in solved]
        _, counts = utils.evaluate(model, task, solved, args.samples, args.temperature, generator, ks=(), contexts=contexts)
        success[f] = [c / args.samples for c in counts]
        print(f"prefix {f:.0%} of the reasoning: success {np.mean(success[f]):.3f}  ({time.time() - start:.0f}s)", flush=True)
    seconds = time.time() - start

    os.makedirs(args.out, exist_ok=True)
    rows = [dict(problem=p.meta["text"], answer=p.answer, trace=traces[p.id].text,
                 reasoning_tokens=task.reasoning_end(p, traces[p.id].token_ids), trace_tokens=len(traces[p.id].token_ids),
                 attempts=traces[p.id].attempts, success={str(f): success[f][i] for f in args.fractions}) for i, p in enumerate(solved)]
    utils.write_atomic(os.path.join(args.out, "prefix_success.json"), json.dumps(
        dict(args=vars(args), model_id=model_id, seconds=round(seconds), trace_flops=trace_flops,
             mean_success={str(f): float(np.mean(success[f])) for f in args.fractions}, problems=rows), indent=1))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    xs = [100 * f for f in args.fractions]
    for i in range(len(solved)):
        ax.plot(xs, [success[f][i] for f in args.fractions], color="tab:blue", alpha=0.25, lw=1)
    ax.plot(xs, [np.mean(success[f]) for f in args.fractions], "o-", color="tab:blue", lw=2.5, label=f"mean of {len(solved)} problems")
    ax.set(xlabel="prefix length (% of the correct trace's reasoning)", ylabel=f"success rate ({args.samples} samples, T={args.temperature})",
           ylim=(-0.02, 1.02), xticks=xs,
           title=f"{args.model}, arith level {args.level}: success vs prefix length\n(paper Fig. 3; {seconds / 60:.0f} min on {args.threads} CPU thread{'s' * (args.threads > 1)})")
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "prefix_success.png"), dpi=120)
    print(f"done in {seconds:.0f}s: {args.out}/prefix_success.png")


if __name__ == "__main__":
    with utils.clean_errors():
        main(tyro.cli(Args))
