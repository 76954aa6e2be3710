"""How large off-policy RL's importance weights can get, and whether they drive its gradient spikes.

A trace token's weight (offpolicy_rl.trace_weights, --ratio token, the paper's) is
pi_theta(y_t) / pi_0(y_t) * P(accept)^(1/L), P(accept) ~ 1/attempts, L the trace's length. Since
pi_theta <= 1 it can never exceed 1 / pi_0(y_t) * attempts^(-1/L): a trace whose every token the base
model found likely bounds its weights near 1, where the paper's traces hold tokens of probability 1e-3
and below, whose weights grow far above 1 as the policy learns them (paper.md, Fig. 12). Prints that
bound over a traces file, then, per off-policy run, the largest weight it logged, its gradient norm's
max / median, and the correlation between a step's gradient norm and its largest weight.

    python bench/is_weights.py --traces toy_models/toy/traces.json repro/runs/offpolicy_rl_s*
"""

import json
import math
import os
import sys
from dataclasses import dataclass
from typing import Tuple

import numpy as np
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from utils import InputError, clean_errors, load_traces  # noqa: E402


@dataclass
class Args:
    runs: tyro.conf.Positional[Tuple[str, ...]] = ()
    """off-policy RL run dirs, each with a metrics.jsonl"""
    traces: str = "toy_models/toy/traces.json"
    """the traces file the runs trained on"""


def weight_bound(trace):
    """The largest weight any token of this trace can get: max_t 1 / pi_0(y_t) * attempts^(-1/L)."""
    log_accept_per_token = -math.log(trace.attempts) / len(trace.token_ids)
    return math.exp(-min(trace.behaviour_logprobs) + log_accept_per_token)


def read_steps(run_dir):
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise InputError(f"'{path}' does not exist: give off-policy RL run dirs")
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    steps = [r for r in rows if "train/max_is_weight" in r]
    if not steps:
        raise InputError(f"'{path}' logs no train/max_is_weight: not an off-policy RL run")
    return steps


def main(args: Args):
    runs = {run: read_steps(run) for run in args.runs}  # every input checked before anything is printed
    traces, _ = load_traces(args.traces)
    bounds = [weight_bound(t) for t in traces.values()]
    p0 = np.exp(np.concatenate([t.behaviour_logprobs for t in traces.values()]))
    print(f"{args.traces}: {len(traces)} traces; base probability of a trace token: min {p0.min():.3f}, "
          f"1% quantile {np.quantile(p0, 0.01):.3f}; largest possible token weight {max(bounds):.3f} "
          f"(median over traces {np.median(bounds):.3f})")
    for run, steps in runs.items():
        norm = np.array([r["train/grad_norm"] for r in steps])
        largest = np.array([r["train/max_is_weight"] for r in steps])
        spike = int(norm.argmax())
        print(f"{run}: largest weight {largest.max():.3f} (median step {np.median(largest):.3f}); grad norm "
              f"max {norm.max():.3g} at step {steps[spike]['step']} (largest weight then {largest[spike]:.3f}), "
              f"median {np.median(norm):.3g}, max/median {norm.max() / np.median(norm):.1f}; "
              f"corr(grad norm, largest weight) {np.corrcoef(norm, largest)[0, 1]:.2f}")


if __name__ == "__main__":
    with clean_errors():
        main(tyro.cli(Args, description=__doc__.splitlines()[0]))
