"""How far one lucky success moves the toy base model: the reason standard RL does not stall on the toy.

For each of LUCKY problems drawn from those with a trace, alone: builds one standard-RL batch as
standard_rl.py does (--prompts-per-step prompts x --rollouts rollouts of the base model), puts the
problem's correct trace in place of one rollout, takes the REINFORCE step with AdamW at --lr, then
steps on all-negative batches (zero gradient, as a stalled run has): AdamW's first moment keeps moving
the weights on those steps, as in standard_rl.py. Prints the implied change of the family's exact pass@1,
(p'/p)^H with p its mean p(right | hard step), after the success step and after k zero-gradient steps,
and the largest change of p(right | hard step) in any other family.

    python bench/one_success.py                 # the default toy and RL flags
    python bench/one_success.py --lr 3e-5

It takes prefixrl.py's flags (model, cache, task, trace and RL flags matter).
"""

import copy
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import models  # noqa: E402
import prefixrl  # noqa: E402
import standard_rl  # noqa: E402
import tasks  # noqa: E402
import utils  # noqa: E402

AFTER = (0, 1, 4, 10, 30)
"""zero-gradient steps after the success at which to measure (AdamW's first moment decays by 0.9 a step)"""
LUCKY = 6
"""problems tried, each alone, drawn at random from those with a trace"""


def main(args: prefixrl.Args):
    models.check_args(args)
    rng, generator = utils.seed_everything(args.seed, args.threads)
    model, _, model_id = models.load_model(args.model, args.cache_dir, "cpu", args.toy_pretrain_steps, toy_length=args.toy_length)
    task = tasks.make_toy_task(args.toy_length, args.hard_min, args.hard_max, args.n_train, args.n_heldout, args.task_seed)
    if args.traces:
        traces, _ = utils.load_traces(args.traces, problems=task.train)
    else:
        trace_path = utils.trace_cache_path(args.cache_dir, model_id, task, args.trace_budget, args.trace_seed)
        traces, _ = utils.collect_traces(model, task, task.train, args.trace_budget, args.trace_temperature, args.trace_seed, trace_path, model_id=model_id)
    if not traces:
        raise utils.InputError(f"no correct trace within --trace-budget {args.trace_budget}: nothing to put in the batch")
    originals = [p for p in task.train if p.id in traces]
    problems = task.train + task.heldout

    def p_right():  # mean p(right | hard step), indexed by family (NaN for a family with no problem here)
        by_family = models.by_family(models.toy_calibration(model, problems)[0])
        return np.array([np.mean(by_family[f]) if f in by_family else np.nan for f in range(tasks.FAMILIES)])

    initial = copy.deepcopy(model.state_dict())
    print(f"lr {args.lr}; {min(LUCKY, len(originals))} problems, each alone: its family's pass@1 (x its own) after the success step and")
    print(f"after k zero-gradient steps, and the largest change of p(right | hard step) in any other family")
    print(f"{'family':>6} {'H':>3} {'p(right)':>8} | " + " ".join(f"{'k=' + str(k):>6}" for k in AFTER) + f" | others, k={AFTER[-1]}")
    for lucky in [originals[i] for i in rng.choice(len(originals), min(LUCKY, len(originals)), replace=False)]:
        model.load_state_dict(initial)
        family, hard = lucky.meta["params"][0], lucky.meta["hard"]

        # THE BATCH: the base model's rollouts, the first one replaced by the lucky problem's correct trace
        batch = [p for p in [lucky] + [originals[i] for i in rng.choice(len(originals), args.prompts_per_step - 1)] for _ in range(args.rollouts)]
        contexts = [p.prompt_ids for p in batch]
        model.eval()
        responses, _, _ = utils.sample(model, contexts, task.max_new_tokens, args.temperature, task.eos_id, task.pad_id, generator)
        responses = [traces[lucky.id].token_ids] + [list(r) for r in responses[1:]]
        rewards = [task.reward(p, [], r) for p, r in zip(batch, responses)]

        # ONE SUCCESS, THEN ZERO GRADIENTS, from AdamW's state as a stalled run leaves it (zero-gradient steps)
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)

        def zero_gradient_step():
            for q in model.parameters():
                q.grad = torch.zeros_like(q)
            optimizer.step()

        for _ in range(AFTER[-1]):
            zero_gradient_step()
        before = p_right()
        ids, attn, loss_mask = utils.make_batch(contexts, responses, task.pad_id, "cpu")
        model.train()
        optimizer.zero_grad()
        standard_rl.reinforce_backward(model, ids, attn, loss_mask, utils.group_advantages(rewards, args.rollouts), args.micro_batch, args.loss_agg, args.temperature)
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        ratios, done = [], 0
        for k in AFTER:
            while done < k:
                zero_gradient_step()
                done += 1
            now = p_right()
            ratios.append((now[family] / before[family]) ** hard)
        others = np.nanmax(np.abs(now - before)[[f for f in range(len(now)) if f != family]])
        extra = "" if sum(rewards) == 1 else f"  ({int(sum(rewards)) - 1} more successes in the batch)"
        print(f"{family:>6} {hard:>3} {before[family]:>8.3f} | " + " ".join(f"{r:>6.1f}" for r in ratios) + f" | {others:.3f}{extra}")


if __name__ == "__main__":
    with utils.clean_errors():
        main(utils.cli(prefixrl.Args, __doc__))
