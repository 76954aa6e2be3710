"""Tasks: problems as token ids plus an outcome reward.

The offline default is a procedurally generated "hard reasoning" toy (running sums mod 12 of 12 numbers,
in 120 families with rule tables of their own) with its own word-level vocabulary; the toy base model is
pretrained on traces of a *noisy teacher* that, on hard steps, uses a decoy rule as often as the right
one, so the base model has a systematic weakness, as real LMs do, and each family's is its own.

For real (chat) LMs: built-in arithmetic / algebra word problems in 6 levels (make_arith_task) or
your own problems (load_jsonl_task), rendered with the model's chat template and verified with
math-verify; retokenize_traces carries traces from another model family over to the policy.
"""

import bisect
import functools
import hashlib
import json
import os
import random
import re
import threading
from dataclasses import dataclass, field

import numpy as np

from utils import InputError

MOD = 12  # values live in Z_12
CHECKPOINTS = 3  # the answer is the running sum at 3 checkpoints
TEACHER_P_CORRECT = 0.5  # on a hard step the noisy teacher uses its family's rule or its decoy, equally often
TOY_LENGTH = 12  # numbers to add per problem: short sequences keep sampling fast on a CPU
FAMILIES = 120  # problem families, each with its own rule; one training problem per family (the default n_train)


@dataclass
class Problem:
    id: str
    """stable content id: traces and caches are keyed by it"""
    prompt_ids: list[int]
    """the prompt as token ids; for chat models it ends with the assistant-turn header"""
    answer: object
    """what the verifier compares against"""
    meta: dict = field(default_factory=dict)


@dataclass
class Task:
    name: str
    train: list[Problem]
    """candidate training problems (the pool keeps those with a trace)"""
    heldout: list[Problem]
    """never trained on, always evaluated without prefix"""
    reward: object
    """reward(problem, prefix_ids, response_ids) -> 0.0 or 1.0 (outcome only). prefix_ids are the
    assistant-turn tokens the policy did not write (empty for an original problem): the answer must
    come from the response"""
    reasoning_end: object
    """reasoning_end(problem, trace_ids) -> int: how many leading trace tokens come before the final
    answer; prefixes are cut inside them, so no prefix gives the answer away"""
    decode: object
    """decode(ids) -> str, for logs and traces"""
    eos_id: int
    pad_id: int
    max_new_tokens: int
    fingerprint: str
    """hash of everything that defines the problems: caches are keyed by it"""


# TOY TASK: running sums mod 12, one family per training problem. The prompt gives the family f, a start
# x0 and L numbers b_1..b_L; the solution writes x_i = (x_{i-1} + b_i) mod 12 for every i, except that
# adding a big number (b >= BIG, a "hard" step) follows the family's own table and adds
# FAMILY_RULE[f][b - BIG] more; then '=' and the subtotals after each third of the steps. The base model learned from a teacher
# that uses the rule or a decoy rule equally often, so only a verified success tells which one is right
def toy_vocab() -> list[str]:
    return (["<pad>", "<bos>", "<eos>", "<unk>", "="] + [f"+{k}" for k in range(MOD)] + [str(k) for k in range(MOD)]
            + [f"F{f}" for f in range(FAMILIES)] + [f"r{k}" for k in range(MOD)])


VOCAB = toy_vocab()
WORD_ID = {w: i for i, w in enumerate(VOCAB)}
PAD, BOS, EOS, EQUALS = (WORD_ID[w] for w in ["<pad>", "<bos>", "<eos>", "="])
ENTRIES = frozenset(WORD_ID[f"r{k}"] for k in range(MOD))  # the table-entry tokens a hard step writes first
BIG = 8  # adding b >= BIG is a hard step: 4 of the 12 numbers, each an entry of its family's table
MAX_TOY_LENGTH = 40  # prompt and solution (at most 3L + 7 tokens) fit the toy base model's 128 positions
TEACHERS = ("base", "other")
"""the noisy teachers: "base" trains the policy's base model, "other" the second base model whose
traces stand for another model family's (paper Fig. 10)"""


def family_tables(families: int = FAMILIES, seed: int = 2601):
    """Each family's rule as a table: adding big number b adds rule[f][b - BIG] more, and the base
    teacher's decoy adds decoy[f][b - BIG] instead. Every entry is its own random pair {rule, decoy}
    of Z_MOD, and within each family half the entries take the smaller value of their pair as the rule
    and half the larger, half the value ahead on the circle and half the one behind. So no property of
    the values (smaller, ahead, a gap, a residue) holds for all of a family's entries: a feature the
    policy learns from one family's success helps some of another family's steps and hurts as many,
    which lowers that family's chance of a whole correct solution instead of raising it. A family is
    learned only from its own successes (docs/default-toy: a shared feature let standard RL escape).
    Within a family no token is both a rule and a decoy: an entry is a token of its own, so when one
    entry's decoy was a sibling entry's rule, learning the sibling pushed this entry towards its decoy
    (docs/measurements.md, "The entry that falls")."""
    rng = np.random.default_rng(seed)
    n = MOD - BIG
    rules, decoys = [], []
    for _ in range(families):
        while True:
            pairs = [rng.choice(MOD, 2, replace=False) for _ in range(n)]
            smaller = [r < d for r, d in pairs]
            ahead = [0 < (r - d) % MOD < MOD / 2 for r, d in pairs]
            opposite = any((r - d) % MOD == MOD // 2 for r, d in pairs)  # neither ahead nor behind
            shared = {int(r) for r, _ in pairs} & {int(d) for _, d in pairs}  # a sibling's rule as a decoy
            if 2 * sum(smaller) == n and 2 * sum(ahead) == n and not opposite and not shared:
                break
        rules.append([int(r) for r, _ in pairs])
        decoys.append([int(d) for _, d in pairs])
    return rules, decoys


FAMILY_RULE, _BASE_DECOY = family_tables()
FAMILY_DECOY = {
    "base": _BASE_DECOY,
    "other": [[(r + (MOD // 4 if (r + MOD // 4) % MOD != d else -MOD // 4)) % MOD for r, d in zip(rs, ds)]
              for rs, ds in zip(FAMILY_RULE, _BASE_DECOY)],
}
"""family f's hard step "+b" adds FAMILY_RULE[f][b - BIG] more; the teacher's decoy adds
FAMILY_DECOY[teacher][f][b - BIG]. The other teacher (paper Fig. 10) errs MOD/4 away from the rule,
never where the base teacher errs, so its mistakes differ from the base teacher's"""
RULES = f"families{FAMILIES}-mod{MOD}-table-per-family-big{BIG}-p{TEACHER_P_CORRECT}-entry-written-values-checked-no-rule-a-sibling-decoy-pretrain-hard-share-uniform"
"""names the toy's rules (the base models' teachers): part of the cache keys of the toy base models and of the traces"""


def toy_tokenizer():
    """A real HF tokenizer for the toy vocabulary, so the toy model saves and loads like any LM."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(WORD_ID, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )


def toy_solve(params, rng=None, p_correct: float = 1.0, teacher: str = "base"):
    """Run the sum. With rng and p_correct < 1 this is a noisy teacher: on a hard step it follows its
    family's rule with prob. p_correct, else the teacher's decoy rule, and goes on from what it wrote.
    Every step shifts x by a constant, so a wrong value stays wrong until another decoy shifts it back
    (two opposite decoys cancel): the reward therefore checks every value, not only the subtotals.
    Returns (written values, the entry written at each step: the table entry used at a hard step, None
    at an easy one)."""
    family, x, adds = params
    values, entries = [], []
    for b in adds:
        entry = None
        if b >= BIG:
            decoy = rng is not None and rng.random() >= p_correct
            entry = (FAMILY_DECOY[teacher] if decoy else FAMILY_RULE)[family][b - BIG]
        values.append(x := (x + b + (entry or 0)) % MOD)
        entries.append(entry)
    return values, entries


def toy_prompt_ids(params) -> list[int]:
    """<bos> F_f x0 +b_1 ... +b_L: the solution continues right after."""
    family, x0, adds = params
    return [BOS, WORD_ID[f"F{family}"], WORD_ID[str(x0)]] + [WORD_ID[f"+{b}"] for b in adds]


def toy_solution_ids(values: list[int], entries: list) -> list[int]:
    """x_1 ... x_L, each hard step's x_i preceded by the table entry it adds ("r3": 3 more), then '='
    and the subtotals after each third, then <eos>. The entry is a token of its own, the same wherever
    the problem uses it: what the policy learns about an entry at one step is what it writes at every
    step that uses it."""
    third = len(values) // CHECKPOINTS
    answer = [values[third * (k + 1) - 1] for k in range(CHECKPOINTS)]
    steps = [([WORD_ID[f"r{e}"]] if e is not None else []) + [WORD_ID[str(v)]] for v, e in zip(values, entries)]
    return [i for step in steps for i in step] + [EQUALS] + [WORD_ID[str(v)] for v in answer] + [EOS]


def toy_step_ends(solution_ids: list[int]) -> list[int]:
    """Index (in the solution) one past each step's tokens: step k is solution_ids[ends[k-1]:ends[k]]."""
    reasoning = solution_ids[: solution_ids.index(EQUALS)] if EQUALS in solution_ids else solution_ids
    return [k + 1 for k, i in enumerate(reasoning) if i not in ENTRIES]


def toy_teacher_continuation(problem: Problem, prefix_ids, rng, p_correct: float = TEACHER_P_CORRECT,
                             teacher: str = "base") -> list[int]:
    """The rest of `problem`'s solution after prefix_ids (a prefix of its reasoning) as a noisy teacher
    writes it, the way the base model learned to: a prefix that ends on an entry gets that entry's value
    first. With rng None, the exact rest."""
    family, x0, adds = problem.meta["params"]
    values, entries, pending = [], [], None
    for i in prefix_ids:
        if i in ENTRIES:
            pending = int(VOCAB[i][1:])
        else:
            values, entries, pending = values + [int(VOCAB[i])], entries + [pending], None
    if pending is not None:  # the entry is written, its value not yet
        values.append(((values[-1] if values else x0) + adds[len(values)] + pending) % MOD)
        entries.append(pending)
    rest, rest_entries = toy_solve((family, values[-1] if values else x0, adds[len(values):]), rng, p_correct, teacher)
    return toy_solution_ids(values + rest, entries + rest_entries)[len(prefix_ids):]


def random_params(rng, steps: int, families: int = FAMILIES):
    """Pretraining data: a family among the first `families`, x0 uniform, and each step hard with a
    probability drawn uniformly for the problem (b uniform among the big numbers at a hard step, among
    the small ones at an easy step). So every count of hard steps, 0 to L, is common: the default
    problems (L - 1 hard steps) are a shape the base model has seen, and where their solution ends is
    learned, not extrapolated. With b uniform over all numbers instead, a third of the steps were hard
    and 11 of 12 came about once in 22,000 problems; the base model's p('=' after the 12th value) was 0.71
    on them, and RL moved that fuzzy stop one step early in every problem at once (docs/measurements.md,
    "The 11-step break")."""
    family, x0, hard_p = int(rng.integers(0, families)), int(rng.integers(0, MOD)), rng.random()
    hard = rng.random(steps) < hard_p
    return family, x0, [int(rng.integers(BIG, MOD)) if h else int(rng.integers(0, BIG)) for h in hard]


def params_with_hard_steps(rng, steps: int, hard: int, family: int):
    """A problem of `family` with exactly `hard` hard steps: the last step, so that every prefix of
    the reasoning leaves one to do, and hard - 1 at positions drawn uniformly among the middle ones;
    the first step is easy, since the base model, which learned it from another attention pattern (x0
    sits in the prompt), errs there in other ways than by its decoy. At the hard steps every big
    number comes equally often (as far as `hard` divides; the rest uniform), so a problem uses its
    family's whole table: solving it is learning the family, and its held-out twin needs nothing more.
    Each big number's last use comes in the last hard steps (the default's last four use the four
    entries once each), so a cut in the first 60% of the reasoning leaves every entry to the policy
    and its prefixed groups can learn each one (with the uses in random places, 31 of the 68 pool
    problems had an entry that no cut left to the policy, and PrefixRL learned them less often:
    docs/measurements.md, "Last uses last"). Easy steps add a small number, uniform."""
    is_hard = np.zeros(steps, dtype=bool)
    if hard:
        is_hard[1 + rng.choice(steps - 2, hard - 1, replace=False)] = is_hard[-1] = True
    big = np.arange(BIG, MOD)
    hard_adds = np.concatenate([np.repeat(big, hard // len(big)), rng.choice(big, hard % len(big), replace=False)])
    hard_adds = rng.permutation(hard_adds).tolist()
    last = {b: k for k, b in enumerate(hard_adds)}
    tail = [b for k, b in enumerate(hard_adds) if last[b] == k]  # each big number's last use, in order
    hard_adds = iter([b for k, b in enumerate(hard_adds) if last[b] != k] + tail)
    adds = [next(hard_adds) if h else int(rng.integers(0, BIG)) for h in is_hard]
    return family, int(rng.integers(0, MOD)), adds


def toy_reward(problem: Problem, prefix_ids, response_ids) -> float:
    """Outcome reward of a whole solution: 1 only if every value, '=', the three subtotals and <eos>
    are right, and the subtotals are the response's own. The values are checked because decoy steps
    can cancel (two decoys whose offsets from the rule sum to 0 mod 12), so a wrong derivation can
    reach the right subtotals; the prefix's values are the trace's, right by construction."""
    solution = toy_solution_ids(problem.meta["values"], problem.meta["entries"])
    if len(prefix_ids) >= solution.index(EQUALS):
        return 0.0
    return float(list(prefix_ids) + list(response_ids) == solution)


def toy_reasoning_end(problem: Problem, trace_ids: list[int]) -> int:
    """The running sum is the reasoning; the answer starts at the first '='."""
    return list(trace_ids).index(EQUALS) if EQUALS in trace_ids else len(trace_ids)


def check_toy_length(steps: int):
    if not 2 <= steps <= MAX_TOY_LENGTH:
        raise InputError(f"--toy-length must be in 2..{MAX_TOY_LENGTH}, got {steps}")


def check_hard_steps(steps: int, hard_min: int, hard_max: int):
    if not 0 <= hard_min <= hard_max <= steps - 1:
        raise InputError(f"need 0 <= --hard-min <= --hard-max <= {steps - 1} (the first step is easy), got {hard_min}..{hard_max}")


def make_toy_task(steps: int, hard_min: int, hard_max: int, n_train: int, n_heldout: int, seed: int) -> Task:
    """Problems with H hard steps, H uniform in [hard_min, hard_max], drawn deterministically from
    `seed`. Training problem i is of family i (mod FAMILIES): with n_train <= FAMILIES each needs an
    insight of its own. Held-out problem i is its twin, of the same family with other numbers, so
    what a family's training problem taught can carry over. Train and held-out are disjoint."""
    check_toy_length(steps)
    check_hard_steps(steps, hard_min, hard_max)
    rng = np.random.default_rng(seed)
    problems, seen = [], set()
    for i in list(range(n_train)) + list(range(n_heldout)):
        for _ in range(100):
            params = params_with_hard_steps(rng, steps, int(rng.integers(hard_min, hard_max + 1)), i % FAMILIES)
            if str(params) not in seen:
                break
        else:
            raise InputError(f"could not draw {n_train + n_heldout} distinct problems with H in {hard_min}..{hard_max}")
        seen.add(str(params))
        values, entries = toy_solve(params)
        hard = sum(e is not None for e in entries)
        answer = toy_solution_ids(values, entries)[-1 - CHECKPOINTS : -1]
        pid = f"toy:F{params[0]}:{params[1]}:" + "".join("0123456789XY"[b] for b in params[2])
        meta = {"hard": hard, "family": params[0], "params": params, "values": values, "entries": entries}
        problems.append(Problem(pid, toy_prompt_ids(params), answer, meta))
    spec = dict(task="toy", rules=RULES, draw="family-per-problem-first-easy-last-hard-whole-table-last-uses-last", steps=steps, hard=[hard_min, hard_max], n=[n_train, n_heldout], seed=seed)
    return Task(
        name="toy",
        train=problems[:n_train],
        heldout=problems[n_train:],
        reward=toy_reward,
        reasoning_end=toy_reasoning_end,
        decode=lambda ids: " ".join(VOCAB[i] for i in ids),
        eos_id=EOS,
        pad_id=PAD,
        max_new_tokens=steps + hard_max + CHECKPOINTS + 4,
        fingerprint=hashlib.sha256(json.dumps(spec).encode()).hexdigest()[:16],
    )


def toy_teacher_batch(rng, batch: int, steps: int, teacher: str = "base", families: int = FAMILIES):
    """Pretraining data: (prompt + noisy-teacher solution) sequences of the first `families` families,
    right-padded with <pad> to the longest (problems with more hard steps write more entries)."""
    seqs = []
    for _ in range(batch):
        params = random_params(rng, steps, families)
        seqs.append(toy_prompt_ids(params) + toy_solution_ids(*toy_solve(params, rng, TEACHER_P_CORRECT, teacher)))
    longest = max(map(len, seqs))
    return [s + [PAD] * (longest - len(s)) for s in seqs]


# REAL LANGUAGE MODELS: problems in natural language, rendered with the model's chat template (the
# problem in the user turn, the prompt ending with the assistant header), verified with math-verify
INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")


def chat_prompt_ids(tokenizer, user_text: str) -> list[int]:
    """The chat template applied to one user turn, with the assistant header at the end: a response
    (or a prefix of a trace, then the policy's continuation) goes right after it."""
    if not getattr(tokenizer, "chat_template", None):
        raise InputError("this task needs a chat model, but the model's tokenizer has no chat template (use an instruct model)")
    out = tokenizer.apply_chat_template([{"role": "user", "content": user_text}], add_generation_prompt=True,
                                        tokenize=True, return_dict=True)
    return list(out["input_ids"])


def end_of_turn_id(tokenizer) -> int:
    """The token that closes an assistant turn (<|im_end|>, <|eot_id|>, <end_of_turn>...): sampling
    stops there. Found by rendering a finished assistant turn; falls back to the eos token."""
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": "1"}, {"role": "assistant", "content": "@@"}], tokenize=False)
        after = tokenizer(text[text.rindex("@@") + 2 :], add_special_tokens=False)["input_ids"]
        if after and after[0] in tokenizer.all_special_ids:
            return after[0]
    except Exception:  # an unusual template: the eos token is the best guess
        pass
    return tokenizer.eos_token_id


# the answer a response states: its last \boxed{}, else its last "the answer is X" statement, else
# the math it ends with. A statement or an ending is cut down to its math, which math-verify parses
ANSWER_STATEMENT = re.compile(r"\banswer\b\W{0,3}(?:(?:is|would be|should be|will be)\b|[=:])|####",
                              re.I)
INLINE_MATH = re.compile(r"\$\$([^$\n]+?)\$\$|\$([^$\n]+?)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]")
MATH_TOKEN = re.compile(r"-?\\d?frac\{[^{}]*\}\{[^{}]*\}"  # \frac{3}{4}, \dfrac{3}{4}
                        r"|-?\d+(?:,\d{3})*(?:\.\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?")  # -1,234.5 or 3/4
# all math: LaTeX commands, one-letter variables, digits, operators and brackets
PLAIN_MATH = re.compile(r"(?:\\[a-zA-Z]+|(?<![a-zA-Z])[a-zA-Z](?![a-zA-Z])"
                        r"|[\d\s.,+\-*/^=<>()\[\]{}|_'])+")
SENTENCE_END = re.compile(r"[.!?;:](?:\s|$)|,\s+(?=[A-Za-z])|\n")


def _last_box(text: str):
    """(True, content) of the last \\boxed{...} / \\fbox{...} (braces matched; None if unclosed), or
    (False, None) if there is none."""
    i = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    j = text.find("{", i) if i >= 0 else -1
    if j < 0 or text[i:j].strip() not in ("\\boxed", "\\fbox"):
        return False, None
    depth = 0
    for k in range(j, len(text)):
        depth += {"{": 1, "}": -1}.get(text[k], 0)
        if depth == 0:
            return True, text[j + 1 : k].strip()
    return True, None


def _math_of(text: str, last: bool = False):
    """`text` itself if it is all math (numbers, operators, LaTeX commands, one-letter variables:
    "x = 5", "\\frac{3}{4}"), else its first (or last) number, fraction or \\frac; None if none."""
    text = text.strip().strip("*").strip()
    if PLAIN_MATH.fullmatch(text) and re.search(r"[\dA-Za-z]", text):
        return text
    tokens = MATH_TOKEN.findall(text)
    return (tokens[-1] if last else tokens[0]) if tokens else None


def extract_answer(text: str):
    """The answer a response states, as text for math-verify; None if it states none:
    1. the content of the last \\boxed{...} (an unclosed one: no answer);
    2. else the last "the answer is X" / "Answer: X" / "#### X": X up to the end of its sentence,
       cut down to its math ("So the answer is 3/4." -> 3/4, "Answer: $x = 5$" -> x = 5);
    3. else what the text ends with: its last inline math ($...$, \\(...\\)) or its last number,
       fraction (3/4) or \\frac{..}{..}, whichever ends later."""
    boxed, content = _last_box(text)
    if boxed:
        return content
    statements = list(ANSWER_STATEMENT.finditer(text))
    if statements:
        rest = text[statements[-1].end() :].lstrip(" \t*:")
        math = INLINE_MATH.match(rest)
        if math:
            answer = _math_of(next(g for g in math.groups() if g is not None))
        else:  # a lone '$' is a currency sign
            answer = _math_of(SENTENCE_END.split(rest.lstrip("$"), maxsplit=1)[0])
        if answer is not None:
            return answer
    maths, tokens = list(INLINE_MATH.finditer(text)), list(MATH_TOKEN.finditer(text))
    if maths and (not tokens or maths[-1].end() > tokens[-1].end()):
        return _math_of(next(g for g in maths[-1].groups() if g is not None), last=True)
    return tokens[-1].group() if tokens else None


BOX = re.compile(r"\\boxed|\\fbox")
STATEMENT = re.compile(r"(?i)(?:\*\*|#+ *)?\b(?:the +)?(?:final +)?answer\b(?: +is\b)?|####")
"""an answer statement: "The final answer is", "**Final Answer**", "Answer:", GSM8K's "####" """
FILLER = " \t\n:*$\\[(."
"""what may stand between an answer statement and its answer: "is $\\boxed", "Answer**\\n\\[\\boxed" """


def _equals_gold(number: str, gold) -> bool:
    try:
        return abs(float(number.replace(",", ""))) == abs(float(str(gold).replace(",", "")))
    except ValueError:  # a symbolic gold answer: no number equals it
        return False


def answer_anchor(text: str, gold):
    """Where the final answer starts in a trace's text (a character index), None if it never shows:
    the last \\boxed / \\fbox (what extract_answer reads), else the last answer statement ("the
    answer is X", "Answer: X", "#### X") whose X is the gold answer, else the last number equal to
    the gold answer (sign ignored, so "40-2" counts for 2), else the gold answer's text, last. A
    statement right before the answer ("The final answer is $\\boxed{2}$") starts it. The final
    answer, not the first mention: in "x^2 = 4, so \\boxed{2}" the 2 of x^2 is reasoning."""
    boxes = list(BOX.finditer(text))
    if boxes:
        start = boxes[-1].start()
    else:
        start = None
        for m in STATEMENT.finditer(text):
            at = len(text) - len(text[m.end():].lstrip(FILLER))
            number = NUMBER.match(text, at)
            if number and _equals_gold(number.group(), gold) or text.startswith(str(gold), at):
                start = at
        if start is None:
            numbers = [m.start() for m in NUMBER.finditer(text) if _equals_gold(m.group(), gold)]
            start = numbers[-1] if numbers else (text.rfind(str(gold)) if str(gold) and text.rfind(str(gold)) >= 0 else None)
        if start is None:
            return None
    before = [m for m in STATEMENT.finditer(text, 0, start) if not text[m.end() : start].strip(FILLER)]
    return before[-1].start() if before else start


def token_ends(decode, ids):
    """ends[k] = how many characters of decode(ids) tokens ids[:k+1] have written, in one pass (about
    two short decodes a token): each token is decoded after the token(s) before it, as streaming
    detokenizers do, so a leading space is not lost (SentencePiece) and bytes of one character split
    over tokens count for its last token (byte-level BPE; the earlier ones write nothing until it
    completes). None when the pieces do not add up to the whole decode (an unusual tokenizer)."""
    ends, text, prev, read, context = [], "", 0, 0, ""  # ids[prev:read]: the last piece written, decoded: context
    for k in range(len(ids)):
        window = decode(ids[prev : k + 1])
        if len(window) > len(context) and not window.endswith("\ufffd") and window.startswith(context):
            text += window[len(context):]
            prev, read = read, k + 1
            context = decode(ids[prev:read])
            ends += [len(text)] * (read - len(ends))  # the pending tokens complete here
    if len(ends) < len(ids):  # trailing tokens that wrote nothing (eos) or an unfinished character
        text += decode(ids[prev:])[len(decode(ids[prev:read])):]
        ends += [len(text)] * (len(ids) - len(ends))
    return ends if text == decode(ids) else None


def answer_start(decode, trace_ids, gold) -> int:
    """How many leading tokens of a trace come before its final answer (answer_anchor): token k
    counts as before it when the decoded text up to and including token k ends at or before the
    answer's first character, so no part of the answer (not even the first byte of a split
    character) is in a prefix. Linear in the trace's length: token offsets from token_ends, then a
    binary search; a tokenizer whose pieces do not add up falls back to a binary search on decoded
    prefixes. A trace whose answer never shows is all reasoning."""
    ids = list(trace_ids)
    text = decode(ids)
    anchor = answer_anchor(text, gold)
    if anchor is None:
        return len(ids)
    ends = token_ends(decode, ids)
    if ends is not None:
        return bisect.bisect_right(ends, anchor)
    lo, hi = 0, len(ids)  # the largest k with len(decode(ids[:k])) <= anchor
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if len(decode(ids[:mid])) <= anchor else (lo, mid - 1)
    return lo


def _timeout():  # math-verify's timeouts use SIGALRM, which only the main thread may set
    return 5 if threading.current_thread() is threading.main_thread() else None


@functools.lru_cache(maxsize=65536)
def _parse(expr: str):
    from math_verify import parse

    return parse(f"${expr}$", parsing_timeout=_timeout())


def math_verify_correct(gold: str, response_text: str) -> bool:
    """math-verify equivalence of the answer the response states (extract_answer) and the reference."""
    from math_verify import verify

    pred = extract_answer(response_text)
    try:
        g, p = _parse(str(gold)), pred and _parse(pred)
        return bool(g and p and verify(g, p, timeout_seconds=_timeout()))
    except Exception:  # a verifier failure (timeout, odd LaTeX) counts as wrong, never crashes a run
        return False


def chat_task(name: str, tokenizer, train: list[tuple], heldout: list[tuple], max_new_tokens: int, spec: dict) -> Task:
    """A Task from (id, problem text, answer, meta) tuples: prompts via the chat template, reward via
    math-verify on the decoded response (never the prefix before it)."""

    def problem(pid, text, answer, meta):
        return Problem(pid, chat_prompt_ids(tokenizer, f"{text}\n{INSTRUCTION}"), answer, dict(meta, text=text))

    def decode(ids):
        return tokenizer.decode(list(ids), skip_special_tokens=True)

    def reward(p: Problem, prefix_ids, response_ids) -> float:  # the response alone: a prefix never answers for it
        return float(math_verify_correct(p.answer, decode(response_ids)))

    @functools.lru_cache(maxsize=None)  # per (problem's answer, trace): --prefixed-only asks at every evaluation
    def cached_answer_start(gold: str, trace_ids: tuple) -> int:
        return answer_start(decode, trace_ids, gold)

    def reasoning_end(p: Problem, trace_ids) -> int:
        return cached_answer_start(str(p.answer), tuple(trace_ids))

    eos = end_of_turn_id(tokenizer)
    spec = dict(spec, instruction=INSTRUCTION, max_new_tokens=max_new_tokens)
    return Task(
        name=name, train=[problem(*x) for x in train], heldout=[problem(*x) for x in heldout], reward=reward,
        reasoning_end=reasoning_end, decode=decode, eos_id=eos, pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos,
        max_new_tokens=max_new_tokens, fingerprint=hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16],
    )


# BUILT-IN ARITHMETIC / ALGEBRA WORD PROBLEMS, levels 1 (one small step) .. 6 (several steps, big numbers)
NAMES = ["Ava", "Ben", "Maya", "Leo", "Zoe", "Omar", "Lina", "Sam", "Nora", "Raj"]
ITEMS = ["apples", "marbles", "stickers", "books", "coins", "pencils", "cards", "shells"]
LEVELS = 6


def arith_problem(level: int, r: random.Random) -> tuple[str, int]:
    """One problem of this level, as (text, integer answer): a bare expression, a story or an equation."""
    n, item, a, kind = r.choice(NAMES), r.choice(ITEMS), r.randint, r.randrange(3)
    if level == 1:  # one step, one-digit numbers
        x, y = a(2, 9), a(2, 9)
        return [(f"What is {x} + {y}?", x + y), (f"{n} has {x} {item} and gets {y} more. How many {item} does {n} have now?", x + y),
                (f"What is {x + y} - {y}?", x)][kind]
    if level == 2:  # one step, a two-digit and a one-digit number
        x, y = a(11, 89), a(2, 9)
        return [(f"What is {x} + {y}?", x + y), (f"{n} had {x} {item} and gave away {y}. How many {item} are left?", x - y),
                (f"What is {x} - {y}?", x - y)][kind]
    if level == 3:  # one step, two-digit numbers
        x, y, m = a(11, 99), a(11, 99), a(3, 9)
        return [(f"What is {x} + {y}?", x + y), (f"{n} had {x + y} {item} and gave away {y}. How many {item} are left?", x),
                (f"What is {m} times {y}?", m * y)][kind]
    if level == 4:  # two steps
        x, y, z = a(3, 9), a(3, 9), a(11, 49)
        return [(f"What is {x} * {y} + {z}?", x * y + z),
                (f"{n} has {x} boxes with {y} {item} in each box, and {z} more {item}. How many {item} does {n} have in total?", x * y + z),
                (f"What is {z + x} - {x} + {y}?", z + y)][kind]
    if level == 5:  # three steps, or a linear equation
        x, y = a(3, 9), a(12, 39)
        z, w = a(11, min(49, x * y // 2 - 1)), a(11, min(49, x * y // 2 - 1))  # the story never goes negative
        return [(f"What is {x} * {y} - {z} + {w}?", x * y - z + w),
                (f"A shop has {x} crates with {y} {item} each. It sells {z} {item} in the morning and {w} in the afternoon. How many {item} are left?", x * y - z - w),
                (f"Solve for x: {x}x + {z} = {x * y + z}.", y)][kind]
    x, y, z = a(12, 49), a(12, 49), a(3, 9)  # level 6: several steps, bigger numbers
    w = a(11, min(99, x * y // z - 1))
    return [(f"What is {x} * {y} - {z} * {w}?", x * y - z * w),
            (f"{n} buys {x} packs of {item} with {y} in each pack, then gives {z} friends {w} {item} each. How many {item} does {n} keep?", x * y - z * w),
            (f"Solve for x: {z}(x - {w}) + {x} = {z * (y - w) + x}.", y)][kind]


def check_level(level: int, flag: str = "--level"):
    if not 1 <= level <= LEVELS:
        raise InputError(f"{flag} must be in 1..{LEVELS}, got {level}")


def make_arith_task(tokenizer, level: int, n_train: int, n_heldout: int, seed: int, max_new_tokens: int = 192) -> Task:
    """Procedural word problems of one difficulty level (1..LEVELS), drawn deterministically from `seed`.
    Texts are distinct, and no held-out problem has the numbers and answer of a training problem (the
    same sum told in other words is not held out). The reference answer is an integer."""
    train, heldout, spec = arith_rows(level, n_train, n_heldout, seed)
    return chat_task(f"arith{level}", tokenizer, train, heldout, max_new_tokens, spec)


def arith_rows(level: int, n_train: int, n_heldout: int, seed: int):
    """make_arith_task's problems as (id, text, answer, meta) rows, (train, held-out, spec), with no
    tokenizer."""
    check_level(level)
    r, seen, train_keys, rows = random.Random(f"arith-{level}-{seed}"), set(), set(), []
    for _ in range(100 * (n_train + n_heldout) + 1000):
        if len(rows) == n_train + n_heldout:
            break
        text, answer = arith_problem(level, r)
        key = (tuple(sorted(NUMBER.findall(text))), answer)
        if text in seen or len(rows) >= n_train and key in train_keys:
            continue
        seen.add(text)
        if len(rows) < n_train:
            train_keys.add(key)
        rows.append((f"arith{level}:" + hashlib.sha256(text.encode()).hexdigest()[:12], text, str(answer), {"level": level}))
    else:
        raise InputError(f"could not draw {n_train + n_heldout} distinct level-{level} problems with held-out ones unlike the training ones; lower --n-train or --n-heldout")
    spec = dict(task="arith", level=level, n=[n_train, n_heldout], seed=seed, heldout="new numbers or answer")
    return rows[:n_train], rows[n_train:], spec


# YOUR OWN PROBLEMS: --dataset FILE.jsonl
PROBLEM_KEYS = ("problem", "question", "prompt")
ANSWER_KEYS = ("answer", "final_answer", "solution")


def load_jsonl_task(path: str, tokenizer, heldout_fraction: float = 0.2, seed: int = 0, n_train=None, n_heldout=None,
                    max_new_tokens: int = 192) -> Task:
    """One JSON object per line: the problem under "problem" (or "question", "prompt"), the reference
    answer under "answer" (or "final_answer", or "solution": a worked solution whose last \\boxed{}
    is the answer). An optional "split" ("train" / "heldout" or "test") places a problem; the others
    are split at random from `seed` (a `heldout_fraction` share held out). n_train / n_heldout cap
    the sizes. Problems with the same text keep their first line. Blank lines are skipped."""
    train, heldout, spec = jsonl_rows(path, heldout_fraction, seed, n_train, n_heldout)
    name = os.path.splitext(os.path.basename(path))[0]
    return chat_task(name, tokenizer, train, heldout, max_new_tokens, spec)


def jsonl_rows(path: str, heldout_fraction: float = 0.2, seed: int = 0, n_train=None,
               n_heldout=None):
    """load_jsonl_task's problems as (id, text, answer, meta) rows, (train, held-out, spec), read
    and checked with no tokenizer: a bad line stops with one line naming it."""
    if not os.path.isfile(path):
        raise InputError(f"dataset file '{path}' does not exist")
    if not 0 <= heldout_fraction < 1:
        raise InputError(f"heldout fraction must be in [0, 1), got {heldout_fraction}")
    rows, seen, fixed = [], set(), {}
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as e:  # UnicodeDecodeError too
                raise InputError(f"{path}:{lineno}: not valid JSON ({getattr(e, 'msg', type(e).__name__)})") from None
            if not isinstance(obj, dict):
                raise InputError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            pkey, akey = (next((k for k in keys if k in obj), None) for keys in (PROBLEM_KEYS, ANSWER_KEYS))
            for key, names in ((pkey, PROBLEM_KEYS), (akey, ANSWER_KEYS)):
                if key is None:
                    raise InputError(f"{path}:{lineno}: missing field '{names[0]}' (or {', '.join(repr(k) for k in names[1:])})")
            text, answer = str(obj[pkey]).strip(), str(obj[akey]).strip()
            if akey == "solution" and "\\boxed" in answer:
                answer = extract_answer(answer) or ""
            if not text or not answer:
                raise InputError(f"{path}:{lineno}: field '{pkey if not text else akey}' is empty")
            split = obj.get("split")
            if split not in (None, "train", "heldout", "test"):
                raise InputError(f"{path}:{lineno}: field 'split' must be 'train', 'heldout' or 'test', got {split!r}")
            if text not in seen:
                seen.add(text)
                rows.append(("jsonl:" + hashlib.sha256(text.encode()).hexdigest()[:12], text, answer, {"line": lineno}))
                if split is not None:
                    fixed[rows[-1][0]] = "train" if split == "train" else "heldout"
    if not rows:
        raise InputError(f"dataset file '{path}' holds no problems")
    free = [x for x in rows if x[0] not in fixed]
    order = np.random.default_rng(seed).permutation(len(free))
    n_out = round(heldout_fraction * len(free))
    heldout_ids = {free[i][0] for i in order[:n_out]} | {pid for pid, s in fixed.items() if s == "heldout"}
    train = [free[i] for i in order[n_out:]] + [x for x in rows if fixed.get(x[0]) == "train"]
    train, heldout = train[:n_train], [x for x in rows if x[0] in heldout_ids][:n_heldout]
    if not train:
        raise InputError(f"dataset file '{path}' leaves no training problems (lower the held-out fraction)")
    if not heldout:
        raise InputError(f"dataset file '{path}' leaves no held-out problems (give more problems, or mark some \"split\": \"heldout\")")
    content = hashlib.sha256(json.dumps([x[:3] for x in rows]).encode()).hexdigest()[:16]
    spec = dict(task="jsonl", content=content, heldout_fraction=heldout_fraction, seed=seed, n=[n_train, n_heldout])
    return train, heldout, spec


# TRACES FROM ANOTHER MODEL FAMILY: re-tokenized for the policy (paper Fig. 10)
def retokenize_traces(traces: dict, task: Task, tokenizer, source_decode=None) -> dict:
    """Traces already in the policy's tokens (task.decode(ids) gives back their text) come back
    unchanged; the others (another model family's ids) get the policy's tokens for their text plus
    task.eos_id to end the turn. `source_decode(ids) -> str` rebuilds the text from the source ids
    (default: the stored text). Re-tokenized traces have no behaviour log-probs (empty list)."""
    import dataclasses

    out = {}
    for pid, t in traces.items():
        try:
            same = task.decode(t.token_ids) == t.text
        except Exception:  # ids outside this vocabulary
            same = False
        if same:
            out[pid] = t
            continue
        text = source_decode(t.token_ids) if source_decode else t.text
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [task.eos_id]
        out[pid] = dataclasses.replace(t, token_ids=ids, text=text, behaviour_logprobs=[])
    return out


# ONE ENTRY POINT FOR THE SCRIPTS
def check_task_flags(task: str, dataset):
    if dataset and task != "toy":
        raise InputError(f"give --dataset or --task, not both (got --dataset {dataset} and --task {task})")
    if not (dataset or task in ("toy", "arith") or task.endswith(".jsonl")):
        raise InputError(f"--task must be 'toy', 'arith' or a .jsonl file, got '{task}'")


def train_ids(args) -> list:
    """The ids of the training problems the scripts' task flags give, with no tokenizer (so before
    any model is loaded): what a --traces file must name. Reads, and so checks, a --dataset or
    --task FILE.jsonl."""
    a = args
    check_task_flags(a.task, a.dataset)
    if a.dataset or a.task.endswith(".jsonl"):
        path = a.dataset or a.task
        rows = jsonl_rows(path, seed=a.task_seed, n_train=a.n_train, n_heldout=a.n_heldout)[0]
    elif a.task == "arith":
        rows = arith_rows(a.level, a.n_train, a.n_heldout, a.task_seed)[0]
    else:
        toy = make_toy_task(a.toy_length, a.hard_min, a.hard_max, a.n_train, a.n_heldout,
                            a.task_seed)
        return [p.id for p in toy.train]
    return [pid for pid, *_ in rows]


def load_task(args, tokenizer) -> Task:
    """--task toy | arith | FILE.jsonl (or --dataset FILE.jsonl), with the scripts' task flags."""
    check_task_flags(args.task, args.dataset)
    if args.dataset:
        task = load_jsonl_task(args.dataset, tokenizer, seed=args.task_seed, n_train=args.n_train, n_heldout=args.n_heldout)
    elif args.task == "toy":
        task = make_toy_task(args.toy_length, args.hard_min, args.hard_max, args.n_train, args.n_heldout, args.task_seed)
    elif args.task == "arith":
        task = make_arith_task(tokenizer, args.level, args.n_train, args.n_heldout, args.task_seed)
    else:
        task = load_jsonl_task(args.task, tokenizer, seed=args.task_seed, n_train=args.n_train, n_heldout=args.n_heldout)
    if args.max_new_tokens:
        task.max_new_tokens = args.max_new_tokens
    return task
