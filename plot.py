"""The paper's figures and a results table from run directories (finished or still running).

    python plot.py runs/def_* --out figures      # run dirs, globs, or parent dirs holding run dirs

Runs are grouped into methods: the script plus the flags that change the algorithm (standard_rl with
--rollouts 64 is "RL n=64", prefixrl --prefixed-only is "PrefixRL prefixed-only", prefixrl --traces FILE (traces
collected by another model family) is "PrefixRL, other-family traces"; any other flag that differs between runs of
a script is added to the name). Seeds of a method are averaged: mean and a band
(--band std: ± one standard deviation over seeds; minmax: min to max). Runs of different task settings
(--hard-min, --trace-budget, ...) are never averaged together: each setting gets its own subfolder.

Read from each run dir: args.json, metrics.jsonl (README, "Metrics"), and when present
  final_eval.json   {"n": samples per problem, "heldout_counts": [...], "train_counts": [...]}: per-problem
                    correct counts at the end, no prefix (Fig. 8, pass@k for k = 1..n)
  eval rows with "eval/prefix@F_pass@1" (F = 0.2, 0.4, ...): pass@1 on the training problems when the
                    first F of their trace is the prefix (Fig. 3, back-generalization)
Written to --out: fig1..fig6 PNGs, results.md (a table per method and the paper's claims checked against
the measured numbers) and results.json (the same numbers, per run).
"""

import functools
import glob
import json
import math
import os
import re
import textwrap
from dataclasses import dataclass
from typing import Literal, Optional, Tuple

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tyro  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


@dataclass
class Args:
    runs: tyro.conf.Positional[Tuple[str, ...]] = ("runs",)
    """run dirs (holding args.json and metrics.jsonl), globs, or parent dirs of run dirs"""
    out: str = "figures"
    """where the PNGs, results.md and results.json go"""
    band: Literal["std", "minmax"] = "std"
    """band around the mean over seeds: ± one std (sample std), or min..max"""
    smooth: int = 9
    """centred rolling-mean window, in steps, for per-step training metrics (1 = raw)"""
    max_step: Optional[int] = None
    """ignore RL rows after this step (compare runs still going at a common step); final_eval.json is
    then used only if it was taken at a step <= this"""


# keys that do not change what a run measures (or are the seed itself)
IGNORED_KEYS = {"seed", "run_dir", "cache_dir", "threads", "device", "micro_batch", "steps", "eval_every", "script",
                "save_every", "resume", "tensorboard", "final_eval_samples"}
# keys that define the problems and the base model: runs that differ here are not comparable
SETTING_KEYS = ("model", "task", "dataset", "level", "max_new_tokens", "toy_pretrain_steps", "toy_length", "hard_min", "hard_max", "n_train",
                "n_heldout", "task_seed", "trace_budget", "trace_seed")
ONLY_FOR_TASK = {"level": ("arith",), "toy_pretrain_steps": ("toy",), "toy_length": ("toy",), "hard_min": ("toy",),
                 "hard_max": ("toy",)}  # a key that does not apply to a run's task does not split settings
# a method run on traces from another model family (--traces FILE): paper Fig. 10
OTHER_FAMILY_SUFFIX = ", other-family traces"
OTHER_FAMILY = "PrefixRL" + OTHER_FAMILY_SUFFIX
COLORS = {"PrefixRL": "tab:red", "PrefixRL prefixed-only": "tab:orange", "RL n=8": "tab:gray", "RL n=64": "black",
          "SFT+RL": "tab:blue", "Off-policy RL": "tab:green", "LUFFY": "tab:olive", OTHER_FAMILY: "maroon"}
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
        rows = [r for r in self.rows if "step" in r and "eval/train_pass@1" not in r and any(k.startswith("train/") for k in r)]
        return sorted(rows, key=lambda r: r["step"])

    @property
    def offset(self):
        """FLOPs before the first step: the rejection-sampling cost of the traces (0 if not charged)"""
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
                paths += sorted(os.path.join(p, d) for d in os.listdir(p) if os.path.isfile(os.path.join(p, d, "args.json")))
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
    """The method's name from its script and algorithm flags; a run on a traces file (--traces, collected by
    another model family) is a method of its own."""
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


NAMED_BY_BASE = {"prefixed_only", "shaping"}  # flags already in the base name (rollouts only for standard RL)


def shared_keys(runs, candidates):
    """Keys present in every run's args.json (older runs may lack newer flags: those are not compared)."""
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
    """A run's value of a setting key; None where the key does not apply to its task (--level on the toy)."""
    applies_to = ONLY_FOR_TASK.get(k)
    return a[k] if applies_to is None or a.get("task", "toy") in applies_to else None


def group(runs):
    """[(setting label, [Method])]: runs of one setting grouped into methods, seeds averaged."""
    setting_keys = shared_keys(runs, SETTING_KEYS)
    settings = {}
    for r in runs:
        settings.setdefault(tuple(json.dumps(setting_value(r.args, k)) for k in setting_keys), []).append(r)
    varying = [k for i, k in enumerate(setting_keys) if len({s[i] for s in settings}) > 1]
    out = []
    for skey, sruns in settings.items():
        slabel = ", ".join(key_text(k, json.loads(skey[setting_keys.index(k)])) for k in varying)
        by_base = {}
        for r in sruns:
            by_base.setdefault(base_name(r.args), []).append(r)
        methods = []
        for base, bruns in by_base.items():
            keys = [k for k in sorted(set().union(*(r.args for r in bruns))) if k not in IGNORED_KEYS
                    and k not in SETTING_KEYS and k not in NAMED_BY_BASE and not (k == "rollouts" and base.startswith("RL n="))]
            keys = shared_keys(bruns, keys)
            groups = {}
            for r in bruns:
                groups.setdefault(tuple(json.dumps(r.args[k]) for k in keys), []).append(r)
            diff = [k for i, k in enumerate(keys) if len({g[i] for g in groups}) > 1]
            for gkey, gruns in groups.items():
                extra = ", ".join(key_text(k, json.loads(gkey[keys.index(k)])) for k in diff)
                methods.append(Method(f"{base} ({extra})" if extra else base, base, sorted(gruns, key=lambda r: (r.args.get("seed", 0), r.path))))
        order = ["RL n=8", "RL n=64", "SFT+RL", "Off-policy RL", "LUFFY", "PrefixRL", OTHER_FAMILY, "PrefixRL prefixed-only"]
        methods.sort(key=lambda m: (order.index(m.base) if m.base in order else len(order), m.label))
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
    return {s: (row[x] if x != "step" else s, value(row, key)) for s, row in run.evals.items() if value(row, key) is not None}


def train_series(run, key, smooth, x="step"):
    rows = [r for r in run.train if key in r]
    ys = rolling([np.nan if value(r, key) is None else value(r, key) for r in rows], smooth)
    out = {r["step"]: (r[x] if x != "step" else r["step"], y) for r, y in zip(rows, ys) if np.isfinite(y)}
    if key == "train/entropy":  # SFT+RL: the SFT phase at negative steps, so RL step 0 is the end of SFT
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
    return {k: (k, float(np.mean([utils.pass_at_k(n, c, k) for c in counts]))) for k in range(1, n + 1)}


def train_window(run, key, lo_frac, hi_frac):
    """Values of a training metric over the steps in [lo_frac, hi_frac] of the run's length."""
    rows = run.train
    if not rows:
        return []
    last = rows[-1]["step"]
    return [value(r, key) for r in rows if lo_frac * last <= r["step"] <= hi_frac * last and value(r, key) is not None]


def per_run_numbers(run, target=None):
    fe = run.final_eval
    d = {"run": run.path, "seed": run.args.get("seed"), "final_step": max(run.evals) if run.evals else None,
         "final_flops": float(run.evals[max(run.evals)]["flops"]) if run.evals else None, "offset_flops": run.offset,
         "train_pass@1": run.final("eval/train_pass@1"), "heldout_pass@1": run.final("eval/heldout_pass@1"),
         "heldout_pass@8": run.final("eval/heldout_pass@8")}
    if fe and fe.get("heldout_counts"):
        d[f"heldout_pass@{fe['n']}"] = pass_at_k_curve(fe, "heldout_counts")[fe["n"]][1]
    d["flops_to_target"] = reach_flops(run, "eval/train_pass@1", target) if target is not None else None
    return d


# FIGURES
def _plt():
    plt.rcParams.update({"font.size": 10, "axes.titlesize": 11, "axes.grid": True, "grid.alpha": 0.3})
    return plt


def draw(ax, m, c, **kw):
    """Mean and band; where fewer seeds than the method's runs have the point (a run still going, or
    cut short), the mean goes on as a thin dashed line."""
    full = c.n >= len(m.runs)
    last = int(np.nonzero(full)[0][-1]) + 1 if full.any() else 0
    label = f"{m.label} ({len(m.runs)} seed{'s' * (len(m.runs) > 1)})"
    if last:
        ax.plot(c.x[:last], c.mean[:last], color=m.color, label=label, **kw)
    if last < len(c.x):
        ax.partial_seeds = True
        ax.plot(c.x[max(last - 1, 0):], c.mean[max(last - 1, 0):], color=m.color, lw=0.9, ls="--", alpha=0.8,
                label=None if last else label)
    if (c.n > 1).any():
        ax.fill_between(c.x, c.lo, c.hi, color=m.color, alpha=0.18, lw=0)


def finish(plt, fig, axes, title, path, note=None):
    if any(getattr(ax, "partial_seeds", False) for ax in np.ravel(axes)):
        note = (note + "; " if note else "") + "thin dashed: mean over fewer seeds than the method has (runs of different lengths)"
    handles, labels = {}, []
    for ax in np.ravel(axes):
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    width, height = fig.get_size_inches()
    ncol = max(1, min(len(labels), 4, int(width // 4.2)))
    rows = math.ceil(len(labels) / ncol)
    note = "\n".join(textwrap.wrap(note, int(width * 15))) if note else ""
    note_h = 0.17 * (note.count("\n") + 1) + 0.1 if note else 0.0
    bottom = (0.3 * rows + 0.2 + note_h) / height
    fig.suptitle(title, fontsize=12)
    if labels:
        fig.legend([handles[lab] for lab in labels], labels, loc="lower center", ncol=ncol, frameon=False,
                   bbox_to_anchor=(0.5, note_h / height))
    if note:
        fig.text(0.5, 0.01, note, ha="center", va="bottom", fontsize=8.5, color="dimgray")
    fig.tight_layout(rect=(0, bottom, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def sci_x(ax):
    ax.ticklabel_format(style="sci", axis="x", scilimits=(0, 0))


def fig_reward_vs_flops(plt, methods, out, args):
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.6))
    panels = [("eval", "eval/train_pass@1", "(a) training problems: eval pass@1, no prefix"),
              ("train", "train/reward_no_prefix", f"(b) training reward on no-prefix rollouts (rolling mean of {args.smooth})"),
              ("eval", "eval/heldout_pass@1", "(c) held-out problems: pass@1, no prefix")]
    offsets = sorted({round(float(np.median([r.offset for r in m.runs])), 0) for m in methods} - {0.0})
    sft = [m for m in methods if m.base == "SFT+RL"]
    target = mean_std([r.final("eval/train_pass@1") for r in sft[0].runs])[0] if sft else None
    for ax, (kind, key, title) in zip(axes, panels):
        for m in methods:
            c = aggregate([eval_series(r, key, "flops") if kind == "eval" else train_series(r, key, args.smooth, "flops") for r in m.runs], args.band)
            if c is None:
                continue
            draw(ax, m, c)
            ax.plot(c.x[:1], c.mean[:1], "o", color=m.color, ms=5)
        for i, off in enumerate(offsets):
            ax.axvline(off, color="dimgray", ls=":", lw=1.5, label="rejection-sampling cost (curves using the traces start here)" if i == 0 else None)
        if key == "eval/train_pass@1" and target is not None:
            ax.axhline(target, color=COLORS["SFT+RL"], ls="--", lw=1, alpha=0.7, label=f"SFT+RL final train pass@1 ({target:.3f})")
        ax.set(title=title, xlabel="FLOPs (sampling 2ND + training 6ND, traces included)", ylabel="pass@1" if kind == "eval" else "mean reward", ylim=(-0.02, 1.02))
        sci_x(ax)
    finish(plt, fig, axes, "No-prefix accuracy vs compute (paper Fig. 2 / 7)", os.path.join(out, "fig1_reward_vs_flops.png"),
           "dot: a curve's first point; dotted line: FLOPs spent on rejection sampling before RL starts")


def fig_passk(plt, methods, out, args):
    have = [m for m in methods if any(r.final_eval for r in m.runs)]
    if not have:
        print("note: no run has final_eval.json (per-problem counts at the end): skipped fig2_passk_heldout.png")
        return False
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    for ax, (counts_key, title) in zip(axes, [("heldout_counts", "(a) held-out problems"), ("train_counts", "(b) training problems")]):
        for m in have:
            curves = [pass_at_k_curve(r.final_eval, counts_key) for r in m.runs if r.final_eval]
            curves = [c for c in curves if c]
            if not curves:
                continue
            kmax = min(max(c) for c in curves)
            c = aggregate([{k: v for k, v in cur.items() if k <= kmax} for cur in curves], args.band)
            draw(ax, m, c, marker=".", ms=3)
        ax.set_xscale("log", base=2)
        ticks = [2 ** i for i in range(0, 12) if 2 ** i <= max(r.final_eval["n"] for m in have for r in m.runs if r.final_eval)]
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set(title=title, xlabel="k (samples per problem)", ylabel="pass@k (unbiased estimator), no prefix", ylim=(-0.02, 1.02))
    n = sorted({r.final_eval["n"] for m in have for r in m.runs if r.final_eval})
    finish(plt, fig, axes, "pass@k at the end of training (paper Fig. 8)", os.path.join(out, "fig2_passk_heldout.png"),
           f"from final_eval.json: n = {', '.join(map(str, n))} samples per problem")
    return True


def with_no_prefix(methods, key):
    """[(method, key, line style)]: every method's `key`, and after each that logs `key`_no_prefix (PrefixRL)
    that too, dotted: its no-prefix rollouts alone are the ones to compare with standard RL's."""
    lines = []
    for m in methods:
        lines.append((m, key, "-"))
        if any(value(row, key + "_no_prefix") is not None for r in m.runs for row in r.train):
            lines.append((Method(f"{m.label} (no-prefix rollouts)", m.base, m.runs, m.color), key + "_no_prefix", ":"))
    return lines


NO_PREFIX_NOTE = ("PrefixRL, solid: over all its rollouts, prefixed ones included; dotted: over its no-prefix rollouts "
                  "(original problems) only, like standard RL's rollouts, so that line is the one to compare with RL's")


def fig_over_steps(plt, methods, out, args, panels, title, fname, logy=False, note=None, ylim=None, no_prefix_too=False):
    fig, axes = plt.subplots(1, len(panels), figsize=(max(9.0, 6.5 * len(panels) + 0.5), 5.6), squeeze=False)
    drew_no_prefix = False
    for ax, (key, ptitle, ylabel) in zip(axes[0], panels):
        lines = with_no_prefix(methods, key) if no_prefix_too else [(m, key, "-") for m in methods]
        curves = [(m, aggregate([train_series(r, k, args.smooth) for r in m.runs], args.band), ls) for m, k, ls in lines]
        curves = [(m, c, ls) for m, c, ls in curves if c is not None]
        if logy and curves:  # a zero gradient has no place on a log axis: it is drawn at a floor
            pos = np.concatenate([c.mean[c.mean > 0] for _, c, _ in curves] + [np.array([])])
            floor = 10 ** math.floor(math.log10(pos.min() / 10)) if len(pos) else 1e-6
            if any((c.mean <= floor).any() for _, c, _ in curves):
                ax.axhline(floor, color="dimgray", lw=0.8, ls="--", label="zero (drawn at the dashed floor)")
            for _, c, _ in curves:
                c.mean, c.lo, c.hi = np.maximum(c.mean, floor), np.maximum(c.lo, floor), np.maximum(c.hi, floor)
        for m, c, ls in curves:
            draw(ax, m, c, ls=ls)
        drew_no_prefix |= any(ls == ":" for _, _, ls in curves)
        if key == "train/entropy" and any("sft_step" in r for m in methods for run in m.runs for r in run.rows[:1]):
            ax.axvline(0, color="dimgray", ls=":", lw=1.2, label="SFT+RL: SFT ends, RL starts (SFT steps < 0)")
        if not curves:
            ax.text(0.5, 0.5, f"no run logs {key}", ha="center", va="center", transform=ax.transAxes, color="dimgray")
        if logy and curves:
            ax.set_yscale("log")
        ax.set(title=ptitle, xlabel="RL step", ylabel=ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ylim and curves:
            ax.set_ylim(*ylim)
    if drew_no_prefix:
        note = (note + "; " if note else "") + NO_PREFIX_NOTE
    finish(plt, fig, axes, title, os.path.join(out, fname), note)


def prefix_fracs(run):
    return sorted({float(PREFIX_KEY.match(k).group(1)) for r in run.rows for k in r if PREFIX_KEY.match(k)})


def prefix_key(run, f):
    for r in run.rows:
        for k in r:
            mt = PREFIX_KEY.match(k)
            if mt and float(mt.group(1)) == f:
                return k
    return None


def prefix_series(run, f):
    """pass@1 with the first f of the trace's reasoning as prefix, by step; f = 0 is the no-prefix eval."""
    key = "eval/train_pass@1" if f == 0 and prefix_key(run, 0.0) is None else prefix_key(run, f)
    return eval_series(run, key) if key else {}


def fig_prefix_length(plt, methods, out, args):
    with_prefix = [m for m in methods if any(prefix_fracs(r) for r in m.runs)]
    only = [m for m in methods if m.base == "PrefixRL prefixed-only" and m not in with_prefix]
    if not with_prefix and not only:
        print("note: no prefixed-only run and no eval/prefix@F rows: skipped fig5_prefix_length.png")
        return False
    panels = (1 if with_prefix else 0) + len(with_prefix) + len(only)
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels + 0.5, 5.2), squeeze=False)
    all_axes = axes = list(axes[0])
    if with_prefix:
        ax, axes = axes[0], axes[1:]
        for m in with_prefix:
            fr = sorted({0.0} | {f for r in m.runs for f in prefix_fracs(r)})
            per_run = [{f: (f, prefix_series(r, f)[0][1]) for f in fr if 0 in prefix_series(r, f)} for r in m.runs]
            c = aggregate(per_run, args.band)
            if c is not None:
                draw(ax, m, c, marker="o")
        ax.set(title="(a) before training (step 0): success vs prefix length", xlabel="prefix length (fraction of the trace's reasoning)",
               ylabel="pass@1 on the training problems", ylim=(-0.02, 1.02))
    cmap = plt.get_cmap("viridis")
    for i, m in enumerate(with_prefix + only):
        ax = axes[i]
        fr = sorted({0.0} | {f for r in m.runs for f in prefix_fracs(r)})
        for f in fr:
            c = aggregate([prefix_series(r, f) for r in m.runs], args.band)
            if c is None:
                continue
            col = cmap(0.85 * f / max(max(fr), 1e-9))
            ax.plot(c.x, c.mean, color=col, marker=".", label=f"prefix {f:.0%} of the reasoning" + (" (no prefix)" if f == 0 else ""))
            if (c.n > 1).any():
                ax.fill_between(c.x, c.lo, c.hi, color=col, alpha=0.15, lw=0)
        if len(fr) == 1:
            ax.text(0.5, 0.5, "only the no-prefix eval is logged:\nno eval/prefix@F_pass@1 rows", ha="center", va="center",
                    transform=ax.transAxes, color="dimgray")
        ax.set(title=f"({chr(98 + i) if with_prefix else chr(97 + i)}) {m.label}, {len(m.runs)} seed(s): accuracy by prefix length",
               xlabel="RL step", ylabel="pass@1 on the training problems", ylim=(-0.02, 1.02))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    finish(plt, fig, all_axes, "Back-generalization: success vs prefix length (paper Fig. 3, §4)", os.path.join(out, "fig5_prefix_length.png"))
    return True


# RESULTS AND CLAIMS
def pick(methods, base):
    exact = [m for m in methods if m.label == base]
    return exact[0] if exact else next((m for m in methods if m.base == base), None)


def final_mean(m, key):
    return mean_std([r.final(key) for r in m.runs])[0] if m else None


def window_mean(m, key, lo, hi):
    vals = [np.mean(v) for v in (train_window(r, key, lo, hi) for r in m.runs) if v]
    return float(np.mean(vals)) if vals else None


def heldout_pass_at(m):
    """({k: mean held-out pass@k}, source): every k <= n from final_eval.json when all seeds have it,
    else k = 1 and 8 from the last eval rows."""
    fes = [r.final_eval for r in m.runs if r.final_eval and r.final_eval.get("heldout_counts")]
    if fes and len(fes) == len(m.runs):
        n = min(fe["n"] for fe in fes)
        curves = [pass_at_k_curve(fe, "heldout_counts") for fe in fes]
        return {k: float(np.mean([c[k][1] for c in curves])) for k in range(1, n + 1)}, "final_eval.json"
    d = {k: final_mean(m, f"eval/heldout_pass@{k}") for k in (1, 8)}
    return {k: v for k, v in d.items() if v is not None}, "last eval rows"


def no_prefix_window_mean(m, key, lo, hi):
    """(mean over seeds of `key` over [lo, hi] of each run, where): for PrefixRL over its no-prefix rollouts
    only (`key`_no_prefix), like standard RL's, whose rollouts are all no-prefix; a run that does not log it
    (an older run) falls back to `key`, over all its rollouts, prefixed ones included, and `where` says so."""
    per_run, fallback = [], 0
    for r in m.runs:
        vals = train_window(r, key + "_no_prefix", lo, hi)
        if not vals:
            vals = train_window(r, key, lo, hi)
            fallback += bool(vals)
        if vals:
            per_run.append(float(np.mean(vals)))
    where = "no-prefix rollouts" + (f"; {fallback}/{len(m.runs)} run(s) log no {key}_no_prefix (older runs): "
                                    "all rollouts there, prefixed ones included" if fallback else "")
    return (float(np.mean(per_run)) if per_run else None), where


def f3(v):
    return "–" if v is None else f"{v:.3f}"


def status_of(checks, missing=(), partly=False):
    """supported / partly / not supported from the tested parts; names the methods not run."""
    st = "supported" if checks and all(checks) else ("partly" if any(checks) or partly else "not supported")
    return st + (f" (as far as tested: no {', '.join(missing)} results)" if missing else "")


@dataclass
class Cast:
    """The methods the claims compare, looked up once; None where a method was not run."""
    methods: list
    rl8: Optional[Method]
    rl64: Optional[Method]
    sft: Optional[Method]
    pre: Optional[Method]
    off: Optional[Method]
    only: Optional[Method]
    other: Optional[Method]  # PrefixRL on another model family's traces
    NAMES = {"rl8": "RL n=8", "rl64": "RL n=64", "sft": "SFT+RL", "off": "Off-policy RL"}

    @classmethod
    def of(cls, methods):
        rl_all = sorted([m for m in methods if m.base.startswith("RL n=")], key=lambda m: int(m.base[5:]))
        return cls(methods, rl8=pick(methods, "RL n=8") or (rl_all[0] if rl_all else None),
                   rl64=pick(methods, "RL n=64") or (rl_all[-1] if len(rl_all) > 1 else None), sft=pick(methods, "SFT+RL"),
                   pre=pick(methods, "PrefixRL"), off=pick(methods, "Off-policy RL"), only=pick(methods, "PrefixRL prefixed-only"),
                   other=pick(methods, OTHER_FAMILY))

    def missing(self, fields, have):
        """Names of the methods in `fields` that were not run or are not in `have` (no numbers)."""
        return [self.NAMES[f] for f in fields if getattr(self, f) is None or getattr(self, f) not in have]


# The paper's regime: the problems are hard for the base model, as in the paper
def claim_rl8_stays_low(c):
    claim = "Paper's regime: RL n=8's no-prefix train pass@1 stays low for the whole run, with most groups all-negative"
    curve = aggregate([eval_series(r, "eval/train_pass@1") for r in c.rl8.runs], "std") if c.rl8 else None
    neg = window_mean(c.rl8, "train/all_negative_frac", 0, 1) if c.rl8 else None
    if curve is None or neg is None:
        return claim, "not tested", "needs standard RL runs with eval rows and train/all_negative_frac"
    peak, low, most = float(curve.mean.max()), 0.2, 0.5
    return claim, status_of([peak < low, neg > most]), (
        f"{c.rl8.label}: highest eval train pass@1 (mean over seeds) {peak:.3f} ('low' = below {low}); "
        f"all-negative group fraction over the whole run {neg:.3f} ('most' = above {most})")


def claim_rl64_between(c):
    claim = "Paper's regime: RL n=64 does better than RL n=8 but stays well below PrefixRL"
    a, b, p = (final_mean(m, "eval/train_pass@1") for m in (c.rl8, c.rl64, c.pre))
    if None in (a, b, p):
        return claim, "not tested", "needs RL n=8, RL n=64 and PrefixRL runs with eval rows"
    well_below = 0.67
    return claim, status_of([a < b, b <= well_below * p]), (
        f"final eval train pass@1: {c.rl8.label} {a:.3f}, {c.rl64.label} {b:.3f}, PrefixRL {p:.3f} "
        f"('well below' = at most {well_below} x PrefixRL's = {well_below * p:.3f})")


def claim_prefixrl_solves_most(c):
    claim = "Paper's regime: PrefixRL's final no-prefix train pass@1 is >= 0.5 and >= 3x RL n=8's"
    p, a = final_mean(c.pre, "eval/train_pass@1"), final_mean(c.rl8, "eval/train_pass@1")
    if p is None or a is None:
        return claim, "not tested", "needs PrefixRL and RL n=8 runs with eval rows"
    return claim, status_of([p >= 0.5, p >= 3 * a]), (
        f"final eval train pass@1: PrefixRL {p:.3f}, {c.rl8.label} {a:.3f} (PrefixRL / {c.rl8.label} = "
        + (f"{p / a:.1f})" if a > 0 else "inf)"))


def claim_heldout_above_rl(c):
    claim = "Paper's regime: PrefixRL's final held-out pass@1 is above both RL runs'"
    p = final_mean(c.pre, "eval/heldout_pass@1")
    rls = [m for m in (c.rl8, c.rl64) if m is not None and final_mean(m, "eval/heldout_pass@1") is not None]
    if p is None or not rls:
        return claim, "not tested", "needs PrefixRL and standard RL runs with eval rows"
    vals = [final_mean(m, "eval/heldout_pass@1") for m in rls]
    return claim, status_of([p > v for v in vals], c.missing(("rl8", "rl64"), rls)), (
        f"final eval held-out pass@1: PrefixRL {p:.3f}, " + ", ".join(f"{m.label} {v:.3f}" for m, v in zip(rls, vals)))


def claim_ahead_on_flops(c):
    claim = ("Paper's regime: on the FLOPs axis (rejection sampling included), PrefixRL is ahead of both RL runs "
             "from where its curve starts to the end")

    def curve(m):  # seed mean of eval train pass@1 by FLOPs
        return aggregate([eval_series(r, "eval/train_pass@1", x="flops") for r in m.runs], "std") if m else None

    p = curve(c.pre)
    rls = [(m, curve(m)) for m in (c.rl8, c.rl64) if curve(m) is not None]
    if p is None or len(p.x) < 2 or not rls:
        return claim, "not tested", "needs PrefixRL runs with eval rows after the first, and standard RL runs with eval rows"
    xs, ys = p.x[1:], p.mean[1:]  # the first point is the base model at the traces' cost: it cannot be ahead
    full, parts, any_ahead = [], [], False
    for m, rl in rls:
        compared = xs <= rl.x[-1]  # beyond RL's last FLOPs there is no RL value to compare with
        n = int(compared.sum())
        ahead = int((ys[compared] > np.interp(xs[compared], rl.x, rl.mean)).sum())
        full.append(n > 0 and ahead == n and 2 * n >= len(xs))
        any_ahead |= ahead > 0
        parts.append(f"vs {m.label}: ahead at {ahead}/{n} points compared, {len(xs) - n} beyond its last FLOPs ({rl.x[-1]:.3g})")
    return claim, status_of(full, c.missing(("rl8", "rl64"), [m for m, _ in rls]), partly=any_ahead), (
        "; ".join(parts) + f" (seed means; RL interpolated linearly in FLOPs; PrefixRL has {len(xs)} eval points after its "
        "first; 'supported' = ahead at every compared point, with at least half of them compared, against each RL run)")


# The paper's figures
def claim_final_order(c):
    claim = "Fig. 2/7: final no-prefix training accuracy RL n=8 < RL n=64 < SFT+RL < PrefixRL"
    order = [m for m in (c.rl8, c.rl64, c.sft, c.pre) if m is not None and final_mean(m, "eval/train_pass@1") is not None]
    if len(order) < 2 or c.pre not in order:
        return claim, "not tested", "needs PrefixRL and at least one baseline"
    vals = [final_mean(m, "eval/train_pass@1") for m in order]
    ok = all(a < b for a, b in zip(vals, vals[1:]))
    top = max(zip(vals, [m.label for m in order]))
    status = status_of([ok] if ok else [False, top[1] == c.pre.label], c.missing(("rl8", "rl64", "sft"), order))
    return claim, status, ("final eval train pass@1: " + ", ".join(f"{m.label} {f3(v)}" for m, v in zip(order, vals))
                           + f"; highest: {top[1]}")


def claim_reaches_sft_faster(c):
    claim = "Fig. 2/7: PrefixRL reaches SFT+RL's final training accuracy ~2x faster in FLOPs (rejection sampling included)"
    target = final_mean(c.sft, "eval/train_pass@1")
    if target is None or c.pre is None:
        return claim, "not tested", "needs PrefixRL and SFT+RL runs with eval rows"
    fp = [reach_flops(r, "eval/train_pass@1", target) for r in c.pre.runs]
    fs = [reach_flops(r, "eval/train_pass@1", target) for r in c.sft.runs]
    mp, ms = mean_std(fp)[0], mean_std(fs)[0]
    reached = f"PrefixRL reached it in {sum(v is not None for v in fp)}/{len(fp)} seeds, SFT+RL in {sum(v is not None for v in fs)}/{len(fs)}"
    if mp is None or ms is None or None in fp:
        return claim, "not supported", f"target {f3(target)} (SFT+RL's mean final eval train pass@1); {reached}"
    ratio = ms / mp
    status = "supported" if ratio >= 1.5 else ("partly" if ratio > 1 else "not supported")
    return claim, status, (f"target {f3(target)}; FLOPs to reach it: PrefixRL {mp:.3g}, SFT+RL {ms:.3g} "
                           f"(SFT+RL / PrefixRL = {ratio:.2f}; paper ~2; 'supported' needs >= 1.5); {reached}")


def claim_success_rises_with_prefix(c):
    claim = "Fig. 3: before RL, success rises with prefix length (~0 without prefix, then a jump)"
    base_runs = [r for m in c.methods for r in m.runs if prefix_fracs(r)]
    if not base_runs:
        return claim, "not tested", "no run logs eval/prefix@F_pass@1 rows (format: plot.py docstring)"
    fr = sorted({0.0} | {f for r in base_runs for f in prefix_fracs(r)})
    v = [mean_std([prefix_series(r, f).get(0, (None, None))[1] for r in base_runs])[0] for f in fr]
    fv = [(f, x) for f, x in zip(fr, v) if x is not None]
    ys = [x for _, x in fv]
    rises = len(ys) > 1 and all(b >= a for a, b in zip(ys, ys[1:])) and ys[-1] > ys[0]
    rise = ys[-1] - ys[0] if len(ys) > 1 else 0.0
    jump = max((b - a for a, b in zip(ys, ys[1:])), default=0.0) / rise if rise > 0 else 0.0
    status = "supported" if rises and jump > 0.5 else ("partly" if rises else "not supported")
    return claim, status, ("step-0 pass@1 by prefix length: " + ", ".join(f"{f:.0%} {x:.3f}" for f, x in fv)
                           + f"; largest step between neighbouring lengths = {jump:.0%} of the total rise ('jump' needs > 50%)")


def claim_back_generalization(c):
    claim = "§4: training only on prefixed problems raises no-prefix accuracy (back-generalization)"
    if c.only is None:
        return claim, "not tested", "no prefixrl --prefixed-only runs"
    start = [value(r.evals[min(r.evals)], "eval/train_pass@1") for r in c.only.runs if r.evals]
    end = [r.final("eval/train_pass@1") for r in c.only.runs]
    hs = [value(r.evals[min(r.evals)], "eval/heldout_pass@1") for r in c.only.runs if r.evals]
    he = [r.final("eval/heldout_pass@1") for r in c.only.runs]
    up = [b > a for a, b in zip(start, end) if a is not None and b is not None]
    status = "supported" if up and all(up) else ("partly" if any(up) else "not supported")
    return claim, status, (f"no-prefix train pass@1 {fmt(start)} -> {fmt(end)}, held-out pass@1 {fmt(hs)} -> {fmt(he)}; "
                           f"rose in {sum(up)}/{len(up)} seeds")


def claim_long_prefixes_first(c):
    claim = "§4: training on long prefixes improves shorter prefixes first, then no prefix"
    runs = c.only.runs if c.only else []
    fr = sorted({f for r in runs for f in prefix_fracs(r)})
    if not fr:
        return claim, "not tested", "needs eval/prefix@F_pass@1 rows in prefixed-only runs"
    half = {}  # prefix length -> first step with half the length's total gain
    for f in [0.0] + fr:
        curve = aggregate([prefix_series(r, f) for r in runs], "std")
        if curve is None or len(curve.mean) < 2:
            continue
        gain = curve.mean - curve.mean[0]
        steps = sorted(set().union(*[prefix_series(r, f) for r in runs]))
        half[f] = next((s for s, g in zip(steps, gain) if gain.max() > 0 and g >= gain.max() / 2), None)
    seq = [half[f] for f in sorted(half, reverse=True) if half[f] is not None]
    ok = len(seq) > 1 and all(a <= b for a, b in zip(seq, seq[1:]))
    return claim, "supported" if ok else "not supported", (
        "step at which each prefix length reaches half its gain: "
        + ", ".join(f"{f:.0%}: {'no gain' if half[f] is None else half[f]}" for f in sorted(half, reverse=True))
        + " (longer prefixes should come first)")


def claim_drops_prefix_strategy(c):
    return "Fig. 5: the model can drop the prefix's strategy for a better one", "not tested", "needs reading samples, not metrics"


def claim_lead_grows_with_k(c):
    claim = "Fig. 8: PrefixRL's held-out lead over the baselines grows with k"
    baselines = [m for m in (c.rl8, c.rl64, c.sft, c.off) if m is not None]
    if c.pre is None or not baselines:
        return claim, "not tested", "needs PrefixRL and a baseline"
    p = heldout_pass_at(c.pre)
    parts, grows = [], []
    for b in baselines:
        q = heldout_pass_at(b)
        ks = sorted(set(p[0]) & set(q[0]))
        if len(ks) < 2:
            continue
        l1, lk = p[0][1] - q[0][1], p[0][ks[-1]] - q[0][ks[-1]]
        grows.append(lk > l1 and lk > 0)
        parts.append(f"vs {b.label}: lead {l1:+.3f} at k=1, {lk:+.3f} at k={ks[-1]} ({p[1] if p[1] == q[1] else 'last eval rows'})")
    status = "not tested" if not grows else status_of(grows, c.missing(("rl8", "rl64", "sft", "off"), baselines))
    return claim, status, "; ".join(parts) or "no held-out pass@k numbers"


def claim_other_family(c):
    claim = "Fig. 10: prefixes from another model family work nearly as well"
    if c.other is None or c.pre is None:
        return claim, "not tested", "needs PrefixRL runs with --traces from another model family next to runs with their own traces"
    keys = ("eval/train_pass@1", "eval/heldout_pass@1")
    own, other = [final_mean(c.pre, k) for k in keys], [final_mean(c.other, k) for k in keys]
    nearly = [a is not None and b is not None and b >= 0.9 * a for a, b in zip(own, other)]
    return claim, status_of(nearly), (
        f"final train pass@1: own traces {f3(own[0])}, {c.other.label} {f3(other[0])}; final held-out pass@1: own traces "
        f"{f3(own[1])}, {c.other.label} {f3(other[1])} ('nearly' = at least 90% of own traces', for each)")


def claim_entropy(c):
    claim = "Fig. 11: token entropy: SFT+RL collapses towards 0; PrefixRL stays near standard RL"
    if c.pre is None or c.rl8 is None:
        return claim, "not tested", "needs PrefixRL and standard RL runs"
    ep, where = no_prefix_window_mean(c.pre, "train/entropy", 0.8, 1.0)
    er = window_mean(c.rl8, "train/entropy", 0.8, 1.0)
    e0 = window_mean(c.rl8, "train/entropy", 0.0, 0.05)
    ratio = ep / er if ep is not None and er else float("nan")
    checks = [0.5 <= ratio <= 2]
    txt = (f"mean entropy over the last 20% of steps: PrefixRL ({where}) {f3(ep)}, {c.rl8.label} {f3(er)} "
           f"(ratio {ratio:.2f}; 'near' = 0.5..2); start of RL {f3(e0)}")
    if c.sft is not None:
        es = window_mean(c.sft, "train/entropy", 0.8, 1.0)
        checks.append(es is not None and er is not None and es < 0.25 * er)
        txt += f"; SFT+RL {f3(es)} ('collapse' = below 25% of {c.rl8.label}'s)"
    return claim, status_of(checks, [] if c.sft else ["SFT+RL"]), txt


def grad_norm_spread(m):
    """(max, median, max / median) of a run's gradient norm, each a mean over seeds; None if not logged."""
    per_run = [v for v in (train_window(r, "train/grad_norm", 0, 1) for r in m.runs) if v]
    stats = [(max(v), float(np.median(v)), max(v) / max(float(np.median(v)), 1e-12)) for v in per_run]
    return tuple(float(np.mean(s)) for s in zip(*stats)) if stats else None


def claim_grad_norm_and_std(c):
    claim = ("Fig. 12: gradient norm: PrefixRL higher and steady, standard RL vanishing, off-policy RL spiky; "
             "gradient std: PrefixRL below off-policy RL")
    if c.pre is None or c.rl8 is None:
        return claim, "not tested", "needs PrefixRL and standard RL runs"
    gp, gr = window_mean(c.pre, "train/grad_norm", 0, 1), window_mean(c.rl8, "train/grad_norm", 0, 1)
    zero = [np.mean([v <= 1e-12 for v in w]) for w in (train_window(r, "train/grad_norm", 0, 1) for r in c.rl8.runs) if w]
    zero = float(np.mean(zero)) if zero else float("nan")
    checks = [gp is not None and gr is not None and gp > gr, zero >= 0.25]
    txt = (f"mean grad norm PrefixRL {f3(gp)}, {c.rl8.label} {f3(gr)}; {c.rl8.label} has a zero gradient on "
           f"{zero:.0%} of steps ('vanishing' = at least 25%)")
    shown = [m for m in (c.pre, c.off) if m is not None]
    spread = [grad_norm_spread(m) for m in shown]
    std = [window_mean(m, "train/grad_std", 0, 1) for m in shown]
    txt += "; grad norm " + ", ".join(f"{m.label} max {s[0]:.3g}, median {s[1]:.3g} (max/median {s[2]:.1f})" if s else f"{m.label} not logged"
                                      for m, s in zip(shown, spread))
    txt += "; mean grad std " + ", ".join(f"{m.label} {'not logged' if s is None else f'{s:.3g}'}" for m, s in zip(shown, std))
    if c.off is not None:
        (sp, so), (dp, do) = spread, std
        checks.append(sp is not None and so is not None and so[2] > sp[2])  # spiky: off-policy's max/median above PrefixRL's
        if dp is not None and do is not None:
            checks.append(dp < do)
    return claim, status_of(checks, [] if c.off else ["Off-policy RL"]), txt


def claim_fewer_all_negative(c):
    claim = "(logged, not in the paper's plots) PrefixRL has fewer all-negative groups than standard RL early on"
    if c.pre is None or c.rl8 is None:
        return claim, "not tested", "needs PrefixRL and standard RL runs"
    a, where = no_prefix_window_mean(c.pre, "train/all_negative_frac", 0, 0.2)
    b = window_mean(c.rl8, "train/all_negative_frac", 0, 0.2)
    return claim, "supported" if a is not None and b is not None and a < b else "not supported", (
        f"all-negative group fraction over the first 20% of steps: PrefixRL ({where}) {f3(a)}, {c.rl8.label} {f3(b)}")


CLAIMS = [claim_rl8_stays_low, claim_rl64_between, claim_prefixrl_solves_most, claim_heldout_above_rl, claim_ahead_on_flops,
          claim_final_order, claim_reaches_sft_faster, claim_success_rises_with_prefix, claim_back_generalization,
          claim_long_prefixes_first, claim_drops_prefix_strategy, claim_lead_grows_with_k, claim_other_family, claim_entropy,
          claim_grad_norm_and_std, claim_fewer_all_negative]


def claims(methods):
    """[(claim, status, measured)] computed from the runs; status: supported / partly / not supported / not tested."""
    cast = Cast.of(methods)
    return [claim(cast) for claim in CLAIMS]


def results_section(slabel, methods):
    sft = pick(methods, "SFT+RL")
    target = final_mean(sft, "eval/train_pass@1") if sft else None
    numbers = {m.label: [per_run_numbers(r, target) for r in m.runs] for m in methods}
    ks = sorted({k for rows in numbers.values() for d in rows for k in d if re.match(r"heldout_pass@\d+$", k)}, key=lambda k: int(k.split("@")[1]))
    reach_col = f"FLOPs to reach SFT+RL's final train pass@1 ({target:.3f})" if target is not None else "FLOPs to reach SFT+RL's final train pass@1"
    head = ["method", "seeds", "final step", "final FLOPs", "train pass@1"] + [k.replace("heldout_", "held-out ") for k in ks] + [reach_col]
    lines = [f"## Setting: {slabel}" if slabel else "## Results", "",
             "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for m in methods:
        rows = numbers[m.label]
        steps = sorted({d["final_step"] for d in rows if d["final_step"] is not None})
        if target is None:
            reach = "no SFT+RL eval yet" if sft else "no SFT+RL runs"
        else:
            hit = [d["flops_to_target"] for d in rows if d["flops_to_target"] is not None]
            reach = "not reached" if not hit else fmt(hit, ".3g") + ("" if len(hit) == len(rows) else f" ({len(hit)}/{len(rows)} seeds; others not reached)")
        cells = [m.label, str(len(rows)), "–".join(map(str, steps[:1] + steps[1:][-1:])) or "–", fmt([d["final_flops"] for d in rows], ".3g"),
                 fmt([d["train_pass@1"] for d in rows])] + [fmt([d.get(k) for d in rows]) for k in ks] + [reach]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Mean ± sample std (ddof 1) over seeds; final = each run's last eval row (no prefix). "
              "pass@k for k > 8 comes from final_eval.json. FLOPs include the rejection-sampling cost for the methods that use the traces.", "",
              "<details><summary>per run</summary>", "", "| method | run | seed | final step | final FLOPs | train pass@1 | held-out pass@1 | held-out pass@8 |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for m in methods:
        for d in numbers[m.label]:
            lines.append(f"| {m.label} | {d['run']} | {d['seed']} | {d['final_step']} | {fmt([d['final_flops']], '.3g')} | {fmt([d['train_pass@1']])} | "
                         f"{fmt([d['heldout_pass@1']])} | {fmt([d['heldout_pass@8']])} |")
    lines += ["", "</details>", "", "### The paper's claims against these runs", ""]
    ends = sorted({d["final_step"] for rows in numbers.values() for d in rows if d["final_step"] is not None})
    if len(ends) > 1:
        lines += [f"Note: the runs end at different steps ({', '.join(map(str, ends))}): runs cut short, or run to another "
                  "budget (reproduce.py runs standard RL to about PrefixRL's FLOPs); compare final values with that in mind.", ""]
    lines += ["Computed from the runs above by plot.py; the thresholds are stated with each measurement.", ""]
    cl = claims(methods)
    for claim, status, measured in cl:
        lines.append(f"- **{status}** — {claim}. Measured: {measured}.")
    lines.append("")
    return lines, {"setting": slabel, "target_train_pass@1": target, "methods": numbers,
                   "claims": [dict(claim=c, status=s, measured=t) for c, s, t in cl]}


def main(args: Args):
    import utils  # torch, for check_args

    utils.check_args(args)
    runs = find_runs(args.runs)
    if not runs:
        print("no runs found")
        return 1
    if args.max_step is not None:
        for r in runs:
            r.rows = [row for row in r.rows if row.get("step", -1) <= args.max_step]
            if r.final_eval and r.final_eval.get("step", math.inf) > args.max_step:
                r.final_eval = None
    plt = _plt()
    os.makedirs(args.out, exist_ok=True)
    settings = group(runs)
    md = ["# Results", "", f"{len(runs)} run(s) from {', '.join(args.runs)}. Figures: fig*.png in "
          + ("this folder." if len(settings) == 1 else "one subfolder per setting."), ""]
    js = []
    for slabel, methods in settings:
        out = args.out if len(settings) == 1 else os.path.join(args.out, re.sub(r"[^A-Za-z0-9_.=-]+", "_", slabel))
        os.makedirs(out, exist_ok=True)
        print(f"{slabel or 'runs'}: " + "; ".join(f"{m.label}: {len(m.runs)} run(s)" for m in methods))
        fig_reward_vs_flops(plt, methods, out, args)
        fig_passk(plt, methods, out, args)
        fig_over_steps(plt, methods, out, args, [("train/entropy", "token entropy of sampled tokens", "entropy (nats)")],
                       "Token entropy over training (paper Fig. 11)", "fig3_entropy.png", ylim=(0, None), no_prefix_too=True,
                       note=f"rolling mean of {args.smooth} steps; SFT+RL's SFT phase is drawn at negative steps")
        fig_over_steps(plt, methods, out, args, [("train/grad_norm", "(a) gradient norm before clipping", "global grad norm (log)"),
                                                 ("train/grad_std", "(b) gradient standard deviation", "train/grad_std (log)")],
                       "Gradient norm and standard deviation (paper Fig. 12)", "fig4_grad_norm_std.png", logy=True,
                       note=f"rolling mean of {args.smooth} steps; a zero gradient (every group with equal rewards) is drawn at the dashed floor")
        fig_prefix_length(plt, methods, out, args)
        fig_over_steps(plt, methods, out, args, [("train/all_negative_frac", "groups whose rollouts all failed (no gradient signal)", "fraction of groups")],
                       "All-negative groups over training", "fig6_all_negative.png", ylim=(-0.02, 1.02), no_prefix_too=True,
                       note=f"rolling mean of {args.smooth} steps")
        lines, data = results_section(slabel, methods)
        md += lines
        js.append(data)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write("\n".join(md))
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(js, f, indent=1)
    print(f"wrote {os.path.join(args.out, 'results.md')}")
    return 0


if __name__ == "__main__":
    import utils

    with utils.clean_errors():
        raise SystemExit(main(tyro.cli(Args)))
