"""Writes docs/diffs.md: the diffs of the three other algorithms against standard_rl.py, each hunk with a
one-sentence note on what it does for the algorithm.

    python docs/diffs.py            # rewrite docs/diffs.md from the scripts
    python docs/diffs.py --check    # exit 1 if docs/diffs.md is not current (tests/test_docs.py checks it)

A note belongs to a hunk by a phrase: NOTES gives (phrase, note) pairs per script, and a note goes to the
one hunk whose changed lines contain its phrase. A hunk without a note, a phrase found in no hunk or in
more than one, stops the script with a line naming it: after changing a script, give its new hunks a
note and fix the phrases that no longer match. A change next to an existing hunk joins it and keeps its
note: when the page changes, read the notes of the hunks that changed. The diff is a shortest one (the changed lines that
`diff standard_rl.py X.py | grep -c '^[<>]'` counts), computed here so the page is the same everywhere.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "docs", "diffs.md")
BASE = "standard_rl.py"
SCRIPTS = ("prefixrl.py", "sft_rl.py", "offpolicy_rl.py")
CONTEXT = 1  # unchanged lines shown around each change
# the project's bounds on each diff (changed lines of <= 100 characters): PrefixRL differs in few;
# SFT+RL adds a whole phase and off-policy RL its importance weights
MAX_CHANGED = {"prefixrl.py": 70, "sft_rl.py": 125, "offpolicy_rl.py": 125}

NOTES = {
    "prefixrl.py": [
        ("PrefixRL: on-policy RL on hard problems",
         "The script's run commands and the method in one paragraph: prefixes of one correct trace per problem, a 3:1 mix of prefixed and original problems, and REINFORCE with the loss masked on the prefix."),
        ("cuts_per_trace: int",
         "PrefixRL's flags: where each trace is cut (3 fixed cuts in 40-80% of its reasoning) and what share of each step's prompts is prefixed."),
        ('resume_args(args, "prefixrl")',
         "The script's own name, which `--resume` checks against the run dir's and which names the run."),
        ("PREFIXED PROBLEMS: fixed token-level cuts",
         "Standard RL uses the traces only to choose its pool of problems; PrefixRL trains on them, so its FLOPs start at their sampling cost. Each trace is cut once into fixed prefixes: the (problem, prefix) pairs of the whole run, `n_prefixed` of them in each step."),
        ('desc="PrefixRL"',
         "The progress bar's name."),
        ("if args.prefixed_only else ():  # back-generalization",
         "With `--prefixed-only`, each evaluation also measures pass@1 given the first 20-80% of each trace's reasoning (back-generalization, paper §4)."),
        ("ROLLOUTS: n per prompt, from a 3:1 mix",
         "Each step draws prefixed and original prompts 3:1 in a shuffled order; a prefixed prompt's context is the problem's prompt followed by the prefix, which the policy continues."),
        ("the answer must be the response's own",
         "The verifier scores the response alone: each prefix ends before its trace's answer, and is never scored."),
        ("THE PREFIX MASK",
         "The prefix mask: the prefix is in the context, not the response, so `make_batch` gives it `loss_mask` 0 like the prompt, and the gradient comes only from tokens the policy sampled."),
        ("plain = np.array(prefix_tokens) == 0",
         "The metrics also report the original (no-prefix) groups alone, the numbers to compare with standard RL's."),
    ],
    "sft_rl.py": [
        ("SFT+RL: supervised fine-tuning",
         "The baseline in one paragraph: SFT on the full traces, stopped on held-out traces, then standard RL."),
        ("sft_steps: int",
         "SFT's flags: its most steps, the share of traces held out to stop it, its learning rate and batch."),
        ("def sft_backward",
         "SFT's pieces: the token-mean cross-entropy on trace tokens, the held-out traces' NLL that stops SFT, and the entropy of fresh rollouts measured as RL measures it."),
        ('resume_args(args, "sft_rl")',
         "The script's own name, which `--resume` checks against the run dir's and which names the run."),
        ("flops = trace_flops",
         "SFT trains on the traces, so this method pays for them: the FLOPs start at their sampling cost."),
        ("sft_optimizer = utils.adamw",
         "The SFT phase: its own optimizer, a held-out share of the traces, next-token steps on the rest until the held-out NLL stops falling, then RL from step 0 (or where a resumed run's RL stopped)."),
        ('phase="rl"',
         "RL's checkpoints record the phase, so `--resume` does not go back to SFT."),
    ],
    "offpolicy_rl.py": [
        ("Importance-weighted off-policy RL",
         "The baseline in one paragraph: each problem's stored trace joins its group, weighted by an importance ratio or by LUFFY's policy shaping."),
        ('ratio: Literal["token", "sequence"]',
         "Its flags: token- or sequence-level ratios, their truncation, LUFFY's shaping, and the rejection-sampling correction."),
        ("def trace_weights",
         "The trace tokens' weights: pi_theta over the behaviour density pi_0 / P(accept), or LUFFY's shaping factor; `reinforce_backward` takes them as an extra argument."),
        ("and the importance weights",
         "Each token's weight in the loss is multiplied by its importance weight (1 on the on-policy rollouts' tokens)."),
        ('resume_args(args, "offpolicy_rl")',
         "The script's own name, which `--resume` checks against the run dir's and which names the run."),
        ("importance weights need each trace token's behaviour log-prob",
         "Traces without per-token behaviour log-probs (re-tokenized from another model) are refused unless `--shaping`; the traces join the groups, so this method pays for them: the FLOPs start at their sampling cost."),
        ('desc="off-policy RL"',
         "The progress bar's name."),
        ("ROLLOUTS: n - 1 per prompt",
         "Each group is n - 1 samples and the problem's stored trace."),
        ("IMPORTANCE WEIGHTS of the trace tokens",
         "The trace is each group's last row, and its tokens get importance weights from their stored behaviour log-probs and the policy's log-probs at the sampling temperature."),
        ("token_weights, args.micro_batch_tokens",
         "The loss takes the importance weights."),
        ("trace rows' weights",
         "The metrics describe the on-policy rollouts (the trace is not a sample) and the range of the importance weights."),
    ],
}


class NoteError(Exception):
    """A hunk without a note, or a note without its one hunk."""


def shortest_diff(a, b):
    """[(tag, line)] turning lines a into lines b with the fewest changed lines (a longest common
    subsequence); tag ' ' kept, '-' removed, '+' added; at a change, removed lines come first."""
    lcs = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a) - 1, -1, -1):
        for j in range(len(b) - 1, -1, -1):
            lcs[i][j] = lcs[i + 1][j + 1] + 1 if a[i] == b[j] else max(lcs[i + 1][j], lcs[i][j + 1])
    out, i, j = [], 0, 0
    while i < len(a) or j < len(b):
        if i < len(a) and j < len(b) and a[i] == b[j]:
            out, i, j = out + [(" ", a[i])], i + 1, j + 1
        elif j == len(b) or (i < len(a) and lcs[i + 1][j] >= lcs[i][j + 1]):
            out, i = out + [("-", a[i])], i + 1
        else:
            out, j = out + [("+", b[j])], j + 1
    return out


def hunks(a, b, context=CONTEXT):
    """The diff as unified-diff hunks: [(header, [(tag, line)])], `context` kept lines around each change."""
    ops = shortest_diff(a, b)
    changed = [k for k, (tag, _) in enumerate(ops) if tag != " "]
    groups = []  # [first op, last op] of each hunk
    for k in changed:
        if groups and k - groups[-1][1] <= 2 * context + 1:
            groups[-1][1] = k
        else:
            groups.append([k, k])
    out = []
    for first, last in groups:
        lo, hi = max(0, first - context), min(len(ops), last + context + 1)
        start_a = sum(tag != "+" for tag, _ in ops[:lo])
        start_b = sum(tag != "-" for tag, _ in ops[:lo])
        len_a, len_b = sum(tag != "+" for tag, _ in ops[lo:hi]), sum(tag != "-" for tag, _ in ops[lo:hi])
        out.append((f"@@ -{start_a + 1},{len_a} +{start_b + 1},{len_b} @@", ops[lo:hi]))
    return out


def annotate(script, script_hunks, notes):
    """Each hunk's note: the one whose phrase its changed lines contain. Raises NoteError naming what is off."""
    found = {phrase: [k for k, (_, ops) in enumerate(script_hunks) if any(tag != " " and phrase in line for tag, line in ops)]
             for phrase, _ in notes}
    for phrase, ks in found.items():
        if len(ks) != 1:
            where = "no hunk" if not ks else f"hunks {', '.join(script_hunks[k][0] for k in ks)}"
            raise NoteError(f"docs/diffs.py: the note for {script} keyed by {phrase!r} matches {where}; make its phrase match exactly one hunk")
    by_hunk = {}
    for phrase, note in notes:
        by_hunk.setdefault(found[phrase][0], []).append(note)
    for k, (header, ops) in enumerate(script_hunks):
        first = next(line for tag, line in ops if tag != " ").strip()
        if len(by_hunk.get(k, [])) != 1:
            problem = "has no note" if k not in by_hunk else f"has {len(by_hunk[k])} notes (hunks merged?)"
            raise NoteError(f"docs/diffs.py: {script} hunk {header} ({first[:60]!r}) {problem}; give it one note in NOTES, keyed by a phrase from its changed lines")
    return [by_hunk[k][0] for k in range(len(script_hunks))]


def read(name):
    with open(os.path.join(ROOT, name)) as f:
        return f.read()


def render(texts=None, notes=NOTES):
    """docs/diffs.md as a string; `texts` maps file names to their text (default: the files)."""
    texts = texts or {name: read(name) for name in (BASE, *SCRIPTS)}
    base = texts[BASE].splitlines()
    sections, counts = [], []
    for script in SCRIPTS:
        script_hunks = hunks(base, texts[script].splitlines())
        n_changed = sum(tag != " " for _, ops in script_hunks for tag, _ in ops)
        counts.append(f"| `{script}` | {len(texts[script].splitlines())} | {n_changed} | {MAX_CHANGED[script]} "
                      f"| {len(script_hunks)} |")
        parts = [f"## `{script}`: {n_changed} changed lines\n", f"`diff {BASE} {script}`, hunk by hunk.\n"]
        for k, ((header, ops), note) in enumerate(zip(script_hunks, annotate(script, script_hunks, notes[script])), 1):
            body = "\n".join(f"{tag}{line}".rstrip() for tag, line in ops)
            parts.append(f"**{k}.** {note}\n\n```diff\n{header}\n{body}\n```\n")
        sections.append("\n".join(parts))
    head = f"""# What each algorithm changes in `{BASE}`

The four scripts are the same program except where the algorithms differ, so each algorithm is its diff
against standard RL. Each hunk below comes with a note on what it does for the algorithm. This page is
generated by `python docs/diffs.py` from the scripts, and `tests/test_docs.py` fails when it is not
current. `-` lines are `{BASE}`'s, `+` lines the other script's; a shortest diff, so the counts are those of
`diff {BASE} X.py | grep -c '^[<>]'` (at most the bound below, also checked by the tests).

| script | lines | changed lines against `{BASE}` | at most | hunks |
| --- | --- | --- | --- | --- |
| `{BASE}` | {len(base)} | | | |
""" + "\n".join(counts) + "\n"
    return "\n".join([head, *sections])


def main():
    try:
        text = render()
    except NoteError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    if "--check" in sys.argv[1:]:
        current = os.path.exists(OUT) and read(os.path.relpath(OUT, ROOT)) == text
        print("docs/diffs.md is current" if current else "docs/diffs.md is out of date: run python docs/diffs.py")
        sys.exit(0 if current else 1)
    with open(OUT, "w") as f:
        f.write(text)
    print(f"wrote {os.path.relpath(OUT)}")


if __name__ == "__main__":
    main()
