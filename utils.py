"""Shared pieces of the four algorithm scripts: sampling, log-probs, evaluation, off-policy traces,
prefixes, FLOPs accounting and metrics logging. No training loop lives here."""

import contextlib
import dataclasses
import glob
import hashlib
import inspect
import json
import math
import os
import random
import re
import shutil
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import Annotated

import numpy as np
import torch


class InputError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


class Stopped(KeyboardInterrupt):
    """A stop by signal: SIGTERM raises it wherever the program is (under clean_errors), as SIGINT
    raises KeyboardInterrupt. The phase it stops may add a note on what it kept (e.add_note)."""

    def __init__(self, signum=signal.SIGINT):
        super().__init__(signum)
        self.signum = signum


def _raise_stopped(signum, frame):
    raise Stopped(signum)


def close_progress_bars():
    """Close the progress bars a stop left open, so that its line is the last one printed (an open
    bar is drawn again when the process exits)."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


@contextlib.contextmanager
def clean_errors():
    """How the entry points end. Bad input: one line `error: ...`, exit 2, and a run dir that this
    run made for nothing is removed again. SIGINT / SIGTERM: one line, exit 130 / 143, with what
    the phase that stopped kept (its notes) and how to continue; the run dir stays for --resume."""
    main = threading.current_thread() is threading.main_thread()
    sigterm = signal.signal(signal.SIGTERM, _raise_stopped) if main else None
    _run.clear()
    try:
        yield
    except InputError as e:
        _remove_unstarted_run()
        close_progress_bars()
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as e:
        close_progress_bars()
        signum = getattr(e, "signum", signal.SIGINT)
        kept = "".join(f"; {note}" for note in getattr(e, "__notes__", []) if note)
        then = f"; continue with: python {_run['script']}.py --resume {_run['dir']}" if _run else ""
        print(f"\n{signal.Signals(signum).name}: stopped{kept}{then}", file=sys.stderr)
        sys.exit(128 + signum)
    finally:
        if main:
            signal.signal(signal.SIGTERM, sigterm)


def autocast(device):
    """bf16 autocast on CUDA (weights, gradients and optimizer state stay fp32); a no-op elsewhere.
    sample() and token_logprobs() use it, so the scripts run unchanged on CPU and GPU."""
    if str(device).startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def low_precision(model) -> bool:
    """The model computes in bfloat16: its weights are, or autocast makes it so (CUDA)."""
    p = next(model.parameters())
    return p.dtype != torch.float32 or p.device.type == "cuda"


def seed_everything(seed: int, threads: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if threads > 0:
        torch.set_num_threads(threads)
    return np.random.default_rng(seed), torch.Generator().manual_seed(seed)


# RUN DIR AND METRICS
CHECKPOINT, POLICY_DIR = "checkpoint.pt", "policy"
WALL_CLOCK = ("time", "time_rollouts", "time_training")
"""metrics fields that are not a function of seed and flags: logged to time.jsonl instead of metrics.jsonl"""
RESUME_MAY_CHANGE = ("threads", "device")
"""flags that --resume may give again: they say where the run executes, not what it computes"""
TENSORBOARD_DIR = "tensorboard"
_tensorboard = {}
"""run dir -> {subdir: SummaryWriter} for the runs started with --tensorboard (None until their first row)"""
_run = {}
"""this process's run (start_run): dir, script, start (time), new (not resumed), made (its dir)"""


def write_atomic(path: str, text: str):
    """Readers see the old file or the whole new one, never a part of it (also after a stop)."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def refuse_taken_run_dir(run_dir):
    taken = ("args.json", "metrics.jsonl", CHECKPOINT)
    if run_dir and any(os.path.exists(os.path.join(run_dir, f)) for f in taken):
        raise InputError(f"run dir '{run_dir}' already holds a run; continue it with --resume {run_dir}, or pick another --run-dir")


def resume_args(args, script: str):
    """Without --resume: `args` as given, but a --run-dir that already holds a run is refused. With
    --resume RUN_DIR: the run's own flags, read from RUN_DIR/args.json; only --threads and --device may
    be given again (any other flag that differs from its default is refused). A finished run (RUN_DIR/
    policy exists) exits 0 at once; one stopped before its first checkpoint starts again, with the
    caches it made (the toy base model, the traces collected so far)."""
    if not getattr(args, "resume", None):
        refuse_taken_run_dir(args.run_dir)
        return args
    run_dir, defaults = args.resume, type(args)()
    path = os.path.join(run_dir, "args.json")
    try:
        with open(path) as f:
            saved = json.load(f)
        assert isinstance(saved, dict)
    except FileNotFoundError:
        raise InputError(f"--resume {run_dir}: no args.json there, so it is not a run dir (give the --run-dir of the run to continue)") from None
    except (OSError, ValueError, AssertionError) as e:
        raise InputError(f"--resume {run_dir}: '{path}' is unreadable ({type(e).__name__}); it cannot be resumed, start a new run") from None
    if saved.get("script") != script:
        raise InputError(f"run dir '{run_dir}' holds a {saved.get('script')} run; resume it with {saved.get('script')}.py")
    names = [f.name for f in dataclasses.fields(args)]
    unknown = sorted(set(saved) - set(names) - {"script"})
    if unknown:
        raise InputError(f"'{path}' has flags that this {script}.py does not know ({', '.join(unknown)}); resume it with the version that started it")
    given = [n for n in names if n not in ("resume", *RESUME_MAY_CHANGE) and getattr(args, n) != getattr(defaults, n)]
    if given:
        flag = "--" + given[0].replace("_", "-")
        raise InputError(f"--resume takes every flag from '{path}'; drop {flag} (only --threads and --device may be given again)")
    if os.path.isdir(os.path.join(run_dir, POLICY_DIR)):
        print(f"run dir '{run_dir}' holds a finished run ({POLICY_DIR}/ is there): nothing to resume")
        sys.exit(0)
    has = [f for f in (CHECKPOINT, "metrics.jsonl") if os.path.exists(os.path.join(run_dir, f))]
    if has == ["metrics.jsonl"]:
        raise InputError(f"run dir '{run_dir}' has metrics.jsonl but no {CHECKPOINT} (removed?), "
                         f"so it cannot be continued; start the run again with another --run-dir")
    merged = {n: saved.get(n, getattr(defaults, n)) for n in names}
    merged.update({n: getattr(args, n) for n in RESUME_MAY_CHANGE if getattr(args, n) != getattr(defaults, n)})
    return type(args)(**dict(merged, resume=run_dir, run_dir=run_dir))


def start_run(args, script: str) -> str:
    """Make the run dir and write args.json, first thing after the checks, so that --resume
    continues a run stopped in any phase; a resumed run keeps its own. Prints the run dir."""
    run_dir = args.run_dir or os.path.join("runs", f"{script}__{args.seed}__{int(time.time())}")
    if getattr(args, "tensorboard", False):
        try:
            import torch.utils.tensorboard  # noqa: F401
        except ImportError:
            raise InputError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
        _tensorboard[run_dir] = None
    if getattr(args, "resume", None):
        _run.update(dir=run_dir, script=script, start=time.time(), new=False, made=False)
        print(f"{script}.py: continuing the run in {run_dir}")
        return run_dir
    refuse_taken_run_dir(run_dir)  # again: another run may have started there since resume_args
    made = not os.path.isdir(run_dir)
    os.makedirs(run_dir, exist_ok=True)
    write_atomic(os.path.join(run_dir, "args.json"), json.dumps(dict(vars(args), run_dir=run_dir, script=script), indent=2))
    _run.update(dir=run_dir, script=script, start=time.time(), new=True, made=made)
    print(f"{script}.py: run dir {run_dir}")
    return run_dir


def _remove_unstarted_run():
    """After bad input: the args.json of a new run that stopped before its first checkpoint, and its
    dir if this run made it, so that the same --run-dir can be given again with the input fixed."""
    args_json = os.path.join(_run.get("dir", ""), "args.json")
    checkpoint = os.path.join(_run.get("dir", ""), CHECKPOINT)
    if _run.get("new") and os.path.exists(args_json) and not os.path.exists(checkpoint):
        os.remove(args_json)
        if _run["made"] and not os.listdir(_run["dir"]):
            os.rmdir(_run["dir"])


def log_metrics(run_dir: str, row: dict):
    """One JSON object per line, flushed at once so a killed run keeps every row it logged. Wall-clock
    fields go to time.jsonl (with the row's step), so metrics.jsonl is a function of seed and flags."""
    clock = {k: row[k] for k in WALL_CLOCK if k in row}
    with open(os.path.join(run_dir, "metrics.jsonl"), "a") as f:
        f.write(json.dumps({k: v for k, v in row.items() if k not in clock}) + "\n")
    if clock:
        with open(os.path.join(run_dir, "time.jsonl"), "a") as f:
            f.write(json.dumps({**{k: row[k] for k in ("sft_step", "step") if k in row}, **clock}) + "\n")
    if run_dir in _tensorboard:
        log_tensorboard(run_dir, {k: v for k, v in row.items() if k not in clock})


def log_groups(run_dir: str, step: int, problem_ids, rewards, prefix_tokens=None):
    """RUN_DIR/groups.jsonl, one row per training step: each group's problem id and how many of its
    on-policy rollouts succeeded (rewards: groups x rollouts), and for PrefixRL how many prefix tokens
    the group's prompt carried (0: the original problem). Which problems a run ever solves, and when,
    is what a stall is about: `python bench/takeoff.py RUN_DIR` reads it."""
    rewards = np.asarray(rewards)
    row = {"step": step, "rollouts": int(rewards.shape[1]), "problems": list(problem_ids),
           "successes": [int(k) for k in (rewards > 0).sum(1)]}
    if prefix_tokens is not None:
        row["prefix_tokens"] = [int(n) for n in prefix_tokens]
    with open(os.path.join(run_dir, "groups.jsonl"), "a") as f:
        f.write(json.dumps(row) + "\n")


def log_tensorboard(run_dir: str, row: dict):
    """--tensorboard (the CleanRL convention): each metrics.jsonl row's numbers as TensorBoard scalars of
    the same names at its `step`, in RUN_DIR/tensorboard; SFT rows (`sft_step`) in RUN_DIR/tensorboard/sft,
    a run of their own there. The first row a process logs rewrites the event files from metrics.jsonl,
    so after a --resume they hold metrics.jsonl's rows, none twice."""
    from torch.utils.tensorboard import SummaryWriter

    writers, rows = _tensorboard[run_dir], [row]
    if writers is None:  # this process's first row: it is metrics.jsonl's last line, after those already logged
        writers = _tensorboard[run_dir] = {}
        shutil.rmtree(os.path.join(run_dir, TENSORBOARD_DIR), ignore_errors=True)
        with open(os.path.join(run_dir, "metrics.jsonl")) as f:
            rows = [json.loads(line) for line in f]
    for r in rows:
        sub = "sft" if "sft_step" in r else ""
        if sub not in writers:
            writers[sub] = SummaryWriter(os.path.join(run_dir, TENSORBOARD_DIR, sub))
        step = r.get("sft_step", r.get("step"))
        for k, v in r.items():
            if k not in ("step", "sft_step") and isinstance(v, (int, float)) and not isinstance(v, bool):
                writers[sub].add_scalar(k, v, step)
    for w in writers.values():
        w.flush()


# COMMAND LINE: tyro, with the script's one-line description and one default per flag
STATED_DEFAULT = re.compile(r"\s*(?:\(default: ([^()]*)\)|[;,] default: ([^()]*))$")
"""a field docstring's own "(default: ...)" / "; default: ...", at its end: what None means there"""


def cli(args_class, description: str):
    """tyro.cli for an entry point, --help opening with `description`: a flag whose docstring
    says what its default means ("(default: runs/<script>__<seed>__<time>)") shows that one
    default, instead of tyro's "(default: None)" after it as well."""
    import tyro

    registry, asking = tyro.constructors.ConstructorRegistry(), []

    @registry.struct_rule
    def stated_defaults(info):
        if asking or info.type is not args_class:
            return None
        asking.append(True)  # tyro's own rule makes the spec: this rule steps aside meanwhile
        try:
            spec = tyro.constructors.ConstructorRegistry.get_struct_spec(info)
        finally:
            asking.pop()
        if not isinstance(spec, tyro.constructors.StructConstructorSpec):
            return spec
        fields = []
        for f in spec.fields:
            text = f.helptext() if callable(f.helptext) else f.helptext
            stated = text and STATED_DEFAULT.search(text)
            if stated:
                said = f"(default: {stated.group(1) or stated.group(2)})"
                hint = tyro.conf.arg(help_behavior_hint=said)
                f = dataclasses.replace(f, type=Annotated[f.type, hint],
                                        helptext=text[: stated.start()])
            fields.append(f)
        return dataclasses.replace(spec, fields=tuple(fields))

    return tyro.cli(args_class, description=description, registry=registry)


# FLAGS: every flag of every entry point (the four scripts, reproduce.py, plot.py, bench/), checked at
# start-up, before any model is loaded, pretrained or sampled: a bad value stops with one line naming the
# flag and what it may be (exit 2). Values of the wrong type or choice are tyro's to refuse.
MAX_THREADS = 1024
"""torch crashes on absurd thread counts (100,000: a segfault); no machine here has more cores than this"""
MIN_TEMPERATURE = 0.01
"""far above where a temperature breaks a run (at 1e-40 logits / T overflow float32: a NaN gradient on the toy), and
already close to greedy sampling"""


def _at_least(n, why=""):
    return (lambda v: v >= n), f">= {n}{why}"


_SEED = (lambda v: 0 <= v <= 2**32 - 1), "in 0..2**32-1"
_POSITIVE = (lambda v: 0 < v < math.inf), "> 0 and finite"
_FRACTION = (lambda v: 0 <= v <= 1), "in [0, 1]"
_TEMPERATURE = (lambda v: MIN_TEMPERATURE <= v < math.inf), f">= {MIN_TEMPERATURE} and finite"
FLAG_RANGES = {
    # the four scripts (bench/calibrate_toy.py takes prefixrl.py's flags)
    "seed": _SEED, "task_seed": _SEED, "trace_seed": _SEED, "threads": ((lambda v: 1 <= v <= MAX_THREADS), f"in 1..{MAX_THREADS}"),
    "steps": _at_least(1), "prompts_per_step": _at_least(1), "rollouts": _at_least(2, " (a group-mean baseline needs two)"),
    "micro_batch": _at_least(1), "save_every": _at_least(1), "eval_every": _at_least(1), "eval_samples": _at_least(1),
    "final_eval_samples": _at_least(1), "n_train": _at_least(1), "n_heldout": _at_least(1), "trace_budget": _at_least(1),
    "toy_pretrain_steps": _at_least(0, " (0: the shipped model's)"), "cuts_per_trace": _at_least(1), "sft_steps": _at_least(0), "sft_batch": _at_least(1), "sample_tokens": _at_least(1), "micro_batch_tokens": _at_least(0),
    "lr": _POSITIVE, "sft_lr": _POSITIVE, "grad_clip": _POSITIVE, "clip": _POSITIVE, "shaping": _POSITIVE,
    "temperature": _TEMPERATURE, "trace_temperature": _TEMPERATURE, "eval_temperature": _TEMPERATURE,
    "cut_min": _FRACTION, "cut_max": _FRACTION, "prefixed_fraction": _FRACTION, "sft_val_fraction": ((lambda v: 0 <= v < 1), "in [0, 1)"),
    # reproduce.py, plot.py, bench/ (a tuple: every item, and at least one)
    "seeds": _at_least(1), "first_seed": _SEED, "jobs": _at_least(1), "methods": ((lambda v: True), "at least one method"),
    "levels": ((lambda v: True), "at least one level"),
    "smooth": _at_least(1), "max_step": _at_least(0), "problems": _at_least(1), "budget": _at_least(1), "batch": _at_least(1),
    "samples": _at_least(1), "fractions": _FRACTION, "rows": _at_least(1), "vocabs": _at_least(1), "repeats": _at_least(1),
}
"""flag -> (test, what it may be); None (an optional flag not given) passes"""
READ_FILES = ("traces", "dataset")
"""path flags naming a file that is read: it must exist"""
WRITTEN = ("run_dir", "cache_dir", "out", "collect_traces_to")
"""path flags naming what is written, made if missing: a directory, but a file for --collect-traces-to
and for an --out that ends in .json (bench/calibrate_arith.py's)"""


def _flag(name):
    return "--" + name.replace("_", "-")


def _device_ok(name):
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        return False
    if device.type == "cuda":
        return torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()
    return device.type == "cpu" or device.type == "mps" and torch.backends.mps.is_available()


def check_args(args):
    """Every flag of `args` (any entry point's Args) in its range, and the combinations that a run needs;
    the first bad one raises InputError, one line naming the flag and what it may be. Nothing is loaded."""
    import typing

    values, hints = vars(args), typing.get_type_hints(type(args))
    for name, value in values.items():  # a choice given through the Python API (tyro refuses the others)
        hint = hints.get(name)
        hint = typing.get_args(hint)[0] if typing.get_origin(hint) in (tuple, typing.Union) else hint  # Tuple[Literal[...], ...], Optional[...]
        if value is None:  # an Optional flag left to its default
            continue
        if typing.get_origin(hint) is typing.Literal and not set(value if isinstance(value, tuple) else (value,)) <= set(typing.get_args(hint)):
            raise InputError(f"{_flag(name)} must be one of {', '.join(map(str, typing.get_args(hint)))}, got {value}")
    for name, (test, allowed) in FLAG_RANGES.items():
        value = values.get(name)
        items = value if isinstance(value, tuple) else (value,)
        if name in values and value is not None and not (items and all(test(v) for v in items)):
            raise InputError(f"{_flag(name)} must be {allowed}, got {value}")
    a = args
    checks = []
    # PATHS AND THE MACHINE
    for name in READ_FILES:
        if values.get(name) and not os.path.isfile(values[name]):
            raise InputError(f"{_flag(name)} must be an existing file, got '{values[name]}'")
    for name in WRITTEN:
        path = values.get(name)
        is_file = name == "collect_traces_to" or name == "out" and str(path).endswith(".json")
        if path and os.path.exists(path) and os.path.isdir(path) == is_file:
            raise InputError(f"{_flag(name)} must be {'a file' if is_file else 'a directory'} (or a path where one can be made), got '{path}', which is not")
    if "device" in values and not _device_ok(a.device):
        raise InputError(f"--device must be cpu, or cuda, cuda:N or mps where this machine has one, got '{a.device}'")
    if "python" in values and not shutil.which(a.python):
        raise InputError(f"--python must be a Python interpreter that can be run, got '{a.python}'")
    if "runs" in values:  # plot.py: a missing one among others is a note there
        checks.append((any(glob.glob(os.path.expanduser(r)) for r in a.runs),
                       f"RUNS must name run dirs, globs or parent dirs of run dirs, at least one that exists, got {' '.join(a.runs) or 'none'}"))
    if "max_new_tokens" in values:  # bench/'s scripts have no task default to fall back on
        least, why = (0, " (0: the task's default)") if "task" in values else (1, "")
        checks.append((a.max_new_tokens >= least, f"--max-new-tokens must be >= {least}{why}, got {a.max_new_tokens}"))
    # COMBINATIONS: what a run needs
    if "micro_batch" in values and not values.get("micro_batch_tokens"):  # tokens: micro-batches of any size
        checks.append(((a.prompts_per_step * a.rollouts) % a.micro_batch == 0,
                       f"batch {a.prompts_per_step}x{a.rollouts} is not divisible by --micro-batch {a.micro_batch}; give a divisor of {a.prompts_per_step * a.rollouts}"))
    if values.get("optimizer") == "sgd" and "dtype" in values:
        checks.append((a.dtype != "bfloat16", "--optimizer sgd (the toy task's default) keeps no float32 copy of the weights: with --dtype bfloat16 most of its "
                                              "small updates would round away; use --dtype float32 or --optimizer adamw"))
    if "cut_min" in values:  # prefixrl.py
        checks.append((a.cut_min <= a.cut_max, f"cut range must satisfy 0 <= --cut-min <= --cut-max <= 1, got {a.cut_min}..{a.cut_max}"))
        checks.append((a.cut_max > 0, f"--cut-max must be > 0 (a cut at 0% of the reasoning is no prefix), got {a.cut_max}"))
        n_prefixed = a.prompts_per_step if a.prefixed_only else round(a.prompts_per_step * a.prefixed_fraction)
        checks.append((n_prefixed >= 1, f"--prefixed-fraction {a.prefixed_fraction} of --prompts-per-step {a.prompts_per_step} leaves no prefixed "
                                        f"prompt per step (round({a.prompts_per_step} x {a.prefixed_fraction}) = 0); raise either (or run standard_rl.py)"))
    if "shaping" in values and a.shaping is not None:  # offpolicy_rl.py: shaping replaces the ratio, so these would be ignored
        for given, flag in ((a.clip is not None, "--clip"), (a.ratio != "token", "--ratio"), (not a.accept_correction, "--no-accept-correction")):
            checks.append((not given, f"{flag} applies to importance ratios, which --shaping replaces: give --shaping or {flag}, not both"))
    for ok, msg in checks:
        if not ok:
            raise InputError(msg)


# SAMPLING: batched, left-padded, with a KV cache, a chunk of rows at a time
SAMPLE_TOKENS = 2**18
"""the scripts' --sample-tokens default: most tokens (prompt + response) one sampling chunk's KV cache holds"""
SAMPLE_ROWS = 1024
"""most rows per sampling chunk, whatever the budget (the sampler's chunk before the budget: same draws)"""


def sample_rows(prompts, max_new_tokens, max_tokens=SAMPLE_TOKENS, max_rows=SAMPLE_ROWS) -> int:
    """Rows per sampling chunk: as many as fit max_tokens when each holds the longest prompt and
    max_new_tokens, so the KV cache is bounded by the budget, not by rows x max_new_tokens."""
    return max(1, min(max_rows, max_tokens // (max(map(len, prompts), default=0) + max_new_tokens)))


@torch.inference_mode()
def sample(model, prompts, max_new_tokens, temperature, eos_id, pad_id, generator, batch_size=SAMPLE_ROWS, max_tokens=SAMPLE_TOKENS):
    """Sample one continuation per prompt, sample_rows(...) rows at a time. Returns (responses,
    logprobs, entropies): token ids (ending with eos when the model stopped), and at each token the
    sampling log-prob and the entropy of the distribution it was drawn from, at this temperature. The
    same rows per chunk give the same draws whatever the budget."""
    out = [], [], []
    rows = sample_rows(prompts, max_new_tokens, max_tokens, batch_size)
    for start in range(0, len(prompts), rows):
        with autocast(next(model.parameters()).device):
            chunk = _sample_batch(model, prompts[start : start + rows], max_new_tokens, temperature, eos_id, pad_id, generator)
        for lists, more in zip(out, chunk):
            lists += more
    return out


def _sample_batch(model, prompts, max_new_tokens, temperature, eos_id, pad_id, generator):
    """One chunk. The prefill keeps the last position's logits only (never [prompts, width, vocab]).
    A row that ends stays in the KV cache (fed padding) until a quarter of the cache's rows have
    ended, then those leave it together (a copy of the cache at every ending cost more). Every row's
    uniforms are still drawn, so the other rows' draws do not depend on when it ended."""
    device = next(model.parameters()).device
    room = max(map(len, prompts)) + max_new_tokens
    out, rows, mask = prefill_once(lambda **kw: model(**kw, logits_to_keep=1), prompts, pad_id, device, room)
    past, logits, position = kv_cache(out), out.logits[:, -1][rows], mask.sum(-1, keepdim=True) - 1
    del out
    tokens = torch.full((len(prompts), max_new_tokens), pad_id, device=device)
    logps = torch.zeros(len(prompts), max_new_tokens, device=device)
    entropies = torch.zeros(len(prompts), max_new_tokens, device=device)
    alive = torch.ones(len(prompts), dtype=torch.bool, device=device)  # the rows that have not ended
    cached = alive.clone()  # the rows in the KV cache, in its order: the alive ones and some that ended
    steps = 0
    for steps in range(1, max_new_tokens + 1):
        token, logp, entropy = draw(logits[alive[cached]], temperature, generator, alive)
        tokens[alive, steps - 1], logps[alive, steps - 1], entropies[alive, steps - 1] = token, logp, entropy
        going = token != eos_id
        if not going.any():
            break
        alive[alive.clone()] = going
        if 4 * alive.sum() <= 3 * cached.sum():  # a quarter of the cache has ended: drop those rows from it
            keep = alive[cached].nonzero()[:, 0]
            past.batch_select_indices(keep)
            mask, position, cached = mask[keep], position[keep], alive.clone()
        if steps == max_new_tokens:
            break
        position = position + 1
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], -1)
        out = model(input_ids=tokens[cached, steps - 1 :steps], attention_mask=mask, position_ids=position,
                    use_cache=True, **{CACHE_ARG: past})
        past, logits = kv_cache(out), out.logits[:, -1]
    responses, logprobs, entropy = [], [], []
    for row, lp, h in zip(tokens[:, :steps].tolist(), logps[:, :steps].tolist(), entropies[:, :steps].tolist()):
        n = row.index(eos_id) + 1 if eos_id in row else len(row)
        responses.append(row[:n])
        logprobs.append(lp[:n])
        entropy.append(h[:n])
    return responses, logprobs, entropy


def prefill_once(forward, sequences, pad_id, device, room=None):
    """Run each distinct sequence once (a group's rollouts share their prompt), left-padded, positions
    counting real tokens only, and copy its KV cache to every row that holds it. Returns (out, rows, mask):
    forward's output for the distinct sequences (its KV cache already one row per sequence),
    rows[i] = sequence i's distinct index, mask = the rows' left-padded attention mask. room: the
    tokens each row's KV cache will hold (sampling: roomy_cache), else transformers' growing one."""
    distinct = {}
    rows = torch.tensor([distinct.setdefault(tuple(x), len(distinct)) for x in sequences], device=device)
    width = max(len(x) for x in distinct)
    ids = torch.tensor([[pad_id] * (width - len(x)) + list(x) for x in distinct], device=device)
    mask = (torch.arange(width, device=device)[None] >= torch.tensor([width - len(x) for x in distinct], device=device)[:, None]).long()
    cache = {} if room is None else {CACHE_ARG: roomy_cache(room)}
    out = forward(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0), use_cache=True, **cache)
    select_rows(kv_cache(out), rows)
    return out, rows, mask[rows]


def select_rows(cache, rows):
    """cache.batch_select_indices(rows) by index_select: its backward (index_add) sums a context's copies
    in a fixed order; indexing's (index_put with accumulate) does not on a multi-threaded CPU, so one
    seed would give other bytes from one process to the next."""
    for layer in cache.layers:
        if hasattr(layer, "room_k"):  # roomy_cache's
            layer.batch_select_indices(rows)
        else:
            layer.keys, layer.values = layer.keys.index_select(0, rows), layer.values.index_select(0, rows)


def _cache_arg():
    from transformers import LlamaModel
    return "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values"


CACHE_ARG = _cache_arg()
"""a forward's KV-cache argument: transformers renamed past_key_values to cache (the old name warns)"""


def kv_cache(out):
    """A forward output's KV cache, under either name (CACHE_ARG)."""
    return out["cache"] if "cache" in out else out["past_key_values"]


def roomy_cache(room):
    """A KV cache whose layers reserve `room` positions at their first write and then copy in only the
    new ones (transformers' DynamicCache concatenates: every sampling step would copy the whole cache)."""
    from transformers.cache_utils import Cache, DynamicLayer

    class RoomyLayer(DynamicLayer):
        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
                b, h, _, d = key_states.shape
                self.room_k = key_states.new_empty(b, h, room, d)
                self.room_v = value_states.new_empty(b, h, room, value_states.shape[-1])
            start, end = self.get_seq_length(), self.get_seq_length() + key_states.shape[-2]
            self.room_k[:, :, start:end], self.room_v[:, :, start:end] = key_states, value_states
            self.keys, self.values = self.room_k[:, :, :end], self.room_v[:, :, :end]
            return self.keys, self.values

        def batch_select_indices(self, indices):
            self.room_k, self.room_v = self.room_k.index_select(0, indices), self.room_v.index_select(0, indices)
            end = self.get_seq_length()
            self.keys, self.values = self.room_k[:, :, :end], self.room_v[:, :, :end]

    return Cache(layer_class_to_replicate=RoomyLayer)


def draw(logits, temperature, generator, alive=None):
    """One token per row from softmax(logits / temperature), its log-prob, and the distribution's entropy
    (train/entropy: the policy's, on the tokens it sampled, at no extra forward). Inverse CDF, on the
    logits' device: one uniform per row comes from `generator` (wherever it lives: B numbers, never the
    vocabulary) and a search in the cumulative sums picks the token, so the full-vocabulary
    probabilities never leave the device, and the same uniforms give the same tokens on any device.
    alive (bool, one per row of the chunk; logits has a row for each True): a uniform is drawn for
    every row of the chunk, those that ended too, so the draws do not depend on which ended."""
    scaled = logits.float() / temperature
    top = scaled.amax(-1, keepdim=True)
    weights = (scaled - top).exp()
    norm = weights.sum(-1)
    log_norm = top[:, 0] + norm.log()
    entropy = norm.log() - (weights * (scaled - top)).sum(-1) / norm  # -sum p log p, p = weights / norm
    cdf = weights.cumsum_(-1)
    u = torch.rand(len(scaled) if alive is None else len(alive), 1, generator=generator, device=generator.device).to(scaled.device)
    u = u if alive is None else u[alive]
    token = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)[:, 0].clamp_(max=scaled.shape[-1] - 1)
    return token, scaled.gather(-1, token[:, None])[:, 0] - log_norm, entropy


# LOG-PROBS: per token, from hidden states, a chunk of positions at a time
def make_batch(contexts, responses, pad_id, device):
    """Right-padded (context + response) ids; loss_mask[b, t] = 1 where token t+1 is a response
    token, i.e. one the policy sampled. Context tokens (prompt, and prefix in PrefixRL) and pads get 0."""
    width = max(len(c) + len(r) for c, r in zip(contexts, responses))
    ids = torch.full((len(contexts), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(contexts), width), dtype=torch.long)
    loss_mask = torch.zeros((len(contexts), width - 1))
    for i, (c, r) in enumerate(zip(contexts, responses)):
        ids[i, : len(c) + len(r)] = torch.tensor(list(c) + list(r))
        attn[i, : len(c) + len(r)] = 1
        loss_mask[i, len(c) - 1 : len(c) + len(r) - 1] = 1
    return ids.to(device), attn.to(device), loss_mask.to(device)


def micro_batches(attn, rows, tokens=0):
    """[(start, end)]: consecutive rows per forward/backward, `rows` at a time, or with tokens > 0 as many
    as keep (rows) x (their longest row) within `tokens`, at least one: activations bounded by tokens."""
    if not tokens:
        return [(s, min(s + rows, len(attn))) for s in range(0, len(attn), rows)]
    spans, start, longest = [], 0, 0
    for i, n in enumerate(attn.sum(1).tolist()):
        if i > start and (i - start + 1) * max(longest, n) > tokens:
            spans.append((start, i))
            start, longest = i, 0
        longest = max(longest, n)
    return spans + [(start, len(attn))]


def token_logprobs(model, ids, attn, temperature=1.0, needed=None, chunk=1024, rows=None):
    """log pi_T(token_{t+1} | tokens_<=t) and the entropy of pi_T at each position, shape [B, T-1], where
    pi_T = softmax(logits / T) and the logits are exactly those model(...) returns (output_logits): the
    distribution sample() draws from at temperature T. The lm head runs on `chunk` positions at a time
    (recomputed in backward), so full-vocabulary fp32 logits never exist for the whole batch at once.
    needed (the loss mask, [B, T-1]): only these positions are wanted (the others come back 0), so the
    context in front of them (prompt, and prefix in PrefixRL) is shared: rows with the same context, the
    n rollouts of a group, run it once, as sample() does. Same values and gradient, less compute.
    Columns that are padding in every row (a micro-batch of short rows) are not run (they come back 0).
    rows (bool, [B]): run only these rows, the others come back 0 (the loss: a row with zero weight
    adds nothing to it or its gradient); with none, the result has no gradient."""
    if rows is not None and not rows.all():
        logp = ent = torch.zeros(ids.shape[0], ids.shape[1] - 1, device=ids.device)
        run = rows.nonzero()[:, 0]
        if len(run):
            lp, e = token_logprobs(model, ids[run], attn[run], temperature, None if needed is None else needed[run], chunk)
            logp, ent = logp.index_copy(0, run, lp.to(logp)), ent.index_copy(0, run, e.to(ent))
        return logp, ent
    width = int(attn.any(0).nonzero().max()) + 1 if attn.any() else ids.shape[1]
    if width == ids.shape[1]:
        return _token_logprobs(model, ids, attn, temperature, needed, chunk)
    logp, ent = _token_logprobs(model, ids[:, :width], attn[:, :width], temperature, None if needed is None else needed[:, : width - 1], chunk)
    pad = (0, ids.shape[1] - width)
    return torch.nn.functional.pad(logp, pad), torch.nn.functional.pad(ent, pad)


def _token_logprobs(model, ids, attn, temperature, needed, chunk):
    with autocast(ids.device):
        start = None if needed is None else (needed.cumsum(1) == 0).sum(1, keepdim=True)  # each row's first needed position
        shared = None if start is None else _shared_context_hidden(model, ids, attn, start[:, 0].tolist())
        hidden, targets = shared or (model.base_model(input_ids=ids, attention_mask=attn, use_cache=False).last_hidden_state[:, :-1], ids[:, 1:])
    flat_h, flat_t = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    logps, ents = [], []
    for s in range(0, flat_h.shape[0], chunk):
        lp, ent = torch.utils.checkpoint.checkpoint(_head_logprobs, model, flat_h[s : s + chunk], flat_t[s : s + chunk], temperature, use_reentrant=False)
        logps.append(lp)
        ents.append(ent)
    logp, ent = torch.cat(logps).view_as(targets), torch.cat(ents).view_as(targets)
    if shared is None:  # already [B, T-1]
        return logp, ent
    # back to the [B, T-1] layout: position t holds the row's (t - start)-th token after its context
    k = torch.arange(needed.shape[1], device=ids.device)[None] - start
    valid = (k >= 0) & (k < attn.sum(1, keepdim=True) - 1 - start)
    k = k.clamp(0, targets.shape[1] - 1)
    return logp.gather(1, k) * valid, ent.gather(1, k) * valid


def backward(loss, model):
    """loss.backward(). A micro-batch whose rows all have zero weight ran none (token_logprobs' rows):
    its loss has no graph and adds zero, and every gradient still exists (zeros), so the optimizer steps
    as on any zero-gradient batch (AdamW's moments move) and GradStd counts it. A NaN loss makes every
    gradient NaN, graph or not, so it stops the run (checkpoints.check_finite). No sync with the device."""
    if loss.requires_grad:
        loss.backward()
    for p in model.parameters():
        if p.requires_grad:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            p.grad.add_(0 * loss.detach())  # + 0, or NaN when the loss is NaN


def mean_entropy(entropies):
    """train/entropy: the policy's mean entropy over the tokens it sampled (sample()'s entropies, of the
    very distributions they were drawn from); None when there are none. NaN when the policy's logits are:
    the scripts stop on it (checkpoints.check_finite), also in a step where no row has a gradient."""
    tokens = [h for row in entropies for h in row]
    return float(np.mean(tokens)) if tokens else None


@torch.no_grad()
def logprobs_no_grad(model, ids, attn, temperature, micro_batch, micro_tokens=0):
    """token_logprobs of every row without a gradient, a micro-batch at a time (as the loss runs them)."""
    return torch.cat([token_logprobs(model, ids[s:e], attn[s:e], temperature)[0] for s, e in micro_batches(attn, micro_batch, micro_tokens)])


SHARED_CONTEXT_CHECKPOINTING = "prefixrl_shared_context_under_checkpointing"
"""attribute a model gets from models.enable_activation_checkpointing: True when its shared-context
forward keeps its log-probs under gradient checkpointing (a model whose forward drops the KV cache then,
GPT-2's, runs whole rows instead)"""


def checkpointing(model) -> bool:
    """Gradient checkpointing is on and acts: train mode, with gradients."""
    return model.training and torch.is_grad_enabled() and any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())


@contextlib.contextmanager
def _no_layer_checkpointing(model):
    """Transformers' per-layer checkpointing off for a forward that writes a KV cache (it would drop it)."""
    on = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True]
    try:
        for m in on:
            m.gradient_checkpointing = False
        yield
    finally:
        for m in on:
            m.gradient_checkpointing = True


@contextlib.contextmanager
def _layers_read_the_cache(model, cache):
    """Each cache layer read, never grown, and the checkpointed layers allowed to keep it: a layer the
    backward pass recomputes finds the cache as its forward did."""
    def read_only(layer, update):
        def read(*args, **kwargs):
            state = dict(layer.__dict__)
            out = update(*args, **kwargs)
            layer.__dict__.update(state)
            return out
        return read

    for layer in cache.layers:
        layer.update = read_only(layer, layer.update)
    blocks = [m for m in model.modules() if hasattr(type(m), "_can_checkpoint_with_cache")]
    try:
        for m in blocks:
            m._can_checkpoint_with_cache = True
        yield
    finally:
        for m in blocks:
            del m._can_checkpoint_with_cache


def _shared_context_hidden(model, ids, attn, starts):
    """Final hidden states predicting each row's tokens after its context, [B, R, H], and those tokens,
    [B, R] (right-padded): each distinct context (row i's tokens up to starts[i], its first needed position) runs
    once (prefill_once) and the rest of each row continues from its KV cache. None when no two rows
    share a context. Under gradient checkpointing the contexts' forward is one checkpoint (recomputed in
    the backward pass, after the rest), and the rest's layers, each a checkpoint, read their KV cache."""
    lengths = attn.sum(1).tolist()
    contexts = [tuple(row[: s + 1]) for row, s in zip(ids.tolist(), starts)]
    rest = max(n - s - 1 for n, s in zip(lengths, starts))  # longest row after its context
    recompute = checkpointing(model)
    if len(set(contexts)) == len(contexts) or rest < 1 or recompute and not getattr(model, SHARED_CONTEXT_CHECKPOINTING, False):
        return None
    if recompute:
        def prefill():
            with _no_layer_checkpointing(model):
                return prefill_once(model.base_model, contexts, 0, ids.device)
        out, rows, ctx_mask = torch.utils.checkpoint.checkpoint(prefill, use_reentrant=False)
    else:
        out, rows, ctx_mask = prefill_once(model.base_model, contexts, 0, ids.device)
    # the rest of each row (its response), right-padded, at the positions it has in the whole row
    position = torch.tensor(starts, device=ids.device)[:, None] + 1 + torch.arange(rest, device=ids.device)
    index = position.clamp(max=ids.shape[1] - 1)
    tail, tail_mask = ids.gather(1, index), attn.gather(1, index) * (position < torch.tensor(lengths, device=ids.device)[:, None])
    with _layers_read_the_cache(model, kv_cache(out)) if recompute else contextlib.nullcontext():
        tail_hidden = model.base_model(input_ids=tail, attention_mask=torch.cat([ctx_mask, tail_mask], 1), position_ids=position,
                                       use_cache=True, **{CACHE_ARG: kv_cache(out)}).last_hidden_state
    return torch.cat([out.last_hidden_state[:, -1:].index_select(0, rows), tail_hidden[:, :-1]], 1), tail  # index_select: as select_rows


def _head_logprobs(model, h, t, temperature):
    with autocast(h.device):  # the lm head at the precision model(...) runs it
        logits = output_logits(model, h)
    logp = torch.log_softmax(logits.float() / temperature, -1)
    return logp.gather(-1, t[:, None])[:, 0], -(logp.exp() * logp).sum(-1).detach()


def output_logits(model, hidden):
    """The logits model(...) returns for these final hidden states: the lm head, then the transform
    some model classes apply inside their forward (Gemma2/3: tanh soft-capping; Granite: divide by
    logits_scaling; Cohere: multiply by logit_scale). check_output_logits refuses any other."""
    logits = model.get_output_embeddings()(hidden)
    config = model.config.get_text_config()
    if getattr(config, "logits_scaling", None):
        logits = logits / config.logits_scaling
    if getattr(config, "logit_scale", None):
        logits = logits * config.logit_scale
    if getattr(config, "final_logit_softcapping", None):
        logits = torch.tanh(logits / config.final_logit_softcapping) * config.final_logit_softcapping
    return logits


@torch.no_grad()
def check_output_logits(model, tolerance=1e-4):
    """Refuse a model whose training log-probs differ from its sampling distribution: token_logprobs in
    train mode (as the loss runs it; dropout would show here), whole rows and with a shared context,
    against log_softmax of model(...)'s logits in eval mode (as sample() runs it). Three short forwards at start-up."""
    device, training = next(model.parameters()).device, model.training
    ids = torch.tensor([[1, 2, 3, 4], [1, 2, 4, 3]], device=device) % model.config.get_text_config().vocab_size
    attn, needed = torch.ones_like(ids), torch.tensor([[0, 1, 1], [0, 1, 1]], device=device)
    try:
        model.train()
        got, shared = token_logprobs(model, ids, attn)[0], token_logprobs(model, ids, attn, needed=needed)[0]
        model.eval()
        with autocast(device):
            logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1]
        want = torch.log_softmax(logits.float(), -1).gather(-1, ids[:, 1:, None])[..., 0]
        gap, shared_gap = (got - want).abs().max().item(), ((shared - want) * needed).abs().max().item()
    except Exception as e:  # no base_model / output embeddings in the usual place, no KV cache
        raise InputError(f"{type(model).__name__} is not supported: its log-probs cannot be computed a chunk at a time ({type(e).__name__}: {e})") from None
    finally:
        model.train(training)
    if low_precision(model):  # bf16: another shape of the same product rounds otherwise
        tolerance = max(tolerance, 0.1)
    if not gap <= tolerance:
        raise InputError(f"{type(model).__name__} is not supported: its forward transforms the logits in a way prefixrl does not reproduce, "
                         f"or it is random in train mode (log-probs differ by {gap:.2g}), so training would not follow the distribution it samples from")
    if not shared_gap <= (0.1 if low_precision(model) else 1e-3):  # other shapes, other rounding: bf16 on CUDA, fp32 elsewhere
        raise InputError(f"{type(model).__name__} is not supported: continuing a shared context from its KV cache changes the log-probs (by {shared_gap:.2g})")


def group_advantages(rewards, group_size, std_normalize=False):
    """A_i = r_i - mean(group); optionally / (std(group) + 1e-6). Equal rewards give exactly 0."""
    r = torch.as_tensor(rewards, dtype=torch.float32).view(-1, group_size)
    adv = r - r.mean(1, keepdim=True)
    if std_normalize:
        adv = adv / (r.std(1, keepdim=True) + 1e-6)
    return adv.view(-1)


def sq_norm(tensors) -> float:
    """sum_i ||t_i||^2 over a list of tensors, from per-tensor float32 norms squared and summed in float64
    (one sync, no float64 copy of them): train/grad_std's squared norms of gradients."""
    return torch.stack([torch.linalg.vector_norm(t, dtype=torch.float32) for t in tensors]).double().pow(2).sum().item()


def grad_change(model, before):
    """(||G - before||^2, G): G the gradient accumulated in `model` so far, `before` a copy of it from
    earlier (None: zero). `before` becomes G in place, a parameter at a time, so train/grad_std keeps one
    copy of the gradient, not two."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if before is None:
        return sq_norm(grads), [g.detach().clone() for g in grads]
    norms = []
    for g, b in zip(grads, before):
        norms.append(torch.linalg.vector_norm(g - b, dtype=torch.float32))
        b.copy_(g)
    return torch.stack(norms).double().pow(2).sum().item(), before


class GradStd:
    """train/grad_std: how much a batch's micro-batches disagree about the gradient. With K > 1
    micro-batches, B/b_k times micro-batch k's gradient d_k (b_k of the B rows) is a full-batch
    estimate g_k (sum_k b_k/B g_k = g = sum_k d_k), and grad_std = sqrt(sum_k b_k/B ||g_k - g||^2) =
    sqrt(sum_k B/b_k ||d_k||^2 - ||g||^2) (K equal micro-batches: sqrt(K sum_k ||d_k||^2 - ||g||^2)).
    add(b_k), after each micro-batch's backward, reads the accumulated gradient against one copy of
    it (grad_change) and leaves it bit for bit as it is. value(): None when K = 1 or when off."""

    def __init__(self, model, rows: int, micro_batches: int, on: bool = True):
        self.model, self.rows, self.on = model, rows, on and micro_batches > 1
        self.sq_norms, self.prev = 0.0, None

    def add(self, rows: int):
        if self.on:  # ||d_k||^2, d_k = the accumulated gradient now - before this micro-batch
            sq, self.prev = grad_change(self.model, self.prev)
            self.sq_norms += self.rows / rows * sq

    def value(self):
        if self.prev is None:
            return None
        return math.sqrt(max(self.sq_norms - sq_norm(self.prev), 0.0))


def choose(rng, pool, n):
    """n items of `pool` drawn at random by `rng`; with replacement only if the pool is smaller."""
    return [pool[i] for i in rng.choice(len(pool), n, replace=len(pool) < n)]


def mean(values):
    """The mean of an array as a float; None when it is empty (a metric with nothing to average)."""
    return float(values.mean()) if values.size else None


class BF16AdamW(torch.optim.Optimizer):
    """AdamW (torch's update, weight decay 0.01 by default) for bfloat16 weights: its moments in float32
    and the new weight computed in float32, then rounded to bfloat16 stochastically (up with probability
    the fraction of the step), so a small update moves the weight on average instead of being lost: at
    lr 1e-6 a weight of 0.02 moves 1/80 of its bfloat16 step, which round-to-nearest drops every time.
    The rounding noise is a function of (seed, step, parameter index): a resumed run draws the same."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, seed=0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, seed=seed))

    def load_state_dict(self, state_dict):
        """torch's, which casts the moments to the weights' dtype; then the float32 moments back."""
        super().load_state_dict(state_dict)
        for saved, group in zip(state_dict["param_groups"], self.param_groups):
            for i, p in zip(saved["params"], group["params"]):
                for key in ("exp_avg", "exp_avg_sq") if i in state_dict["state"] else ():
                    self.state[p][key] = state_dict["state"][i][key].to(p.device, torch.float32)

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            (beta1, beta2), lr = group["betas"], group["lr"]
            for index, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state.update(step=torch.tensor(0.0), exp_avg=torch.zeros_like(p, dtype=torch.float32),
                                 exp_avg_sq=torch.zeros_like(p, dtype=torch.float32))
                state["step"] += 1
                step, grad = int(state["step"].item()), p.grad.float()
                state["exp_avg"].lerp_(grad, 1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = (state["exp_avg_sq"].sqrt() / math.sqrt(1 - beta2**step)).add_(group["eps"])
                weight = p.float().mul_(1 - lr * group["weight_decay"]).addcdiv_(state["exp_avg"], denom, value=-lr / (1 - beta1**step))
                noise = torch.Generator(p.device).manual_seed(hash((group["seed"], step, index)) % 2**63)
                p.copy_(round_stochastic(weight, noise) if p.dtype == torch.bfloat16 else weight)


def round_stochastic(x, generator):
    """float32 -> bfloat16, up or down with probabilities that make the expected result x (its dropped
    16 low bits, read as a fraction of a bfloat16 step, are the chance to round away from zero)."""
    bits = x.view(torch.int32) + torch.randint(0, 2**16, x.shape, dtype=torch.int32, device=x.device, generator=generator)
    return (bits & -(2**16)).view(torch.float32).to(torch.bfloat16)


def adamw(model, lr, seed=0):
    """The scripts' optimizer: torch's AdamW on float32 weights, BF16AdamW on bfloat16 ones (--dtype)."""
    if next(model.parameters()).dtype == torch.bfloat16:
        return BF16AdamW(model.parameters(), lr=lr, seed=seed)
    return torch.optim.AdamW(model.parameters(), lr=lr)


def optimizer(model, name, lr, seed=0):
    """RL's optimizer (--optimizer): adamw(), or SGD with momentum 0.9 (float32 weights: check_args)."""
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    return adamw(model, lr, seed)


# MEMORY ESTIMATE: a step's peak, printed at start-up; a run that cannot fit is refused (exit 2).
# The peak is the weights and AdamW's moments plus the larger of two phases: sampling (a chunk's KV
# cache, its logits) and training (the gradient, train/grad_std's copy, a micro-batch's activations,
# or AdamW's step). Bytes per token are measured on the model itself; tests/test_memory.py compares
# the estimate with peaks measured on a CPU.
MEMORY_GB_ENV = "PREFIXRL_MEMORY_GB"
"""environment variable: the memory (GB) a run may use, instead of what its device has free; 0 turns
the check off (where the estimate is too high for your model)"""
HEAD_BYTES = 24
"""bytes per (position x vocabulary entry) of the lm head's chunk (token_logprobs): its logits,
their float32 log-softmax and probabilities, and in backward their recomputation and gradient"""
SAMPLE_LOGITS_BYTES = 16
"""bytes per (row x vocabulary entry) of a sampling step: the logits and draw()'s float32 copies"""


def memory_per_token(model):
    """(KV-cache bytes, bytes saved for backward) per token, measured on the model's device at its
    precision: the cache of an 8-token prefill; the tensors a train-mode forward saves (parameters
    aside) on 64 tokens minus those on 32, over 32."""
    device, training = next(model.parameters()).device, model.training
    ids = torch.arange(64, device=device)[None] % model.config.get_text_config().vocab_size
    with torch.no_grad(), autocast(device):
        cache = kv_cache(model.base_model(input_ids=ids[:, :8], use_cache=True))
    kv = sum(t.nbytes for layer in cache.layers for t in (layer.keys, layer.values)) / 8
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def saved(n):
        storages = {}

        def keep(t):
            if t.untyped_storage().data_ptr() not in params:
                storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
            with autocast(device), _no_layer_checkpointing(model):
                model.base_model(input_ids=ids[:, :n], use_cache=False)
        return sum(storages.values())

    try:
        model.train()
        return kv, (saved(64) - saved(32)) / 32
    finally:
        model.train(training)


def memory_estimate(model, args, prompt_tokens, new_tokens, per_token=None, cuda=None) -> dict:
    """Peak bytes of a step of these flags, by part, with contexts of up to prompt_tokens and every
    response new_tokens long (the worst case). per_token: memory_per_token's (default: measured
    now); cuda: as on a GPU: autocast's bfloat16 copy of float32 weights, and torch's AdamW step on
    all weights at once (default: where the model is)."""
    config, params = model.config.get_text_config(), list(model.parameters())
    n, weight_bytes = sum(p.numel() for p in params), params[0].element_size()
    kv, act = per_token or memory_per_token(model)
    cuda = params[0].device.type == "cuda" if cuda is None else cuda
    hidden, layers, vocab = config.hidden_size, config.num_hidden_layers, config.vocab_size
    act_bytes = 2 if weight_bytes == 2 or cuda else 4
    row, batch = prompt_tokens + new_tokens, args.prompts_per_step * args.rollouts
    rows = min(SAMPLE_ROWS, max(1, args.sample_tokens // row))  # sample_rows()
    by_tokens = max(1, args.micro_batch_tokens // row)  # micro_batches()
    micro_rows = min(batch, by_tokens if args.micro_batch_tokens else args.micro_batch)
    e = dict(rows=rows, row=row, micro_rows=micro_rows, weights=n * weight_bytes)
    rl_state = 4 * n if getattr(args, "optimizer", "adamw") == "sgd" else 8 * n  # SGD's momentum, AdamW's two moments
    e["adamw"] = rl_state + (8 * n if getattr(args, "sft_steps", 0) else 0)  # sft_rl.py keeps SFT's AdamW too
    e["autocast_copy"] = 2 * n if cuda and weight_bytes == 4 else 0
    # SAMPLING: the whole KV cache at the last step (and a layer's copy as it grows), or the
    # prefill: the distinct prompts' cache, its copy to every row, and a layer's activations
    distinct = -(-rows // min(args.rollouts, args.eval_samples))  # a group shares its prompt
    decode = rows * row * kv * (1 + 1 / layers) + rows * vocab * SAMPLE_LOGITS_BYTES
    prefill = (rows + distinct) * prompt_tokens * kv + distinct * prompt_tokens * act / layers
    e["sampling"] = max(decode, prefill)
    # TRAINING: the gradient, then the larger of AdamW's step (torch's on a GPU: a temporary of
    # every weight at once; else a few of the largest weight) and a micro-batch's backward: its
    # activations (checkpointed: each layer's input, and one layer recomputed), train/grad_std's
    # copy of the gradient, and after the first micro-batch, where a group's rows share their
    # context, its gradient once more: the context's forward and the rest's use every weight, so
    # backward holds the rest's gradient until the context's part is added to it
    tokens = micro_rows * row
    checkpointed = any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())
    if checkpointed:
        saved = tokens * (hidden * act_bytes * (layers + 1) + act / layers)
    else:
        saved = tokens * act
    shared = args.rollouts > 1 and micro_rows > 1  # and token_logprobs runs the context once:
    shared = shared and (not checkpointed or getattr(model, SHARED_CONTEXT_CHECKPOINTING, False))
    e["gradient"] = n * weight_bytes
    e["grad_std_copy"] = n * weight_bytes if args.grad_std and batch > micro_rows else 0
    e["context_gradient"] = n * weight_bytes if shared and batch > micro_rows else 0
    e["activations"] = saved + tokens * hidden * act_bytes + min(1024, tokens) * vocab * HEAD_BYTES
    e["adamw_step"] = 4 * n if cuda and weight_bytes == 4 else 16 * max(p.numel() for p in params)
    backward = e["grad_std_copy"] + e["context_gradient"] + e["activations"]
    e["training"] = e["gradient"] + max(backward, e["adamw_step"])
    e["total"] = e["weights"] + e["adamw"] + e["autocast_copy"] + max(e["sampling"], e["training"])
    return e


def free_memory(device):
    """Bytes free on the device now (a GPU's, or the machine's MemAvailable); None where unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            return int(re.search(r"MemAvailable:\s+(\d+) kB", f.read()).group(1)) * 1024
    except (OSError, AttributeError):
        return None


def check_memory(model, task, args) -> dict:
    """Print the estimate for this run (its longest prompt, and PrefixRL's longest prefix); refuse
    one that needs more than the device holds: what is free now and the weights, already loaded."""
    prefix = round(getattr(args, "cut_max", 0) * task.max_new_tokens)
    prompt = max(len(p.prompt_ids) for p in task.train + task.heldout) + prefix
    e = memory_estimate(model, args, prompt, task.max_new_tokens)
    free = free_memory(args.device)
    room = free and free + e["weights"]
    room = float(os.environ[MEMORY_GB_ENV]) * 1e9 if MEMORY_GB_ENV in os.environ else room
    gb = {k: f"{v / 1e9:.2f}" for k, v in e.items()}
    state = "optimizer state" if getattr(args, "optimizer", "adamw") == "sgd" else "AdamW"
    print(f"memory estimate: {gb['total']} GB = weights {gb['weights']} + {state} {gb['adamw']}"
          f" + autocast copy {gb['autocast_copy']} + the larger of sampling {gb['sampling']}"
          f" ({e['rows']} rows x {e['row']} tokens) and training {gb['training']} (activations"
          f" {gb['activations']} of {e['micro_rows']} rows, grad_std copy {gb['grad_std_copy']});"
          f" {args.device} holds {f'{room / 1e9:.1f} GB' if room else 'an unknown amount'}")
    if room and e["total"] > room:
        raise InputError(f"this run needs about {e['total'] / 1e9:.1f} GB and {args.device} holds "
                         f"{room / 1e9:.1f} GB: lower --sample-tokens or --micro-batch-tokens, or "
                         f"use --gradient-checkpointing, --dtype bfloat16 or --no-grad-std "
                         f"({MEMORY_GB_ENV}=0 skips this check)")
    return e


# EVALUATION: pass@k with the unbiased estimator
def pass_at_k(n: int, c: int, k: int) -> float:
    """1 - C(n-c, k) / C(n, k): the chance that k of the n samples include a correct one (k <= n)."""
    if not 1 <= k <= n:
        raise ValueError(f"pass@{k} needs 1 <= k <= n samples, got n={n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


@torch.no_grad()
def evaluate(model, task, problems, n, temperature, generator, ks=(1, 8), contexts=None, max_tokens=SAMPLE_TOKENS):
    """Sample n completions per problem (from its prompt, or from `contexts`) and return
    ({k: mean pass@k}, per-problem correct counts)."""
    contexts = contexts or [p.prompt_ids for p in problems]
    prompts = [c for c in contexts for _ in range(n)]
    responses, _, _ = sample(model, prompts, task.max_new_tokens, temperature, task.eos_id, task.pad_id, generator, max_tokens=max_tokens)
    counts = [0] * len(problems)
    for i, (ctx, resp) in enumerate(zip(prompts, responses)):
        p = problems[i // n]
        counts[i // n] += int(task.reward(p, ctx[len(p.prompt_ids):], resp) > 0)
    return {k: float(np.mean([pass_at_k(n, c, k) for c in counts])) for k in ks if k <= n}, counts


def eval_pass_rates(model, task, problems, args, generator):
    """The scripts' evaluation, always without prefix: pass@1 on `problems` (the training pool), pass@1 and
    pass@8 on the held-out problems, from --eval-samples samples per problem at --eval-temperature."""
    model.eval()
    train_pass, _ = evaluate(model, task, problems, args.eval_samples, args.eval_temperature, generator, max_tokens=args.sample_tokens)
    heldout_pass, _ = evaluate(model, task, task.heldout, args.eval_samples, args.eval_temperature, generator, max_tokens=args.sample_tokens)
    return {"eval/train_pass@1": train_pass[1], "eval/heldout_pass@1": heldout_pass[1], "eval/heldout_pass@8": heldout_pass.get(8)}


def pass_given_prefix(model, task, problems, traces, f, args, generator):
    """Back-generalization (PrefixRL's --prefixed-only): pass@1 on `problems` given the first f of
    their traces' reasoning (task.reasoning_end), from --eval-samples samples at
    --eval-temperature."""
    contexts = []
    for p in problems:
        trace = traces[p.id].token_ids
        contexts.append(p.prompt_ids + trace[: round(f * task.reasoning_end(p, trace))])
    passed, _ = evaluate(model, task, problems, args.eval_samples, args.eval_temperature, generator,
                         contexts=contexts, max_tokens=args.sample_tokens)
    return passed[1]


def print_summary(run_dir, evals):
    """A run's last line: the wall time of every phase of this process (model, traces, training,
    final evaluation), its final evaluation (`evals`, the last eval row; pass@8 when it had 8
    samples) and where the results are."""
    took = duration(time.time() - _run["start"]) + ("" if _run["new"] else " since --resume")
    pass8 = evals["eval/heldout_pass@8"]
    print(f"done in {took}: train pass@1 {evals['eval/train_pass@1']:.3f}, held-out pass@1 "
          f"{evals['eval/heldout_pass@1']:.3f}" + ("" if pass8 is None else f", pass@8 {pass8:.3f}")
          + f"; results in {run_dir}/: metrics.jsonl, final_eval.json, {POLICY_DIR}/")


def duration(seconds: float) -> str:
    """83s, 4m 05s, 1h 09m"""
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 60}m {s % 60:02d}s" if s >= 60 else f"{s}s"


def save_final_eval(run_dir, model, task, train_problems, n, temperature, generator, max_tokens=SAMPLE_TOKENS):
    """Per-problem correct counts out of n samples (no prefix) at the end of a run, so plot.py can draw
    held-out pass@k for every k <= n (the paper's Fig. 8)."""
    _, train_counts = evaluate(model, task, train_problems, n, temperature, generator, ks=(), max_tokens=max_tokens)
    _, heldout_counts = evaluate(model, task, task.heldout, n, temperature, generator, ks=(), max_tokens=max_tokens)
    with open(os.path.join(run_dir, "final_eval.json"), "w") as f:
        json.dump(dict(n=n, temperature=temperature, train_counts=train_counts, heldout_counts=heldout_counts), f)


# FLOPS: 2·N·D to sample, 6·N·D to train (N parameters, D tokens)
def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# OFF-POLICY TRACES: rejection sampling from the base model, cached on disk
@dataclass
class Trace:
    problem_id: str
    token_ids: list
    """the correct response, as the base model's token ids"""
    text: str
    attempts: int
    """samples drawn for this problem up to and including the first correct one"""
    flops: float
    """sampling FLOPs spent on this problem (every sample drawn for it, also after the first success)"""
    behaviour_logprobs: list
    """per-token log-prob of the trace under the sampling distribution (base model at `temperature`)"""
    temperature: float = 1.0
    """the temperature the trace was sampled at (files of format v1 have none: they were all sampled at 1.0)"""


def trace_cache_path(cache_dir, model_id, task, budget, seed):
    """One cache file per (model, problems, budget, seed): a different model or task never reuses it."""
    tag = hashlib.sha256(f"{model_id}|{task.fingerprint}".encode()).hexdigest()[:12]
    return os.path.join(cache_dir, f"traces-{task.name}-{tag}-b{budget}-s{seed}.json")


PARTIAL = ".partial"
"""a trace collection in progress: cache path + PARTIAL, rewritten after each round"""


def traces_key(model_id, task, problems, budget, temperature, seed):
    """What a traces file was collected for (model, problems, budget, temperature, seed): its "key"."""
    return dict(model=model_id, task=task.fingerprint, budget=budget, temperature=temperature, seed=seed,
                problems=hashlib.sha256("".join(p.id for p in problems).encode()).hexdigest()[:16])


def collect_traces(model, task, problems, budget, temperature, seed, cache_path,
                   batch_size=SAMPLE_ROWS, model_id="", max_tokens=SAMPLE_TOKENS, shipped=None):
    """One verified-correct trace per problem by rejection sampling, stopping at the first success,
    at most `budget` samples per problem. Every sample drawn is charged to its problem, also those
    drawn in the same batch after its first success. Returns (traces by problem id, total sampling
    FLOPs). After each round of batches, the collection so far (traces, each problem's attempts and
    FLOPs, the sampler's RNG state) goes to cache_path + PARTIAL: a collection stopped by a signal
    (or killed) goes on from its last round and ends with the traces of one that never stopped.
    `shipped`: a file this collection wrote before (models.shipped_traces), copied into the cache
    instead when its key is this collection's; its FLOPs are charged all the same."""
    from tqdm import tqdm

    key = traces_key(model_id, task, problems, budget, temperature, seed)
    if not os.path.exists(cache_path) and shipped and traces_file_key(shipped) == key:
        os.makedirs(os.path.dirname(cache_path) or ".", exist_ok=True)
        with open(shipped) as f:  # atomic: a run started beside this one never reads half a file
            write_atomic(cache_path, f.read())
        traces, flops = load_traces(cache_path, key)
        print(f"rejection sampling: the shipped collection {shipped} (the bytes this collection writes), copied to "
              f"{cache_path}: {len(traces)} traces, its {flops:.3g} FLOPs charged")
        return traces, flops
    if os.path.exists(cache_path):
        return load_traces(cache_path, key)
    partial, generator = cache_path + PARTIAL, torch.Generator().manual_seed(seed)
    n_params, traces = count_params(model), {}
    attempts, flops = {p.id: 0 for p in problems}, {p.id: 0.0 for p in problems}
    if os.path.exists(partial):  # a collection that stopped: on from its last round
        traces, attempts, flops, rng_state = _load_partial(partial, key)
        generator.set_state(rng_state)
        print(f"trace collection goes on from {partial}: {len(traces)} traces so far")
    kept, total = len(traces), len(problems) * budget
    bar = tqdm(total=total, initial=sum(attempts.values()), desc="rejection sampling",
               mininterval=2)
    try:
        while True:
            active = [p for p in problems if p.id not in traces and attempts[p.id] < budget]
            if not active:
                break
            per = max(1, min(batch_size // len(active), budget))
            todo = [(p, min(per, budget - attempts[p.id])) for p in active]
            prompts = [p.prompt_ids for p, m in todo for _ in range(m)]
            owners = [p for p, m in todo for _ in range(m)]
            responses, logprobs, _ = sample(model, prompts, task.max_new_tokens, temperature,
                                         task.eos_id, task.pad_id, generator, batch_size,
                                         max_tokens)
            for p, resp, lp in zip(owners, responses, logprobs):
                flops[p.id] += 2 * n_params * (len(p.prompt_ids) + len(resp))  # drawn, so paid for
                if p.id in traces:  # past the first success: not an attempt
                    continue
                attempts[p.id] += 1
                if task.reward(p, [], resp) > 0:
                    text = task.decode(resp)
                    traces[p.id] = Trace(p.id, resp, text, attempts[p.id], 0.0, lp, temperature)
            bar.update(len(prompts))
            bar.set_postfix(found=len(traces), active=len(active))
            rng_state = generator.get_state().tolist()
            save_traces(partial, key, traces, attempts, flops, generator=rng_state)
            kept = len(traces)
    except KeyboardInterrupt as e:  # `partial` holds the last round's collection
        done = os.path.exists(partial)
        e.add_note(f"trace collection kept its {kept} traces so far and each problem's attempts "
                   f"in {partial}" if done else "trace collection had finished no round")
        raise
    finally:
        bar.close()
    for pid, t in traces.items():
        t.flops = flops[pid]
    save_traces(cache_path, key, traces, attempts, flops)
    if os.path.exists(partial):
        os.remove(partial)
    return traces, sum(flops.values())


def traces_file_key(path):
    """A traces file's key, None if it has none or cannot be read."""
    try:
        with open(path) as f:
            return json.load(f).get("key")
    except (OSError, ValueError, AttributeError):
        return None


def _load_partial(path, key):
    """A collection in progress: (traces, attempts, FLOPs per problem, the sampler's RNG state)."""
    traces, _ = load_traces(path, key)
    with open(path) as f:
        data = json.load(f)
    if not (isinstance(data.get("attempts"), dict) and isinstance(data.get("generator"), list)):
        raise InputError(f"trace collection in progress '{path}' has no attempts or RNG state; "
                         f"delete it to collect again")
    rng_state = torch.tensor(data["generator"], dtype=torch.uint8)
    return traces, data["attempts"], data["flops"], rng_state


TRACES_FORMAT, TRACES_FORMAT_V1 = "prefixrl-traces-v2", "prefixrl-traces-v1"
"""v2 adds each trace's temperature and the sampling FLOPs of every problem tried; v1 files still load"""


def save_traces(path, key, traces, attempts, flops, **extra):
    """`attempts` and `flops`: per problem id, for every problem tried (found or not)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    data = dict(format=TRACES_FORMAT, key=key, total_flops=sum(flops.values()), attempts=attempts,
                flops=flops, traces=[asdict(t) for t in traces.values()], **extra)
    write_atomic(path, json.dumps(data))


TRACES_SOURCE = "a traces-*.json of a --cache-dir, or reproduce.py's --collect-traces-to"
"""where a traces file comes from, named when a --traces file is refused"""
_NUMBER = (int, float)
TRACE_FIELDS = {
    "problem_id": (lambda v: isinstance(v, str), "a string"),
    "token_ids": (lambda v: isinstance(v, list) and v and all(isinstance(i, int) for i in v)
                  and min(v) >= 0, "a non-empty list of token ids"),
    "text": (lambda v: isinstance(v, str), "a string"),
    "attempts": (lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
    "flops": (lambda v: isinstance(v, _NUMBER), "a number"),
    "behaviour_logprobs": (lambda v: isinstance(v, list), "a list"),
    "temperature": (lambda v: isinstance(v, _NUMBER) and v > 0, "a number > 0"),
}
"""a trace's fields, each with its test and what it must be (format v1 has no temperature)"""


def traces_file_problem(data):
    """What keeps `data`, a parsed JSON file, from being a prefixrl traces file; None if nothing."""
    if not isinstance(data, dict) or data.get("format") not in (TRACES_FORMAT, TRACES_FORMAT_V1):
        return f'no "format": "{TRACES_FORMAT}"'
    if not isinstance(data.get("key"), dict) or not isinstance(data.get("total_flops"), _NUMBER):
        return 'no "key" object or "total_flops" number'
    flops = data.get("flops", {})
    if not isinstance(flops, dict) or not all(isinstance(v, _NUMBER) for v in flops.values()):
        return '"flops" must map problem ids to numbers'
    if not isinstance(data.get("traces"), list):
        return 'no "traces" list'
    for i, t in enumerate(data["traces"]):
        if not isinstance(t, dict):
            return f"trace {i} is not an object"
        unknown = sorted(set(t) - set(TRACE_FIELDS))
        missing = [k for k in TRACE_FIELDS if k not in t and k != "temperature"]
        if missing:
            return f"trace {i} has no field {missing[0]}"
        if unknown:
            return f"trace {i} has an unknown field {unknown[0]}"
        bad = next((k for k, (ok, _) in TRACE_FIELDS.items() if k in t and not ok(t[k])), None)
        if bad:
            return f"trace {i}'s {bad} must be {TRACE_FIELDS[bad][1]}"
    return None


def load_traces(path, key=None, problems=None):
    """Read a traces file; with `key`, it is a cache that must have been collected for exactly this
    model/task/budget; with `problems` (Problems or their ids), it must hold traces for some of them
    (others are ignored). Returns (traces, FLOPs charged): the sampling FLOPs of the problems asked
    for (all the file's without `problems`), failed ones included where the file records them (v2);
    a v1 file records only its traces' FLOPs per problem, so its failed problems are not charged. A
    bad file stops with one line: a cache is deleted and collected again, a user's file is not."""
    fix = "delete it to re-collect" if key is not None else f"give {TRACES_SOURCE}"
    try:
        with open(path) as f:
            data = json.load(f)
    except OSError as e:
        why = e.strerror or type(e).__name__
        raise InputError(f"traces file '{path}' cannot be read ({why})") from None
    except ValueError as e:  # UnicodeDecodeError too
        at = f" at line {e.lineno} column {e.colno}" if isinstance(e, json.JSONDecodeError) else ""
        why = type(e).__name__ + at
        raise InputError(f"traces file '{path}' is not JSON ({why}); {fix}") from None
    why = traces_file_problem(data)
    if why:
        raise InputError(f"traces file '{path}' is not a prefixrl traces file ({why}); {fix}")
    traces = {t["problem_id"]: Trace(**t) for t in data["traces"]}
    flops = data.get("flops", {pid: t.flops for pid, t in traces.items()})
    if key is not None and data["key"] != key:
        diff = "/".join(sorted(k for k in key if data["key"].get(k) != key[k]))
        raise InputError(f"traces file '{path}' was collected for a different {diff}; {fix}")
    if problems is not None:
        ids = [p if isinstance(p, str) else p.id for p in problems]
        wanted = set(ids)
        if not traces:
            raise InputError(f"traces file '{path}' holds no traces (its collection found none); "
                             f"give a file with at least one correct trace for these problems")
        if not wanted & set(traces):
            raise InputError(f"traces file '{path}' holds traces for other problems: none of its "
                             f"{len(traces)} problem ids (such as '{next(iter(traces))}') is one "
                             f"of the {len(ids)} training problems here (such as '{ids[0]}'); give "
                             f"traces collected for this task, with the same task flags (--task, "
                             f"--n-train, --task-seed...)")
        traces = {pid: t for pid, t in traces.items() if pid in wanted}
        flops = {pid: v for pid, v in flops.items() if pid in wanted}
    return traces, float(sum(flops.values()))


def no_trace_found(args, n_problems) -> InputError:
    """The scripts' error when rejection sampling found no trace at all: what makes one likelier."""
    if args.dataset or args.task.endswith(".jsonl"):
        easier = f"give easier problems than those of {args.dataset or args.task}"
    else:
        easier = "lower --level" if args.task == "arith" else "lower --hard-min and --hard-max"
    return InputError(f"no correct trace found for any of {n_problems} problems within "
                      f"--trace-budget {args.trace_budget} samples each; raise --trace-budget, or "
                      f"{easier}")


def cut_prefixes(task, problems, traces, n_cuts, cut_min, cut_max, seed):
    """n_cuts fixed token-level cuts per trace, each uniform in [cut_min, cut_max] of its reasoning
    (task.reasoning_end: the tokens before its final answer), so no prefix holds the answer.
    Returns [(problem, prefix_ids)] for the problems with a trace, drawn once, from their own seed,
    so every run sees the same. Prints their lengths (prefix_summary). An empty cut (a trace that states
    its answer first) is dropped: it would be the original problem, counted as a prefixed one."""
    rng = np.random.default_rng(seed)
    out, trace_lengths, reasoning, cut_trace_lengths = [], [], [], []
    for p in sorted((p for p in problems if p.id in traces), key=lambda p: p.id):
        ids = traces[p.id].token_ids
        trace_lengths.append(len(ids))
        reasoning.append(task.reasoning_end(p, ids))
        for _ in range(n_cuts):
            cut = int(round(rng.uniform(cut_min, cut_max) * reasoning[-1]))
            if cut > 0:
                out.append((p, ids[:cut]))
                cut_trace_lengths.append(len(ids))
    if trace_lengths and not out:
        raise InputError(f"no prefix to train on: every cut is empty ({cut_min:g}-{cut_max:g} of the {min(reasoning)}-{max(reasoning)} "
                         f"reasoning tokens before the answer of {len(trace_lengths)} traces rounds to 0); raise --cut-max, "
                         f"or collect traces that reason before they answer")
    if out:
        empty = len(trace_lengths) * n_cuts - len(out)
        print(prefix_summary([len(prefix) for _, prefix in out], cut_trace_lengths, reasoning, trace_lengths)
              + (f"; {empty} empty cuts dropped (no reasoning before the answer to cut)" if empty else ""))
    return out


def prefix_summary(prefix_lengths, prefix_trace_lengths, reasoning_lengths, trace_lengths) -> str:
    """One line for the start-up log: the prefixes' tokens and their share of their trace, and the
    traces' reasoning share (the tokens before the final answer), each min/median/max. A cut that
    lands near the start of every trace (an answer found too early) shows here."""
    def spread(xs, fmt):
        return "/".join(format(v, fmt) for v in (np.min(xs), np.median(xs), np.max(xs)))

    share = np.asarray(prefix_lengths) / np.asarray(prefix_trace_lengths)
    return (f"{len(prefix_lengths)} prefixes of {len(trace_lengths)} traces: tokens min/median/max {spread(prefix_lengths, '.0f')} "
            f"({spread(share, '.0%')} of the trace); reasoning {spread(np.asarray(reasoning_lengths) / np.asarray(trace_lengths), '.0%')} of the trace")
