"""Tasks: problems as token ids plus an outcome reward.

The offline default is a procedurally generated "hard reasoning" toy (three affine registers mod 11)
with its own word-level vocabulary; the toy base model is pretrained on traces of a *noisy teacher*
that slips on hard steps, so the base model has a systematic weakness, as real LMs do.
"""

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np

from utils import InputError

MOD = 11  # values live in Z_11
REGISTERS = "ABC"  # three registers, each with its own start: the answer space is 11^3 = 1331
TEACHER_P_CORRECT = 0.35  # on a hard step the noisy teacher writes the right value with this prob.


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
    """reward(problem, response_ids) -> 0.0 or 1.0 (outcome only)"""
    decode: object
    """decode(ids) -> str, for logs and traces"""
    eos_id: int
    pad_id: int
    max_new_tokens: int
    fingerprint: str
    """hash of everything that defines the problems: caches are keyed by it"""


# TOY TASK: three registers that each add the same step b mod 11 from their own start (x <- x + b;
# a step is hard when it wraps around, i.e. carries), written interleaved A B C A B C ..., so every
# value is a function of the value exactly 3 tokens back; the answer is the three final values
def toy_vocab() -> list[str]:
    return ["<pad>", "<bos>", "<eos>", "<unk>", "="] + [f"+{k}" for k in range(MOD)] + [str(k) for k in range(MOD)]


VOCAB = toy_vocab()
WORD_ID = {w: i for i, w in enumerate(VOCAB)}
PAD, BOS, EOS, EQUALS = (WORD_ID[w] for w in ["<pad>", "<bos>", "<eos>", "="])


def toy_tokenizer():
    """A real HF tokenizer for the toy vocabulary, so the toy model saves and loads like any LM."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(WORD_ID, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )


def toy_solve(params, steps: int, rng=None, p_correct: float = 1.0):
    """Run the registers for `steps` steps. With rng and p_correct < 1 this is the noisy teacher: on a
    hard step (a carry) it writes the right value with prob. p_correct, else forgets the carry and
    writes one more, and goes on from what it wrote. An error is never undone (it only grows), so a
    wrong path ends on a wrong answer. Returns (written values, number of hard steps met)."""
    b, starts = params
    state, values, hard = list(starts), [], 0
    for _ in range(steps):
        for r in range(len(state)):
            y = (state[r] + b) % MOD
            if state[r] + b >= MOD:
                hard += 1
                if rng is not None and rng.random() >= p_correct:
                    y = (y + 1) % MOD
            state[r] = y
            values.append(y)
    return values, hard


def toy_prompt_ids(params) -> list[int]:
    """<bos> +b x0_A x0_B x0_C: the solution continues right after the starts."""
    b, starts = params
    return [BOS, WORD_ID[f"+{b}"]] + [WORD_ID[str(x)] for x in starts]


def toy_solution_ids(values: list[int]) -> list[int]:
    """Steps A B C A B C ..., then '=' and the final value of each register, then <eos>."""
    return [WORD_ID[str(v)] for v in values] + [EQUALS] + [WORD_ID[str(v)] for v in values[-3:]] + [EOS]


def random_params(rng):
    return int(rng.integers(1, MOD)), [int(x) for x in rng.integers(0, MOD, len(REGISTERS))]


def toy_reward(problem: Problem, response_ids: list[int]) -> float:
    """Outcome reward: read the three tokens after the first '=' and nothing else (1331 answers)."""
    try:
        i = list(response_ids).index(EQUALS)
    except ValueError:
        return 0.0
    return float(list(response_ids[i + 1 : i + 4]) == problem.answer)


def make_toy_task(steps: int, hard_min: int, hard_max: int, n_train: int, n_heldout: int, seed: int) -> Task:
    """Problems whose number of hard steps H lies in [hard_min, hard_max], drawn deterministically
    from `seed`; train and held-out are disjoint."""
    if not 0 <= hard_min <= hard_max <= 3 * steps:
        raise InputError(f"need 0 <= --hard-min <= --hard-max <= {3 * steps}, got {hard_min}..{hard_max}")
    rng = np.random.default_rng(seed)
    problems, seen = [], set()
    for _ in range(2_000_000):
        if len(problems) == n_train + n_heldout:
            break
        params = random_params(rng)
        values, hard = toy_solve(params, steps)
        key = str(params)
        if not hard_min <= hard <= hard_max or key in seen:
            continue
        seen.add(key)
        answer = toy_solution_ids(values)[-4:-1]
        pid = "toy:+{}:{}-{}-{}:L{}".format(params[0], *params[1], steps)
        problems.append(Problem(pid, toy_prompt_ids(params), answer, {"hard": hard, "params": params}))
    else:
        raise InputError(f"could not draw {n_train + n_heldout} distinct problems with H in {hard_min}..{hard_max}")
    spec = dict(task="toy", steps=steps, hard=[hard_min, hard_max], n=[n_train, n_heldout], seed=seed)
    return Task(
        name="toy",
        train=problems[:n_train],
        heldout=problems[n_train:],
        reward=toy_reward,
        decode=lambda ids: " ".join(VOCAB[i] for i in ids),
        eos_id=EOS,
        pad_id=PAD,
        max_new_tokens=3 * steps + 5,
        fingerprint=hashlib.sha256(json.dumps(spec).encode()).hexdigest()[:16],
    )


def toy_teacher_batch(rng, batch: int, steps: int):
    """Pretraining data: (prompt + noisy-teacher solution) sequences; all have the same length."""
    seqs = []
    for _ in range(batch):
        params = random_params(rng)
        values, _ = toy_solve(params, steps, rng, TEACHER_P_CORRECT)
        seqs.append(toy_prompt_ids(params) + toy_solution_ids(values))
    return seqs
