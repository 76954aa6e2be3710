"""When each family (or problem) gets its first success in a run, and whether it then takes off.

Reads RUN_DIR/groups.jsonl (each training group's problem and how many of its rollouts succeeded) and
counts, over the no-prefix groups only, per toy family (--by family) or per problem (--by problem):
the step of its first success; the step at which it takes off, the first group after which its last
--window groups succeeded at a rate >= --rate, with how many successes it had before that window; and
its success rate over the run's last --final-frac of steps ("learned" at >= 0.5), and, for a PrefixRL
run, its prefixed groups' success rate over those steps. On the toy this shows whether standard RL
escapes its stall (under AdamW nearly every family with a success took off after one or two of its
own; under SGD a few, after tens: docs/default-toy/), and which of PrefixRL's families stay unlearned
without a prefix although their prefixed problems are learned.

    python bench/takeoff.py repro/runs/rl_n8_s*            # one summary per run
    python bench/takeoff.py repro/runs/rl_n8_s1 --detail   # and one line per family
"""

import json
import os
import sys
from dataclasses import dataclass
from typing import Literal, Tuple

import numpy as np
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import tasks  # noqa: E402
from utils import InputError, clean_errors  # noqa: E402


@dataclass
class Args:
    runs: tyro.conf.Positional[Tuple[str, ...]]
    """run dirs, each with a groups.jsonl"""
    by: Literal["family", "problem"] = "family"
    """count per toy family (needs a --task toy run) or per problem"""
    window: int = 5
    """a unit takes off when its last `window` no-prefix groups succeeded at a rate >= --rate"""
    rate: float = 0.25
    """see --window"""
    final_frac: float = 0.2
    """the final success rate is over the last this fraction of the run's steps"""
    detail: bool = False
    """one line per unit as well"""


def check_args(a: Args):
    if a.window < 1:
        raise InputError(f"--window must be >= 1, got {a.window}")
    for name, v in (("rate", a.rate), ("final-frac", a.final_frac)):
        if not 0 < v <= 1:
            raise InputError(f"--{name} must be in (0, 1], got {v}")


def read_groups(run_dir):
    path = os.path.join(run_dir, "groups.jsonl")
    if not os.path.isfile(path):
        raise InputError(f"'{path}' does not exist: give a run dir of a run made with groups.jsonl logging")
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except ValueError:  # a run being written may end in a partial line
                pass
    return rows


def unit_of(run_dir, by):
    """problem id -> the unit it is counted in."""
    if by == "problem":
        return lambda pid: pid
    with open(os.path.join(run_dir, "args.json")) as f:
        a = json.load(f)
    if a.get("task") != "toy" or a.get("dataset"):
        raise InputError(f"{run_dir} is not a --task toy run: families exist only on the toy; give --by problem")
    task = tasks.make_toy_task(a["toy_length"], a["hard_min"], a["hard_max"], a["n_train"], a["n_heldout"], a["task_seed"])
    family = {p.id: f"F{p.meta['family']}" for p in task.train}

    def of(pid):
        if pid not in family:
            raise InputError(f"{run_dir}: problem {pid} of its groups.jsonl is not a training problem of the toy task its args.json "
                             f"describes (a run of another version of tasks.py?); give --by problem")
        return family[pid]
    return of


def takeoff(history, rollouts, window, rate):
    """history: a unit's successes per no-prefix group, in order. Returns (index of the group at which it
    takes off, its successes before that window) or None."""
    s = np.asarray(history)
    for i in range(window - 1, len(s)):
        if s[i - window + 1 : i + 1].sum() >= rate * window * rollouts:
            return i, int(s[: i - window + 1].sum())
    return None


def analyse(rows, unit, window, rate, final_frac):
    """Per unit: first-success step, take-off (step, successes before), final success rate."""
    steps = rows[-1]["step"] if rows else 0
    hist, late_prefixed = {}, {}
    for r in rows:
        prefixed = r.get("prefix_tokens", [0] * len(r["problems"]))
        for pid, k, n in zip(r["problems"], r["successes"], prefixed):
            if n == 0:
                hist.setdefault(unit(pid), []).append((r["step"], k, r["rollouts"]))
            elif r["step"] > steps * (1 - final_frac):
                late_prefixed.setdefault(unit(pid), []).append((k, r["rollouts"]))
    out = {}
    for u, h in hist.items():
        step, k, n = (np.array(c) for c in zip(*h))
        took = takeoff(k, n[0], window, rate)
        late = step > steps * (1 - final_frac)
        kp, np_ = (np.array(c) for c in zip(*late_prefixed[u])) if u in late_prefixed else (None, None)
        out[u] = dict(first=int(step[k > 0][0]) if k.any() else None, took=(int(step[took[0]]), took[1]) if took else None,
                      final=float(k[late].sum() / n[late].sum()) if late.any() else None, successes=int(k.sum()),
                      final_prefixed=float(kp.sum() / np_.sum()) if kp is not None else None)
    return out


def main(a: Args):
    check_args(a)
    if not a.runs:
        raise InputError("give one or more run dirs")
    for run_dir in a.runs:
        units = analyse(read_groups(run_dir), unit_of(run_dir, a.by), a.window, a.rate, a.final_frac)
        hit = [u for u, v in units.items() if v["first"] is not None]
        took = [u for u in hit if units[u]["took"]]
        learned = [u for u, v in units.items() if (v["final"] or 0) >= 0.5]
        before = sorted(units[u]["took"][1] for u in took)
        print(f"{run_dir}: {len(units)} {'families' if a.by == 'family' else 'problems'}; {len(hit)} with a success, {len(took)} of them took off "
              f"(own successes before: median {np.median(before) if before else float('nan'):g}, {before}); "
              f"{len(learned)} learned (final success rate >= 0.5)")
        unlearned = [v["final_prefixed"] for u, v in units.items() if u not in learned and v["final_prefixed"] is not None]
        if unlearned:  # a PrefixRL run: where the units it did not learn stand on their prefixed problems
            print(f"  of the {len(units) - len(learned)} not learned, {sum(r >= 0.5 for r in unlearned)} learned their prefixed problems "
                  f"(final prefixed success rate >= 0.5), {sum(r < 0.1 for r in unlearned)} stayed below 0.1 on them")
        if a.detail:
            for u in sorted(units, key=lambda u: (units[u]["first"] is None, units[u]["first"] or 0)):
                v = units[u]
                took_text = f"took off at step {v['took'][0]} after {v['took'][1]} successes" if v["took"] else "never took off"
                prefixed_text = f", prefixed {v['final_prefixed']:.2f}" if v["final_prefixed"] is not None else ""
                print(f"  {u}: first success at step {v['first']}, {took_text}, final success rate {v['final']}{prefixed_text}")


if __name__ == "__main__":
    with clean_errors():
        main(tyro.cli(Args))
