"""Mutation check of the test suite: plant realistic bugs, one at a time, in a copy of the project, run
the tests meant to catch each, and report which bugs they kill and which survive.

    OMP_NUM_THREADS=1 python tests/mutation.py             # every bug: the report and the total time
    python tests/mutation.py --list                         # the bugs and their tests, nothing run
    python tests/mutation.py --only offpolicy --only sign   # the bugs whose name contains one of these

Each bug is one exact replacement of a piece of code. A bug whose piece of code is not in its file
(exactly once) stops the script before anything runs: the code changed, so update BUGS. The
unchanged copy is tested first (the same tests), so a killed bug means a test that passed now fails.
Exit code: 0 when every bug is killed, 1 otherwise."""

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP = shutil.ignore_patterns(".git", ".venv", "venv", "cache", "runs", "repro", "figures", "__pycache__", ".pytest_cache", "*.pyc")


@dataclass
class Bug:
    name: str
    file: str
    old: str
    new: str
    tests: tuple
    """the tests meant to catch it: (a pytest node id, None) or (a test file, a -k expression)"""


def loops(test, script):
    return f"tests/test_loops.py::{test}[{script}]", None


def math(k):
    return "tests/test_math.py", k


def traces(k):
    return "tests/test_traces.py", k


SEES = "test_what_the_verifier_the_batch_and_the_loss_see"
LEARNS = "test_one_step_raises_positive_and_lowers_negative_advantage_responses"
SIGN = ("utils.backward(-(weights[s:e] * logp).sum(), model)", "utils.backward((weights[s:e] * logp).sum(), model)")
SEQUENCE = "weights = loss_mask / loss_mask.sum(1, keepdim=True).clamp(min=1) / len(ids)"
ADVANTAGES = "advantages = utils.group_advantages(rewards, args.rollouts, args.std_normalize)"
BATCH = "ids, attn, loss_mask = utils.make_batch(contexts, responses, task.pad_id, args.device)"

BUGS = [
    # the five of the issue
    Bug("prefixrl: the loss also covers the prefix tokens", "prefixrl.py", BATCH,
        "ids, attn, loss_mask = utils.make_batch([p.prompt_ids for p, _ in prompts], "
        "[prefix + r for (_, prefix), r in zip(prompts, responses)], task.pad_id, args.device)",
        loops(SEES, "prefixrl")),
    Bug("prefixrl: the loss's sign flipped", "prefixrl.py", *SIGN, math("formula and prefixrl")),
    Bug("prefixrl: --loss-agg sequence computed as the token mean", "prefixrl.py", SEQUENCE, "weights = loss_mask / loss_mask.sum()",
        math("formula and prefixrl")),
    Bug("prefixrl: --std-normalize ignored", "prefixrl.py", ADVANTAGES, "advantages = utils.group_advantages(rewards, args.rollouts)",
        loops(SEES, "prefixrl")),
    Bug("standard_rl: the loss's sign flipped", "standard_rl.py", *SIGN, math("formula and standard_rl")),
    # standard RL
    Bug("standard_rl: rewards scored against the wrong problems (batch * n, not each n times)", "standard_rl.py",
        "zip(prompts, responses)", "zip(batch * args.rollouts, responses)",
        loops(SEES, "standard_rl")),
    Bug("standard_rl: no optimizer step", "standard_rl.py", "        optimizer.step()\n        optimizer.zero_grad()", "        optimizer.zero_grad()",
        loops(LEARNS, "standard_rl")),
    # PrefixRL
    Bug("prefixrl: the mix inverted (1:3 prefixed:original)", "prefixrl.py",
        "share = 1 if args.prefixed_only else args.prefixed_fraction",
        "share = 1 if args.prefixed_only else 1 - args.prefixed_fraction",
        loops("test_prefixrl_mixes_3_to_1_prefixes_of_each_problems_own_trace", "prefixrl")),
    Bug("prefixrl: the verifier scores prefix + response as the response", "prefixrl.py", "rewards = [task.reward(p, prefix, r) for",
        "rewards = [task.reward(p, [], prefix + r) for", loops(SEES, "prefixrl")),
    Bug("prefixrl: prefixes cut from another problem's trace", "utils.py", "        ids = traces[p.id].token_ids\n        trace_lengths",
        "        ids = list(traces.values())[len(out) // n_cuts].token_ids\n        trace_lengths",
        loops("test_prefixrl_mixes_3_to_1_prefixes_of_each_problems_own_trace", "prefixrl")),
    # SFT+RL
    Bug("sft_rl: the SFT loss also covers the prompt", "sft_rl.py", "utils.make_batch(contexts, targets, task.pad_id, args.device)",
        "utils.make_batch([c[:1] for c in contexts], [c[1:] + t for c, t in zip(contexts, targets)], task.pad_id, args.device)",
        loops("test_sft_phase_learns_each_problems_own_trace_and_nothing_else", "sft_rl")),
    Bug("sft_rl: the RL loss's sequence mean not divided by the batch size", "sft_rl.py", SEQUENCE,
        "weights = loss_mask / loss_mask.sum(1, keepdim=True).clamp(min=1)", math("formula and sft_rl")),
    # off-policy RL
    Bug("offpolicy_rl: a group's sampled rollouts taken from other prompts' rows", "offpolicy_rl.py",
        "groups_own = [sampled[i * own : (i + 1) * own] for i in range(len(batch))]",
        "groups_own = [sampled[i :: len(batch)] for i in range(len(batch))]",
        loops(SEES, "offpolicy_rl")),
    Bug("offpolicy_rl: behaviour log-probs one position off the mask", "offpolicy_rl.py", "behaviour[mask > 0] = torch.tensor(",
        "behaviour[mask.roll(1, 1) > 0] = torch.tensor(", loops("test_offpolicy_puts_the_trace_last_with_its_importance_weights", "offpolicy_rl")),
    Bug("offpolicy_rl: the trace left out of its group's mean", "offpolicy_rl.py", ADVANTAGES,
        "advantages = torch.tensor(rewards) - torch.tensor(rewards).view(-1, args.rollouts)[:, :-1].mean(1).repeat_interleave(args.rollouts)",
        loops(SEES, "offpolicy_rl")),
    Bug("offpolicy_rl: P(accept) multiplied in, not divided", "offpolicy_rl.py",
        "-math.log(a) * args.accept_correction",
        "math.log(a) * args.accept_correction",
        loops("test_offpolicy_puts_the_trace_last_with_its_importance_weights", "offpolicy_rl")),
    Bug("offpolicy_rl: sampled rows weighted 0 instead of 1", "offpolicy_rl.py", "token_weights = torch.ones_like(loss_mask)",
        "token_weights = torch.zeros_like(loss_mask)", loops("test_offpolicy_puts_the_trace_last_with_its_importance_weights", "offpolicy_rl")),
    # shared pieces: loss mask, log-probs, evaluation, trace collection
    Bug("utils: the loss mask one token late", "utils.py", "loss_mask[i, len(c) - 1 : len(c) + len(r) - 1] = 1",
        "loss_mask[i, len(c) : len(c) + len(r)] = 1", math("loss_mask")),
    Bug("utils: training log-probs at temperature 1, not the sampling temperature", "utils.py",
        "logp = torch.log_softmax(logits.float() / temperature, -1)", "logp = torch.log_softmax(logits.float(), -1)",
        math("formula and standard_rl")),
    Bug("utils.GradStd: micro-batch gradients not scaled up to full-batch estimates", "utils.py",
        "self.sq_norms += self.rows / rows * sq", "self.sq_norms += sq",
        ("tests/test_offpolicy.py", "grad_std")),
    Bug("utils.evaluate: samples counted for the wrong problems", "utils.py", "        p = problems[i // n]\n        counts[i // n] +=",
        "        p = problems[i % len(problems)]\n        counts[i % len(problems)] +=", math("evaluate")),
    Bug("utils.save_final_eval: held-out counts taken on the training problems", "utils.py",
        "_, heldout_counts = evaluate(model, task, task.heldout, n,", "_, heldout_counts = evaluate(model, task, train_problems, n,",
        math("final_eval")),
    Bug("utils.collect_traces: the last round overdraws the budget", "utils.py", "todo = [(p, min(per, budget - attempts[p.id])) for p in active]",
        "todo = [(p, per) for p in active]", traces("rejection")),
    Bug("utils.collect_traces: failed problems' samples not charged", "utils.py", "    return traces, sum(flops.values())",
        "    return traces, sum(t.flops for t in traces.values())", traces("rejection")),
    Bug("utils.collect_traces: the cache key lacks the temperature", "utils.py", "budget=budget, temperature=temperature, seed=seed,",
        "budget=budget, seed=seed,", traces("another_setting")),
    Bug("utils.token_logprobs: rollouts continue a shared context one position off", "utils.py",
        "position = torch.tensor(starts, device=ids.device)[:, None] + 1 + ", "position = torch.tensor(starts, device=ids.device)[:, None] + ",
        ("tests/test_real_lm.py", "shared")),
    Bug("models.load_model: dropout left on (the loss sees another policy than sampling)", "models.py", "            m.p = 0.0", "            pass",
        ("tests/test_real_lm.py", "dropout")),
]


def check_targets(root, bugs):
    """Every bug's code must be in its file exactly once."""
    for bug in bugs:
        with open(os.path.join(root, bug.file)) as f:
            n = f.read().count(bug.old)
        if n != 1:
            sys.exit(f"error: bug '{bug.name}': its code is in {bug.file} {n} times, not once (the code changed: update BUGS in tests/mutation.py)\n"
                     f"  looked for: {bug.old!r}")


def pytest(copy, tests, timeout):
    """Run pytest on [(node id or file, -k expression or None)] in the copy: (exit code, the first failing or
    erroring test, seconds)."""
    nodes = [t for t, k in tests if k is None]
    ks = [k for _, k in tests if k is not None]
    files = sorted({t for t, k in tests if k is not None})
    selection = nodes + files + (["-k", " or ".join(f"({k})" for k in ks)] if ks else [])
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), PYTHONDONTWRITEBYTECODE="1",
               PREFIXRL_TEST_CACHE=os.path.join(os.path.dirname(copy), "cache"))  # the 20-step toy model, made once
    start = time.time()
    try:
        out = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-rfE", "-p", "no:cacheprovider", *selection],
                             cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout}s", time.time() - start
    first = re.search(r"^(FAILED|ERROR) (\S+)", out.stdout, re.M)
    why = re.search(r"^E +(.+)$", out.stdout, re.M)  # the first line of the failure: an assertion, or an exception
    last = (out.stdout.strip().splitlines() or [""])[-1]
    caught = f"{first.group(1).lower()}: {first.group(2)}" + (f" ({why.group(1).strip()[:90]})" if why else "") if first else last
    return out.returncode, caught, time.time() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", default=[], help="run the bugs whose name contains this (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the bugs and their tests, run nothing")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per pytest run")
    args = parser.parse_args()
    bugs = [b for b in BUGS if not args.only or any(s in b.name for s in args.only)]
    if not bugs:
        sys.exit(f"error: no bug's name contains {' or '.join(args.only)} (see --list)")
    check_targets(ROOT, bugs)
    if args.list:
        for b in bugs:
            print(f"{b.name}\n    {b.file}; tests: {b.tests[0]}" + (f" -k '{b.tests[1]}'" if b.tests[1] else ""))
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the running pytest is stopped and the copy removed
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="mutation-") as tmp:
        copy = os.path.join(tmp, "project")
        shutil.copytree(ROOT, copy, ignore=SKIP, symlinks=True)
        print(f"{len(bugs)} bugs; first the unchanged copy in {copy}", flush=True)
        selected = sorted({b.tests for b in bugs}, key=str)
        for group in ([t for t in selected if t[1] is None], [t for t in selected if t[1] is not None]):
            rc, first, _ = pytest(copy, group, args.timeout) if group else (0, "", 0)
            if rc != 0:
                sys.exit(f"error: the unchanged project fails its tests ({first}); fix that first")
        print(f"unchanged copy: the selected tests pass ({time.time() - start:.0f}s)\n", flush=True)
        rows = []
        for i, bug in enumerate(bugs, 1):
            path = os.path.join(copy, bug.file)
            with open(path) as f:
                original = f.read()
            with open(path, "w") as f:
                f.write(original.replace(bug.old, bug.new))
            try:
                rc, first, secs = pytest(copy, [bug.tests], args.timeout)
            finally:
                with open(path, "w") as f:
                    f.write(original)
            result = "killed" if rc == 1 else "SURVIVED" if rc == 0 else f"error (exit {rc})"
            rows.append((bug, result, first if rc else "", secs))
            print(f"[{i}/{len(bugs)}] {result:8s} {secs:4.0f}s  {bug.name}" + (f"  <- {first}" if rc else ""), flush=True)
    total = time.time() - start
    print("\n| planted bug | file | result | caught by | s |\n| --- | --- | --- | --- | --- |")
    for bug, result, first, secs in rows:
        print(f"| {bug.name} | {bug.file} | {result} | {first} | {secs:.0f} |")
    killed = sum(r == "killed" for _, r, _, _ in rows)
    print(f"\n{killed}/{len(rows)} bugs killed; {total / 60:.1f} min in all, the unchanged copy's run included "
          f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')})")
    return 0 if killed == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
