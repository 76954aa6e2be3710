"""How hard the default toy is for its base model: per-step accuracy by family and the exact pass@1.

    python bench/calibrate_toy.py                      # the "toy" base model on the default problems
    python bench/calibrate_toy.py --model toy-gpt2     # the other family's base model
    python bench/calibrate_toy.py --model repro/runs/rl_n8_s1/policy   # a trained policy
    python bench/calibrate_toy.py --model repro/runs/prefixrl_s1/policy --families 1 6 40 \
        --traces toy_models/toy/traces.json                                          # and where they err
    python bench/calibrate_toy.py --model RUN_DIR/policy --token-prior --traces toy_models/toy/traces.json

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
learned them with a prefix still errs without one (docs/measurements.md, "Where PrefixRL stops"); with
the trace cache too, p(right) at the hard steps whose entry no prefixed rollout writes (every use inside the
problem's shortest prefix; the prefixes are cut from --traces, or the trace cache) against the others, and
each table entry's p(right), marked where no prefixed rollout writes it or it shares a token with another entry.
With --token-prior, whether the policy learned the pool's rules as a prior over entry tokens: over every entry
of the pool, its move from the base model (--base) against how much more often its decoy than its rule is
another pool family's rule (docs/measurements.md, "The entry that falls").
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
    token_prior: bool = False
    """also, over every entry of the pool, how p(right) moved from --base to --model against the entry's token
    score (token_score); needs --traces"""
    base: str = "toy"
    """the base model --model was trained from (for --token-prior)"""


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
    if args.token_prior and not (args.traces and os.path.isfile(args.traces)):
        raise utils.InputError(f"--token-prior needs --traces FILE, the pool's traces (e.g. toy_models/toy/traces.json); got {args.traces or 'none'}")
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
    pool_traces = args.traces or trace_path  # a policy's cache key is not its base model's: --traces
    if (args.families or args.token_prior) and os.path.exists(pool_traces):
        traces, _ = utils.load_traces(pool_traces, problems=task.train)
        unwritten = unwritten_entries(task, task.train, traces, args)  # the whole pool: the cuts come from one draw, in order
        if args.families:
            entry_report(model, chosen, traces, unwritten)
        if args.token_prior:
            base, _, _ = models.load_model(args.base, args.cache_dir, "cpu", args.toy_pretrain_steps, toy_length=args.toy_length)
            token_prior_report(model, base, task, traces, unwritten, args.base)
    if os.path.exists(trace_path):
        rl_successes(model, task, trace_path)
    else:
        print(f"no trace cache {trace_path} (run prefixrl.py with these flags first): the pool's count is left out")


def unwritten_entries(task, pool, traces, args):
    """problem id -> the big numbers b whose table entry no prefixed rollout of that problem writes: every
    use of the entry lies inside the problem's shortest prefix (prefixrl.py's cuts, from args), so PrefixRL's
    prefixed groups never sample it and only the original problem's rollouts can teach it."""
    shortest = {}
    for p, prefix in utils.cut_prefixes(task, pool, traces, args.cuts_per_trace, args.cut_min, args.cut_max, args.trace_seed):
        shortest[p.id] = min(shortest.get(p.id, len(prefix)), len(prefix))
    unwritten = {}
    for p in (p for p in pool if p.id in shortest):  # the problems with a trace
        adds = p.meta["params"][2]
        begins = [0] + tasks.toy_step_ends(traces[p.id].token_ids)  # where each step's tokens start
        written = {b for b, begin in zip(adds, begins) if b >= tasks.BIG and begin >= shortest[p.id]}
        unwritten[p.id] = {b for b in adds if b >= tasks.BIG} - written
    return unwritten


def sibling_tokens(family, b):
    """Where entry b of the family's table shares a token with another entry of the table: its decoy is a
    sibling's rule (learning the sibling raises this entry's wrong token) or its rule a sibling's decoy."""
    rule, decoy, i = tasks.FAMILY_RULE[family], tasks.FAMILY_DECOY["base"][family], b - tasks.BIG
    others = [j for j in range(len(rule)) if j != i]
    return ([f"decoy r{decoy[i]} = rule of +{tasks.BIG + j}" for j in others if rule[j] == decoy[i]]
            + [f"rule r{rule[i]} = decoy of +{tasks.BIG + j}" for j in others if decoy[j] == rule[i]])


LOW = 0.3
"""p(right) of an entry pushed towards its decoy: well under the base model's coin (about 0.5)"""


def entry_report(model, chosen, traces, unwritten):
    """--families with traces: p(right) of each table entry over its uses in the family's training problem,
    marked where no prefixed rollout writes it (every use inside the shortest prefix) and where it shares a
    token with a sibling entry; then how many entries sit below LOW and why, and p(right) at the hard steps
    whose entry no prefixed rollout writes against the others (docs/measurements.md, "Where PrefixRL stops")."""
    chosen = [p for p in chosen if p.id in traces]
    if not chosen:
        print("none of these families' training problems has a trace: no prefixes to compare")
        return
    print("p(right) of each table entry over its uses (* no prefixed rollout writes it):")
    inside, outside, low, entries = [], [], [], 0
    for p in chosen:
        family, _, adds = p.meta["params"]
        hard_adds = [b for b in adds if b >= tasks.BIG]
        row = by_position(model, [p])[p.meta["hard"]][0]
        for b, v in zip(hard_adds, row):
            (inside if b in unwritten[p.id] else outside).append(v)
        cells = []
        for b in sorted(set(hard_adds)):
            v, notes = np.mean([x for c, x in zip(hard_adds, row) if c == b]), sibling_tokens(family, b)
            cells.append(f"+{b} {v:.2f}{'*' if b in unwritten[p.id] else ''}" + (f" ({'; '.join(notes)})" if notes else ""))
            entries += 1
            if v < LOW:
                low.append((b in unwritten[p.id], bool(notes)))
        print(f"  F{family}: " + ", ".join(cells))
    print(f"entries below {LOW}: {len(low)} of {entries}; of these {sum(u for u, _ in low)} no prefixed rollout writes, "
          f"{sum(n for _, n in low)} share a token with a sibling entry, {sum(not u and not n for u, n in low)} neither")
    print(f"hard steps whose entry no prefixed rollout writes: {len(inside)} of {len(inside) + len(outside)}, p(right) "
          f"{np.mean(inside) if inside else float('nan'):.2f}; the other hard steps {np.mean(outside):.2f}")


def token_score(family, b, pool_families):
    """How many more of the other pool families' table entries have this entry's decoy token as their rule than
    its rule token: a policy that learns the pool's rules as a prior over entry tokens, whatever the family and
    the big number, raises the decoy of an entry with a positive score and lowers it with a negative one."""
    i = b - tasks.BIG
    rules = [r for g in pool_families if g != family for r in tasks.FAMILY_RULE[g]]
    return rules.count(tasks.FAMILY_DECOY["base"][family][i]) - rules.count(tasks.FAMILY_RULE[family][i])


def token_prior_report(model, base, task, traces, unwritten, base_name):
    """--token-prior: how p(right) of each entry of the pool moved from the base model to this one, split by the
    sign of its token_score and by whether a prefixed rollout writes it (docs/measurements.md, "The entry that
    falls"). Read it early in a run (e.g. a PrefixRL run of --steps 120), before the families' own successes
    decide their entries."""
    pool = [p for p in task.train if p.id in traces]
    families = [p.meta["family"] for p in pool]
    now, before = models.toy_calibration(model, pool)[0], models.toy_calibration(base, pool)[0]
    rows = [(token_score(f, b, families), np.mean(now[(f, b)]) - np.mean(before[(f, b)]), b in unwritten[p.id])
            for p, f in zip(pool, families) for b in sorted({b for b in p.meta["params"][2] if b >= tasks.BIG})]
    score, change, inside = (np.array(v) for v in zip(*rows))
    print(f"token prior: {len(rows)} entries of the pool's {len(pool)} problems; p(right) moved by {change.mean():+.3f} on "
          f"average from {base_name}; correlation of the move with the token score {np.corrcoef(score, change)[0, 1]:+.2f}")
    for name, where in (("written by a prefixed rollout", ~inside), ("no prefixed rollout writes", inside)):
        for sign, pick in (("> 0", score > 0), ("<= 0", score <= 0)):
            sel = where & pick
            print(f"  {name}, token score {sign}: {sel.sum()} entries, mean move "
                  f"{change[sel].mean() if sel.any() else float('nan'):+.3f}")


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
