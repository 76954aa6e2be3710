"""Export the training mixture of prefixrl.py (or standard_rl.py) as a dataset, for TRL's GRPOTrainer.

    python scale/export.py --out data/toy-prefixrl                    # prefixrl.py's default run, as data
    python scale/export.py --algo standard_rl --out data/toy-rl       # standard RL: the original problems only
    python scale/export.py --prefixed-only --out data/toy-prefixed    # prefixed problems only (paper §4)

It takes prefixrl.py's flags and finds the traces as the script does (collected once with this
repository's sampler, cached in --cache-dir, or --traces FILE), cuts the same prefixes, and draws
every step's prompts with the same seeded calls, so row for row the data is what `prefixrl.py --seed
S` samples from. At scale collect the traces with vLLM first and give the file with --traces:

    python scale/collect_traces.py <the task and trace flags> --out traces.json
    python scale/export.py <the same flags> --traces traces.json --out data/...

OUT gets:
- train.jsonl: --steps x --prompts-per-step rows, step after step; each step holds the script's mix
  (round(--prompts-per-step x --prefixed-fraction) prefixed problems, the rest original), in its order.
  Fields: prompt (the text of prompt_ids, special tokens kept), prompt_ids (the problem's prompt, then
  the prefix: exactly the ids the script samples from), prefix_ids (the trace's tokens that the policy
  continues, never scored), problem_id, answer, prefixed, step.
- heldout.jsonl: the held-out problems, without prefix, in the same fields.
- meta.json: the flags, the model id, the traces' sampling FLOPs (charged to prefixrl, as the script
  does), and how many rows' text re-tokenizes to their prompt_ids. scale/grpo.py rebuilds the task and
  its verifier from it.

Load it with datasets.load_dataset("json", data_files={"train": "OUT/train.jsonl"}), or train on it
with `python scale/grpo.py --data OUT`.
"""

import json
import os
import sys
from dataclasses import dataclass
from typing import Literal

import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import models  # noqa: E402
import prefixrl  # noqa: E402
import tasks  # noqa: E402
import utils  # noqa: E402

FORMAT = "prefixrl-export-v1"


@dataclass
class Args(prefixrl.Args):
    out: str = "data/export"
    """directory for train.jsonl, heldout.jsonl and meta.json"""
    algo: Literal["prefixrl", "standard_rl"] = "prefixrl"
    """whose prompts: prefixrl (prefixed and original problems) or standard_rl (original problems only)"""


def text_round_trips(tokenizer, texts, ids):
    """Per row: does the tokenizer, called as TRL calls it on a text prompt, give back exactly these ids?"""
    return [list(got) == list(want) for got, want in zip(tokenizer(text=list(texts))["input_ids"], ids)]


def main(args: Args):
    models.check_args(args)
    rng, _ = utils.seed_everything(args.seed, args.threads)

    # MODEL, PROBLEMS, TRACES: as the scripts find them
    model, tokenizer, model_id = models.load_model(args.model, args.cache_dir, args.device, args.toy_pretrain_steps, toy_length=args.toy_length)
    task = tasks.load_task(args, tokenizer)
    if args.traces:
        traces, trace_flops = utils.load_traces(args.traces, problems=task.train)
        traces = tasks.retokenize_traces(traces, task, tokenizer)
    else:
        trace_path = utils.trace_cache_path(args.cache_dir, model_id, task, args.trace_budget, args.trace_seed)
        if args.model not in models.TOY_MODELS and not os.path.exists(trace_path):
            print("collecting the traces with this repository's sampler; at scale, collect them "
                  "with scale/collect_traces.py (vLLM) and give --traces FILE")
        traces, trace_flops = utils.collect_traces(model, task, task.train, args.trace_budget, args.trace_temperature, args.trace_seed, trace_path, model_id=model_id,
                                                   shipped=models.shipped_traces(model_id))
    if not traces:
        raise utils.InputError(f"no correct trace found for any of {len(task.train)} problems within --trace-budget {args.trace_budget}; raise it or lower --hard-min")
    originals = [p for p in task.train if p.id in traces]

    # EVERY STEP'S PROMPTS, drawn with the scripts' calls on the run's seeded generator, in their order
    steps = []
    if args.algo == "prefixrl":
        prefixed = utils.cut_prefixes(task, originals, traces, args.cuts_per_trace, args.cut_min, args.cut_max, args.trace_seed)
        n_prefixed = args.prompts_per_step if args.prefixed_only else round(args.prompts_per_step * args.prefixed_fraction)
        for _ in range(args.steps):
            batch = [prefixed[i] for i in rng.choice(len(prefixed), n_prefixed, replace=len(prefixed) < n_prefixed)]
            n_original = args.prompts_per_step - n_prefixed
            batch += [(originals[i], []) for i in rng.choice(len(originals), n_original, replace=len(originals) < n_original)]
            steps.append([batch[i] for i in rng.permutation(len(batch))])
    else:
        trace_flops = 0.0  # standard RL does not use the traces, so it does not pay for them
        for _ in range(args.steps):
            steps.append([(originals[i], []) for i in rng.choice(len(originals), args.prompts_per_step, replace=len(originals) < args.prompts_per_step)])

    # ROWS: prompt_ids = the problem's prompt + the prefix; the text is for TRL, which tokenizes it
    def row(problem, prefix, step):
        ids = list(problem.prompt_ids) + list(prefix)
        return dict(prompt=tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False), prompt_ids=ids,
                    prefix_ids=list(prefix), problem_id=problem.id, answer=problem.answer, prefixed=len(prefix) > 0, step=step)

    train = [row(p, prefix, s) for s, batch in enumerate(steps) for p, prefix in batch]
    heldout = [row(p, [], None) for p in task.heldout]
    exact = text_round_trips(tokenizer, [r["prompt"] for r in train], [r["prompt_ids"] for r in train])
    os.makedirs(args.out, exist_ok=True)
    for name, rows in (("train.jsonl", train), ("heldout.jsonl", heldout)):
        utils.write_atomic(os.path.join(args.out, name), "".join(json.dumps(r) + "\n" for r in rows))
    meta = dict(format=FORMAT, algo=args.algo, args=vars(args), model_id=model_id, trace_flops=trace_flops, n_params=utils.count_params(model),
                rows=len(train), heldout_rows=len(heldout), problems=len(originals), traces=len(traces), eos_id=task.eos_id,
                text_round_trips=sum(exact))
    utils.write_atomic(os.path.join(args.out, "meta.json"), json.dumps(meta, indent=2))
    n_pre = sum(r["prefixed"] for r in train)
    print(f"{args.out}: {len(train)} rows ({args.steps} steps x {args.prompts_per_step} prompts; {n_pre} prefixed, {len(train) - n_pre} original) "
          f"from {len(originals)} problems with a trace; {len(heldout)} held-out; the text of {sum(exact)}/{len(train)} rows re-tokenizes to its prompt_ids")


if __name__ == "__main__":
    with utils.clean_errors():
        main(tyro.cli(Args, description=__doc__))
