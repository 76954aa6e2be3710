"""A worked example of PrefixRL on the default toy: one problem, its trace, the three cuts, and one step's
batch (ids, loss_mask, rewards, advantages) for a prefixed and an original prompt, token by token.

    python docs/worked_example.py            # print it
    python docs/worked_example.py --write    # rewrite docs/worked-example.md (tests/test_docs.py checks it)

It runs in seconds and needs no model: the problem, the cuts, the batch, the rewards and the
advantages come from the functions the scripts call, with prefixrl.py's default flags. Two things are
stand-ins, said where they are used: the trace is the exact solution (tasks.toy_solve), the one that
rejection sampling finds, and the rollouts are the noisy teacher the base model was pretrained to imitate.
"""

import itertools
import os
import sys
import textwrap

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import prefixrl  # noqa: E402
import tasks  # noqa: E402
import utils  # noqa: E402

OUT = os.path.join(ROOT, "docs", "worked-example.md")
PREFIXRL_LINES = """\
prompts = [b for b in batch for _ in range(args.rollouts)]  # each one n times
contexts = [p.prompt_ids + prefix for p, prefix in prompts]
rewards = [task.reward(p, prefix, r) for (p, prefix), r in zip(prompts, responses)]
advantages = utils.group_advantages(rewards, args.rollouts, args.std_normalize)
ids, attn, loss_mask = utils.make_batch(contexts, responses, task.pad_id, args.device)"""
"""prefixrl.py's lines that build a step's batch, quoted on the page; render() refuses to run if prefixrl.py
no longer has them"""


def words(ids):
    return [tasks.VOCAB[i] for i in ids]


def table(rows):
    """Rows of cells as aligned text: each column as wide as its widest cell."""
    widths = [max(len(row[c]) for row in rows if c < len(row)) for c in range(max(map(len, rows)))]
    return "\n".join(" ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def teacher_rollout(problem, prefix, rng):
    """Stand-in for a base-model sample: the noisy teacher it was pretrained on, continuing after the prefix.
    On a hard step it adds its family's rule or its decoy equally often (the base model: the rule 0.49 of the time)."""
    return tasks.toy_teacher_continuation(problem, prefix, rng)


def render():
    with open(os.path.join(ROOT, "prefixrl.py")) as f:
        source = [line.strip() for line in f]
    missing = [line for line in PREFIXRL_LINES.splitlines() if line not in source]
    if missing:
        raise SystemExit(f"docs/worked_example.py quotes a line prefixrl.py no longer has: {missing[0]!r}; update PREFIXRL_LINES and the code below it")
    args = prefixrl.Args()
    task = tasks.load_task(args, tokenizer=None)
    problem = task.train[0]
    family, x0, adds = problem.meta["params"]
    out = [f"""# A worked example: one PrefixRL step, token by token

Printed by `python docs/worked_example.py` in seconds, with no model; `tests/test_docs.py` regenerates
it and fails if this page differs. The task, the cuts, the batch, the rewards and the advantages come from
the functions `prefixrl.py` calls (`tasks.load_task`, `utils.cut_prefixes`, `task.reward`,
`utils.group_advantages`, `utils.make_batch`) with its default flags. Two stand-ins, so that nothing has to be
pretrained: the trace is the exact solution, and the rollouts come from the noisy teacher the base model
was pretrained to imitate.

## 1. A problem

`{problem.id}`, the first of the default task's {len(task.train)} training candidates. A solution writes the
running sum x_1 … x_{len(adds)} mod {tasks.MOD}, then `=` and the subtotals after each third. Adding b ≤ {tasks.BIG - 1} is an
easy step (x + b); adding b ≥ {tasks.BIG} is a hard step, which in family F{family} follows the family's table
(`tasks.FAMILY_RULE`): adding {", ".join(f"{b} adds {r} more" for b, r in zip(range(tasks.BIG, tasks.MOD), tasks.FAMILY_RULE[family]))}.
A hard step writes the entry it adds as a token (`r{tasks.FAMILY_RULE[family][0]}`: {tasks.FAMILY_RULE[family][0]} more), then the value.
The base model learned from a teacher that added its decoy ({", ".join(map(str, tasks.FAMILY_DECOY["base"][family]))} more,
`tasks.FAMILY_DECOY`) just as often, so only a verified success tells the two apart.

```
{table([["prompt", *words(problem.prompt_ids)], ["", "", "", "", *("hard" if b >= tasks.BIG else "easy" for b in adds)]])}
```
"""]

    # THE TRACE: what rejection sampling finds (its values are all right: a wrong value stays wrong)
    trace = tasks.toy_solution_ids(*tasks.toy_solve(problem.meta["params"]))
    end = task.reasoning_end(problem, trace)
    out.append(f"""## 2. Its trace

The correct solution, written here by `tasks.toy_solve`. In a run, rejection sampling from the base model
finds it (`utils.collect_traces`, up to `--trace-budget {args.trace_budget}` samples per problem) and the
sampling cost is charged to PrefixRL. `task.reasoning_end` = {end}: the tokens before the answer first
shows (`=`), the span the cuts are drawn from, so that no prefix holds the answer.

```
{table([["position", *map(str, range(len(trace)))], ["trace", *words(trace)]])}
```
""")

    # THE CUTS: drawn once per trace, fixed for the whole run
    cuts = utils.cut_prefixes(task, [problem], {problem.id: utils.Trace(problem.id, trace, "", 1, 0.0, [])},
                              args.cuts_per_trace, args.cut_min, args.cut_max, args.trace_seed)
    out.append(f"""## 3. The three cuts

`utils.cut_prefixes` cuts the trace at `--cuts-per-trace {args.cuts_per_trace}` points drawn uniformly in
`--cut-min {args.cut_min}` … `--cut-max {args.cut_max}` of its {end} reasoning tokens, once, from `--trace-seed
{args.trace_seed}`: the same prefixes all run. (In a run the draws follow the other problems' cuts, so the
positions differ; here this problem is the only one.) Each (problem, prefix) pair is a prefixed problem.

```
{table([[f"cut {len(prefix)}", "prefix", *words(prefix)] for _, prefix in cuts])}
```
""")

    # ONE STEP'S BATCH: prefixrl.py's lines, for one prefixed and one original prompt
    batch = [max(cuts, key=lambda c: len(c[1])), (problem, [])]
    prompts = [b for b in batch for _ in range(args.rollouts)]
    contexts = [p.prompt_ids + prefix for p, prefix in prompts]
    for seed in itertools.count():  # the first seed of the stand-in rollouts whose prefixed group has a success
        rng = np.random.default_rng(seed)
        responses = [teacher_rollout(p, prefix, rng) for p, prefix in batch for _ in range(args.rollouts)]
        rewards = [task.reward(p, prefix, r) for (p, prefix), r in zip(prompts, responses)]
        if any(rewards[: args.rollouts]):
            break
    advantages = utils.group_advantages(rewards, args.rollouts, args.std_normalize)
    ids, attn, loss_mask = utils.make_batch(contexts, responses, task.pad_id, "cpu")

    rows = [["row", "reward", "advantage", "position", *map(str, range(ids.shape[1]))]]
    for i in range(len(ids)):
        if i % args.rollouts == 0:
            rows.append([])
        rows.append([str(i), f"{rewards[i]:.0f}", f"{advantages[i].item():+.3f}", "ids", *words(ids[i].tolist())])
        rows.append(["", "", "", "loss_mask", "", *("1" if m else "·" for m in loss_mask[i].tolist())])
    n = args.rollouts
    n_prefixed = args.prompts_per_step if args.prefixed_only else round(args.prompts_per_step * args.prefixed_fraction)
    rest = tasks.toy_teacher_continuation(problem, batch[0][1], rng=None)  # the exact rest after the prefix
    hard_left, hard = sum(i in tasks.ENTRIES for i in rest), sum(b >= tasks.BIG for b in adds)
    p_group = 1 - (1 - tasks.TEACHER_P_CORRECT ** hard_left) ** n
    tried = "" if seed == 0 else f" (seed{'s 0–' if seed > 1 else ' '}{seed - 1} gave none)"
    wins = int(sum(rewards[:n]))
    original = ("The original group is all-negative: every reward is 0, so every advantage is exactly 0, and it adds "
                "nothing to the gradient. That is standard RL's stall on this toy, where the base model's pass@1 is "
                "about 5e-4 (README)." if not any(rewards[n:]) else "The original group has a success too.")
    ending = textwrap.fill(f"The prefixed group has {wins} success{'es' if wins > 1 else ''} in {n}: its advantages are reward − "
                           f"{sum(rewards[:n]) / n:.3f} (the group mean), not all zero, so its rows carry a gradient, and only "
                           f"through their response tokens. {original}", width=105)
    out.append(f"""## 4. One step's batch

A step of `prefixrl.py` samples `--rollouts {n}` responses for each of {args.prompts_per_step} prompts,
{n_prefixed} prefixed and {args.prompts_per_step - n_prefixed} original (the 3:1 mix). Here are two of its groups: the longest cut's
prefixed prompt (rows 0–{n - 1}) and the same problem's original prompt (rows {n}–{2 * n - 1}). These are
`prefixrl.py`'s lines; a prefixed prompt's context is the problem's prompt followed by the prefix, which
the policy continues:

```python
{PREFIXRL_LINES}
```

The responses stand in for the policy's samples: the noisy teacher, which takes the rule or the decoy on
each hard step's entry with probability {tasks.TEACHER_P_CORRECT} each (the base model: 0.49 for the rule's entry, `bench/calibrate_toy.py`).
After this prefix {hard_left} hard steps are left, so a group of {n} has a success with probability
1 − (1 − {tasks.TEACHER_P_CORRECT}^{hard_left})^{n} = {p_group:.2f}; the original prompt needs all {hard} right. The teacher's seed is {seed},
the first from 0 whose prefixed group has a success{tried}.

`ids[i]` is row i: context, response, then `<pad>` up to the longest row (none here: every toy solution
has the same length). `loss_mask[i, t]` weights the log-prob of token t+1 given the tokens before it, so
it is shown under token t+1 (position 0 is never predicted). It is 1 exactly on the response tokens: the
prompt and the prefix are context, masked like pads, so the policy learns only from tokens it sampled
itself. With `--loss-agg token` a masked token of row i weighs advantage_i / {int(loss_mask.sum().item())}, the number of
masked tokens in the batch (`reinforce_backward`).

```
{table(rows)}
```

{ending}

Row {n} as the `ids` tensor holds it: `{ids[n].tolist()}`.
""")
    return "\n".join(out)


def main():
    text = render()
    if "--write" in sys.argv[1:]:
        with open(OUT, "w") as f:
            f.write(text)
        print(f"wrote {os.path.relpath(OUT)}")
    else:
        print(text)


if __name__ == "__main__":
    main()
