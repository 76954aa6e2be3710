"""Run directories as plot.py and claims.py read them: loading, grouping into settings and methods,
per-step series with their mean and band over seeds, and the numbers of results.md.

What a run dir holds is described in plot.py's docstring."""

import functools
import glob
import json
import math
import os
import re
from dataclasses import dataclass
from typing import Optional

import numpy as np

# keys that do not change what a run measures (or are the seed itself)
IGNORED_KEYS = {"seed", "run_dir", "cache_dir", "threads", "device", "micro_batch", "steps",
                "eval_every", "script", "save_every", "resume", "tensorboard", "final_eval_samples"}
# keys that define the problems and the base model: runs that differ here are not comparable
SETTING_KEYS = ("model", "task", "dataset", "level", "max_new_tokens", "toy_pretrain_steps",
                "toy_length", "hard_min", "hard_max", "n_train", "n_heldout", "task_seed",
                "trace_budget", "trace_seed")
# a key that does not apply to a run's task does not split settings
ONLY_FOR_TASK = {"level": ("arith",), "toy_pretrain_steps": ("toy",), "toy_length": ("toy",),
                 "hard_min": ("toy",), "hard_max": ("toy",)}
# a method run on traces from another model family (--traces FILE): paper Fig. 10
OTHER_FAMILY_SUFFIX = ", other-family traces"
OTHER_FAMILY = "PrefixRL" + OTHER_FAMILY_SUFFIX
# standard RL with n rollouts on its own base model's pool (not "RL n=8, other-family traces")
RL_NAME = re.compile(r"RL n=(\d+)")
COLORS = {"PrefixRL": "tab:red", "PrefixRL prefixed-only": "tab:orange", "RL n=8": "tab:gray",
          "RL n=64": "black", "SFT+RL": "tab:blue", "Off-policy RL": "tab:green",
          "LUFFY": "tab:olive", OTHER_FAMILY: "maroon"}
SPARE_COLORS = ["tab:purple", "tab:brown", "tab:pink", "tab:cyan", "gold", "navy", "lime", "teal"]
PREFIX_KEY = re.compile(r"^eval/prefix@([0-9.]+)_pass@1$")


# LOADING
@dataclass
class Run:
    path: str
    args: dict
    rows: list
    final_eval: Optional[dict]

    @property
    def name(self):
        return os.path.basename(os.path.normpath(self.path))

    @functools.cached_property
    def evals(self):
        """{step: eval row} (no-prefix eval rows; the last one wins if a step repeats)"""
        return {r["step"]: r for r in self.rows if "step" in r and "eval/train_pass@1" in r}

    @functools.cached_property
    def train(self):
        """RL training rows, in step order"""
        rows = [r for r in self.rows if "step" in r and "eval/train_pass@1" not in r
                and any(k.startswith("train/") for k in r)]
        return sorted(rows, key=lambda r: r["step"])

    @property
    def offset(self):
        """FLOPs before the first step: the rejection-sampling cost of the traces (0 if not
        charged)"""
        return min((r["flops"] for r in self.rows if r.get("flops") is not None), default=0.0)

    def final(self, key):
        evals = self.evals
        return value(evals[max(evals)], key) if evals else None


def value(row, key):
    v = row.get(key)
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else float(v)


def load_run(path):
    with open(os.path.join(path, "args.json")) as f:
        args = json.load(f)
    rows, bad = [], 0
    with open(os.path.join(path, "metrics.jsonl")) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except ValueError:
                bad += 1  # a run being written may end in a partial line
    if bad:
        print(f"note: {path}: skipped {bad} unreadable line(s) of metrics.jsonl")
    final_eval = None
    if os.path.exists(os.path.join(path, "final_eval.json")):
        with open(os.path.join(path, "final_eval.json")) as f:
            final_eval = json.load(f)
    return Run(path, args, rows, final_eval)


def find_runs(patterns):
    paths = []
    for pattern in patterns:
        for p in sorted(glob.glob(os.path.expanduser(pattern))) or [pattern]:
            if os.path.isfile(os.path.join(p, "args.json")):
                paths.append(p)
            elif os.path.isdir(p):
                paths += sorted(os.path.join(p, d) for d in os.listdir(p)
                                if os.path.isfile(os.path.join(p, d, "args.json")))
            else:
                print(f"note: {pattern}: no such run dir")
    runs, seen = [], set()
    for p in paths:
        if os.path.realpath(p) in seen:
            continue
        seen.add(os.path.realpath(p))
        if not os.path.exists(os.path.join(p, "metrics.jsonl")):
            print(f"note: {p}: no metrics.jsonl yet, skipped")
            continue
        runs.append(load_run(p))
    return runs


# GROUPING: settings, then methods
def base_name(a):
    """The method's name from its script and algorithm flags; a run on a traces file (--traces,
    collected by another model family) is a method of its own."""
    script = a.get("script", "?")
    if script == "prefixrl":
        name = "PrefixRL prefixed-only" if a.get("prefixed_only") else "PrefixRL"
    elif script == "standard_rl":
        name = f"RL n={a.get('rollouts', 8)}"
    elif script == "sft_rl":
        name = "SFT+RL"
    elif script == "offpolicy_rl":
        name = "LUFFY" if a.get("shaping") is not None else "Off-policy RL"
    else:
        name = script
    return name + (OTHER_FAMILY_SUFFIX if a.get("traces") else "")


# flags already in the base name (rollouts only for standard RL)
NAMED_BY_BASE = {"prefixed_only", "shaping"}


def shared_keys(runs, candidates):
    """Keys present in every run's args.json (older runs may lack newer flags: those are not
    compared)."""
    return [k for k in candidates if all(k in r.args for r in runs)]


def key_text(k, v):
    return f"{k}={os.path.basename(v) if isinstance(v, str) and os.sep in v else v}"


@dataclass
class Method:
    label: str
    base: str
    runs: list
    color: str = "black"


def setting_value(a, k):
    """A run's value of a setting key; None where the key does not apply to its task (--level on
    the toy); --toy-pretrain-steps 0 as the shipped model's count (a run made before 0 meant it
    recorded the count)."""
    applies_to = ONLY_FOR_TASK.get(k)
    if applies_to is not None and a.get("task", "toy") not in applies_to:
        return None
    return (a[k] or shipped_toy_steps(a.get("model", "toy"))) if k == "toy_pretrain_steps" else a[k]


@functools.lru_cache(None)
def shipped_toy_steps(model):
    """The pretraining steps a shipped toy model records (toy_models/MODEL/prefixrl_toy.json), else 0."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "toy_models", model, "prefixrl_toy.json")
    try:
        with open(path) as f:
            return json.load(f)["steps"]
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def group(runs):
    """[(setting label, [Method])]: runs of one setting grouped into methods, seeds averaged."""
    setting_keys = shared_keys(runs, SETTING_KEYS)
    settings = {}
    for r in runs:
        skey = tuple(json.dumps(setting_value(r.args, k)) for k in setting_keys)
        settings.setdefault(skey, []).append(r)
    varying = [k for i, k in enumerate(setting_keys) if len({s[i] for s in settings}) > 1]
    out = []
    for skey, sruns in settings.items():
        slabel = ", ".join(key_text(k, json.loads(skey[setting_keys.index(k)])) for k in varying)
        by_base = {}
        for r in sruns:
            by_base.setdefault(base_name(r.args), []).append(r)
        methods = []
        for base, bruns in by_base.items():
            keys = [k for k in sorted(set().union(*(r.args for r in bruns)))
                    if k not in IGNORED_KEYS and k not in SETTING_KEYS and k not in NAMED_BY_BASE
                    and not (k == "rollouts" and base.startswith("RL n="))]
            keys = shared_keys(bruns, keys)
            groups = {}
            for r in bruns:
                groups.setdefault(tuple(json.dumps(r.args[k]) for k in keys), []).append(r)
            diff = [k for i, k in enumerate(keys) if len({g[i] for g in groups}) > 1]
            for gkey, gruns in groups.items():
                extra = ", ".join(key_text(k, json.loads(gkey[keys.index(k)])) for k in diff)
                gruns = sorted(gruns, key=lambda r: (r.args.get("seed", 0), r.path))
                methods.append(Method(f"{base} ({extra})" if extra else base, base, gruns))
        order = ["RL n=8", "RL n=64", "SFT+RL", "Off-policy RL", "LUFFY", "PrefixRL", OTHER_FAMILY,
                 "PrefixRL prefixed-only"]
        methods.sort(key=lambda m: (order.index(m.base) if m.base in order else len(order),
                                    m.label))
        spare = iter(SPARE_COLORS * 4)
        used = set()
        for m in methods:
            m.color = COLORS.get(m.base) if m.base in COLORS and m.base not in used else next(spare)
            used.add(m.base)
        out.append((slabel, methods))
    return out


# SERIES: per run {step: (x, y)}, then mean and band over seeds
def rolling(ys, window):
    ys = np.asarray(ys, dtype=float)
    if window <= 1 or len(ys) == 0:
        return ys
    half, out = window // 2, np.empty_like(ys)
    for i in range(len(ys)):
        w = ys[max(0, i - half): i + half + 1]
        out[i] = np.nanmean(w) if np.isfinite(w).any() else np.nan
    return out


def eval_series(run, key, x="step"):
    return {s: (row[x] if x != "step" else s, value(row, key)) for s, row in run.evals.items()
            if value(row, key) is not None}


def train_series(run, key, smooth, x="step"):
    rows = [r for r in run.train if key in r]
    ys = rolling([np.nan if value(r, key) is None else value(r, key) for r in rows], smooth)
    out = {r["step"]: (r[x] if x != "step" else r["step"], y)
           for r, y in zip(rows, ys) if np.isfinite(y)}
    if key == "train/entropy":  # SFT+RL's SFT phase at negative steps: RL step 0 = the end of SFT
        sft = [r for r in run.rows if "sft_step" in r and value(r, key) is not None]
        last = max((r["sft_step"] for r in run.rows if "sft_step" in r), default=0)
        out.update({r["sft_step"] - last: (r["sft_step"] - last, value(r, key)) for r in sft})
    return out


@dataclass
class Curve:
    x: np.ndarray
    mean: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    n: np.ndarray


def aggregate(series, band):
    """Mean over runs at each step any run has (x = mean of the runs' x there)."""
    series = [s for s in series if s]
    if not series:
        return None
    steps = sorted(set().union(*series))
    xs, mean, lo, hi, n = [], [], [], [], []
    for s in steps:
        pts = [d[s] for d in series if s in d]
        ys = np.array([p[1] for p in pts])
        m = ys.mean()
        if band == "minmax":
            a, b = ys.min(), ys.max()
        else:
            sd = ys.std(ddof=1) if len(ys) > 1 else 0.0
            a, b = m - sd, m + sd
        xs.append(np.mean([p[0] for p in pts]))
        mean.append(m)
        lo.append(a)
        hi.append(b)
        n.append(len(ys))
    return Curve(*(np.array(v, dtype=float) for v in (xs, mean, lo, hi, n)))


def prefix_fracs(run):
    """The prefix lengths F of the run's eval/prefix@F_pass@1 rows."""
    return sorted({float(PREFIX_KEY.match(k).group(1)) for r in run.rows for k in r
                   if PREFIX_KEY.match(k)})


def prefix_key(run, f):
    for r in run.rows:
        for k in r:
            mt = PREFIX_KEY.match(k)
            if mt and float(mt.group(1)) == f:
                return k
    return None


def prefix_series(run, f):
    """pass@1 with the first f of the trace's reasoning as prefix, by step; f = 0 is the no-prefix
    eval."""
    key = "eval/train_pass@1" if f == 0 and prefix_key(run, 0.0) is None else prefix_key(run, f)
    return eval_series(run, key) if key else {}


# NUMBERS (shared by results.md, results.json and the claims)
def mean_std(vals):
    vals = [v for v in vals if v is not None]
    if not vals:
        return None, None
    return float(np.mean(vals)), (float(np.std(vals, ddof=1)) if len(vals) > 1 else None)


def fmt(vals, spec=".3f"):
    """'mean ± std' over seeds (sample std), 'mean' for one seed, '–' for none."""
    m, s = mean_std(vals)
    if m is None:
        return "–"
    return f"{m:{spec}}" + (f" ± {s:{spec}}" if s is not None else "")


def reach_flops(run, key, target):
    """FLOPs at the first eval whose `key` is >= target; None if never."""
    for s in sorted(run.evals):
        v = value(run.evals[s], key)
        if v is not None and v >= target - 1e-12:
            return float(run.evals[s]["flops"])
    return None


def pass_at_k_curve(final_eval, counts_key):
    import utils  # torch is imported only when a final_eval.json exists

    n, counts = final_eval["n"], final_eval.get(counts_key)
    if not counts:
        return None
    return {k: (k, float(np.mean([utils.pass_at_k(n, c, k) for c in counts])))
            for k in range(1, n + 1)}


def train_window(run, key, lo_frac, hi_frac):
    """Values of a training metric over the steps in [lo_frac, hi_frac] of the run's length."""
    rows = run.train
    if not rows:
        return []
    last = rows[-1]["step"]
    return [value(r, key) for r in rows
            if lo_frac * last <= r["step"] <= hi_frac * last and value(r, key) is not None]


def per_run_numbers(run, target=None):
    fe = run.final_eval
    d = {"run": run.path, "seed": run.args.get("seed"),
         "final_step": max(run.evals) if run.evals else None,
         "final_flops": float(run.evals[max(run.evals)]["flops"]) if run.evals else None,
         "offset_flops": run.offset, "train_pass@1": run.final("eval/train_pass@1"),
         "heldout_pass@1": run.final("eval/heldout_pass@1"),
         "heldout_pass@8": run.final("eval/heldout_pass@8")}
    if fe and fe.get("heldout_counts"):
        d[f"heldout_pass@{fe['n']}"] = pass_at_k_curve(fe, "heldout_counts")[fe["n"]][1]
    d["flops_to_target"] = (reach_flops(run, "eval/train_pass@1", target) if target is not None
                            else None)
    return d


def pick(methods, base):
    """The method labelled `base`, else the first whose base name it is; None if none."""
    exact = [m for m in methods if m.label == base]
    return exact[0] if exact else next((m for m in methods if m.base == base), None)


def final_mean(m, key):
    return mean_std([r.final(key) for r in m.runs])[0] if m else None
