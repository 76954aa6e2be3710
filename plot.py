"""The paper's figures and a results table from run directories (finished or still running).

    python plot.py runs/def_* --out figures      # run dirs, globs, or parent dirs holding run dirs

Runs are grouped into methods: the script plus the flags that change the algorithm (standard_rl with
--rollouts 64 is "RL n=64", prefixrl --prefixed-only is "PrefixRL prefixed-only"; any other flag that
differs between runs of a script is added to the name). Seeds of a method are averaged: mean and a band
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
                "save_every", "resume"}
# keys that define the problems and the base model: runs that differ here are not comparable
SETTING_KEYS = ("model", "task", "dataset", "level", "max_new_tokens", "toy_pretrain_steps", "toy_length", "hard_min", "hard_max", "n_train",
                "n_heldout", "task_seed", "trace_budget", "trace_seed")
ONLY_FOR_TASK = {"level": ("arith",), "toy_pretrain_steps": ("toy",), "toy_length": ("toy",), "hard_min": ("toy",),
                 "hard_max": ("toy",)}  # a key that does not apply to a run's task does not split settings
COLORS = {"PrefixRL": "tab:red", "PrefixRL prefixed-only": "tab:orange", "RL n=8": "tab:gray", "RL n=64": "black",
          "SFT+RL": "tab:blue", "Off-policy RL": "tab:green", "LUFFY": "tab:olive"}
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
    script = a.get("script", "?")
    if script == "prefixrl":
        return "PrefixRL prefixed-only" if a.get("prefixed_only") else "PrefixRL"
    if script == "standard_rl":
        return f"RL n={a.get('rollouts', 8)}"
    if script == "sft_rl":
        return "SFT+RL"
    if script == "offpolicy_rl":
        return "LUFFY" if a.get("shaping") is not None else "Off-policy RL"
    return script


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
        order = ["RL n=8", "RL n=64", "SFT+RL", "Off-policy RL", "LUFFY", "PrefixRL", "PrefixRL prefixed-only"]
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


def fig_over_steps(plt, methods, out, args, panels, title, fname, logy=False, note=None, ylim=None):
    fig, axes = plt.subplots(1, len(panels), figsize=(max(9.0, 6.5 * len(panels) + 0.5), 5.6), squeeze=False)
    for ax, (key, ptitle, ylabel) in zip(axes[0], panels):
        curves = [(m, aggregate([train_series(r, key, args.smooth) for r in m.runs], args.band)) for m in methods]
        curves = [(m, c) for m, c in curves if c is not None]
        if logy and curves:  # a zero gradient has no place on a log axis: it is drawn at a floor
            pos = np.concatenate([c.mean[c.mean > 0] for _, c in curves] + [np.array([])])
            floor = 10 ** math.floor(math.log10(pos.min() / 10)) if len(pos) else 1e-6
            if any((c.mean <= floor).any() for _, c in curves):
                ax.axhline(floor, color="dimgray", lw=0.8, ls="--", label="zero (drawn at the dashed floor)")
            for _, c in curves:
                c.mean, c.lo, c.hi = np.maximum(c.mean, floor), np.maximum(c.lo, floor), np.maximum(c.hi, floor)
        for m, c in curves:
            draw(ax, m, c)
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


def claims(methods):
    """[(claim, status, measured)] computed from the runs; status: supported / partly / not supported / not tested."""
    out = []
    rl_all = sorted([m for m in methods if m.base.startswith("RL n=")], key=lambda m: int(m.base[5:]))
    rl8 = pick(methods, "RL n=8") or (rl_all[0] if rl_all else None)
    rl64 = pick(methods, "RL n=64") or (rl_all[-1] if len(rl_all) > 1 else None)
    sft, pre, off, only = pick(methods, "SFT+RL"), pick(methods, "PrefixRL"), pick(methods, "Off-policy RL"), pick(methods, "PrefixRL prefixed-only")
    f3 = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731

    def status_of(checks, missing=()):
        """supported / partly / not supported from the tested parts; names the methods not run."""
        st = "supported" if checks and all(checks) else ("partly" if any(checks) else "not supported")
        return st + (f" (as far as tested: no {', '.join(missing)} results)" if missing else "")

    # Fig. 2/7: ordering of final no-prefix training accuracy
    claim = "Fig. 2/7: final no-prefix training accuracy RL n=8 < RL n=64 < SFT+RL < PrefixRL"
    order = [m for m in (rl8, rl64, sft, pre) if m is not None and final_mean(m, "eval/train_pass@1") is not None]
    vals = [final_mean(m, "eval/train_pass@1") for m in order]
    if len(order) < 2 or pre not in order:
        out.append((claim, "not tested", "needs PrefixRL and at least one baseline"))
    else:
        ok = all(a < b for a, b in zip(vals, vals[1:]))
        top = max(zip(vals, [m.label for m in order]))
        missing = [n for n, m in (("RL n=8", rl8), ("RL n=64", rl64), ("SFT+RL", sft)) if m is None or m not in order]
        status = status_of([ok] if ok else [False, top[1] == pre.label], missing)
        out.append((claim, status, "final eval train pass@1: " + ", ".join(f"{m.label} {f3(v)}" for m, v in zip(order, vals))
                    + f"; highest: {top[1]}"))

    # Fig. 2/7: PrefixRL reaches SFT+RL's final reward with fewer FLOPs, traces included
    claim = "Fig. 2/7: PrefixRL reaches SFT+RL's final training accuracy ~2x faster in FLOPs (rejection sampling included)"
    target = final_mean(sft, "eval/train_pass@1") if sft else None
    if target is None or pre is None:
        out.append((claim, "not tested", "needs PrefixRL and SFT+RL runs with eval rows"))
    else:
        fp = [reach_flops(r, "eval/train_pass@1", target) for r in pre.runs]
        fs = [reach_flops(r, "eval/train_pass@1", target) for r in sft.runs]
        mp, ms = mean_std(fp)[0], mean_std(fs)[0]
        reached = f"PrefixRL reached it in {sum(v is not None for v in fp)}/{len(fp)} seeds, SFT+RL in {sum(v is not None for v in fs)}/{len(fs)}"
        if mp is None or ms is None or None in fp:
            out.append((claim, "not supported", f"target {f3(target)} (SFT+RL's mean final eval train pass@1); {reached}"))
        else:
            ratio = ms / mp
            status = "supported" if ratio >= 1.5 else ("partly" if ratio > 1 else "not supported")
            out.append((claim, status, f"target {f3(target)}; FLOPs to reach it: PrefixRL {mp:.3g}, SFT+RL {ms:.3g} "
                        f"(SFT+RL / PrefixRL = {ratio:.2f}; paper ~2; 'supported' needs >= 1.5); {reached}"))

    # Fig. 3: base success vs prefix length
    claim = "Fig. 3: before RL, success rises with prefix length (~0 without prefix, then a jump)"
    base_runs = [r for m in methods for r in m.runs if prefix_fracs(r)]
    if not base_runs:
        out.append((claim, "not tested", "no run logs eval/prefix@F_pass@1 rows (format: plot.py docstring)"))
    else:
        fr = sorted({0.0} | {f for r in base_runs for f in prefix_fracs(r)})
        v = [mean_std([prefix_series(r, f).get(0, (None, None))[1] for r in base_runs])[0] for f in fr]
        fv = [(f, x) for f, x in zip(fr, v) if x is not None]
        ys = [x for _, x in fv]
        rises = len(ys) > 1 and all(b >= a for a, b in zip(ys, ys[1:])) and ys[-1] > ys[0]
        rise = ys[-1] - ys[0] if len(ys) > 1 else 0.0
        jump = max((b - a for a, b in zip(ys, ys[1:])), default=0.0) / rise if rise > 0 else 0.0
        status = "supported" if rises and jump > 0.5 else ("partly" if rises else "not supported")
        out.append((claim, status, "step-0 pass@1 by prefix length: " + ", ".join(f"{f:.0%} {x:.3f}" for f, x in fv)
                    + f"; largest step between neighbouring lengths = {jump:.0%} of the total rise ('jump' needs > 50%)"))

    # §4: prefixed-only training raises no-prefix accuracy
    claim = "§4: training only on prefixed problems raises no-prefix accuracy (back-generalization)"
    if only is None:
        out.append((claim, "not tested", "no prefixrl --prefixed-only runs"))
    else:
        start = [value(r.evals[min(r.evals)], "eval/train_pass@1") for r in only.runs if r.evals]
        end = [r.final("eval/train_pass@1") for r in only.runs]
        hs = [value(r.evals[min(r.evals)], "eval/heldout_pass@1") for r in only.runs if r.evals]
        he = [r.final("eval/heldout_pass@1") for r in only.runs]
        up = [b > a for a, b in zip(start, end) if a is not None and b is not None]
        status = "supported" if up and all(up) else ("partly" if any(up) else "not supported")
        out.append((claim, status, f"no-prefix train pass@1 {fmt(start)} -> {fmt(end)}, held-out pass@1 {fmt(hs)} -> {fmt(he)}; "
                    f"rose in {sum(up)}/{len(up)} seeds"))

    # §4: long prefixes improve before short ones
    claim = "§4: training on long prefixes improves shorter prefixes first, then no prefix"
    runs = only.runs if only else []
    fr = sorted({f for r in runs for f in prefix_fracs(r)})
    if not fr:
        out.append((claim, "not tested", "needs eval/prefix@F_pass@1 rows in prefixed-only runs"))
    else:
        half = {}
        for f in [0.0] + fr:
            c = aggregate([prefix_series(r, f) for r in runs], "std")
            if c is None or len(c.mean) < 2:
                continue
            gain = c.mean - c.mean[0]
            steps = sorted(set().union(*[prefix_series(r, f) for r in runs]))
            half[f] = next((s for s, g in zip(steps, gain) if gain.max() > 0 and g >= gain.max() / 2), None)
        seq = [half[f] for f in sorted(half, reverse=True) if half[f] is not None]
        ok = len(seq) > 1 and all(a <= b for a, b in zip(seq, seq[1:]))
        out.append((claim, "supported" if ok else "not supported", "step at which each prefix length reaches half its gain: "
                    + ", ".join(f"{f:.0%}: {'no gain' if half[f] is None else half[f]}" for f in sorted(half, reverse=True))
                    + " (longer prefixes should come first)"))

    out.append(("Fig. 5: the model can drop the prefix's strategy for a better one", "not tested", "needs reading samples, not metrics"))

    # Fig. 8: lead grows with k
    claim = "Fig. 8: PrefixRL's held-out lead over the baselines grows with k"
    baselines = [m for m in (rl8, rl64, sft, off) if m is not None]
    if pre is None or not baselines:
        out.append((claim, "not tested", "needs PrefixRL and a baseline"))
    else:
        p = heldout_pass_at(pre)
        parts, grows = [], []
        for b in baselines:
            q = heldout_pass_at(b)
            ks = sorted(set(p[0]) & set(q[0]))
            if len(ks) < 2:
                continue
            l1, lk = p[0][1] - q[0][1], p[0][ks[-1]] - q[0][ks[-1]]
            grows.append(lk > l1 and lk > 0)
            parts.append(f"vs {b.label}: lead {l1:+.3f} at k=1, {lk:+.3f} at k={ks[-1]} ({p[1] if p[1] == q[1] else 'last eval rows'})")
        missing = [n for n, m in (("RL n=8", rl8), ("RL n=64", rl64), ("SFT+RL", sft), ("Off-policy RL", off)) if m is None]
        status = "not tested" if not grows else status_of(grows, missing)
        out.append((claim, status, "; ".join(parts) or "no held-out pass@k numbers"))

    claim = "Fig. 10: prefixes from another model family work nearly as well"
    other = [m for m in methods if m.base == "PrefixRL" and any(r.args.get("traces") for r in m.runs)]
    if not other or pre is None or pre in other:
        out.append((claim, "not tested", "needs PrefixRL runs with --traces from another model next to runs with own traces"))
    else:
        a, b = final_mean(pre, "eval/train_pass@1"), final_mean(other[0], "eval/train_pass@1")
        out.append((claim, "supported" if a and b is not None and b >= 0.9 * a else "not supported",
                    f"final train pass@1: own traces {f3(a)}, {other[0].label} {f3(b)} ('nearly' = at least 90%)"))

    # Fig. 11: entropy
    claim = "Fig. 11: token entropy: SFT+RL collapses towards 0; PrefixRL stays near standard RL"
    if pre is None or rl8 is None:
        out.append((claim, "not tested", "needs PrefixRL and standard RL runs"))
    else:
        ep, er = window_mean(pre, "train/entropy", 0.8, 1.0), window_mean(rl8, "train/entropy", 0.8, 1.0)
        e0 = window_mean(rl8, "train/entropy", 0.0, 0.05)
        near = ep is not None and er is not None and er > 0 and 0.5 <= ep / er <= 2
        txt = f"mean entropy over the last 20% of steps: PrefixRL {f3(ep)}, {rl8.label} {f3(er)} (ratio {ep / er if er else float('nan'):.2f}; 'near' = 0.5..2); start of RL {f3(e0)}"
        collapse = None
        if sft is not None:
            es = window_mean(sft, "train/entropy", 0.8, 1.0)
            collapse = es is not None and er is not None and es < 0.25 * er
            txt += f"; SFT+RL {f3(es)} ('collapse' = below 25% of {rl8.label}'s)"
        out.append((claim, status_of([near] + ([collapse] if sft is not None else []), [] if sft else ["SFT+RL"]), txt))

    # Fig. 12: gradient norm and std
    claim = "Fig. 12: gradient norm: PrefixRL higher and steady, standard RL vanishing, off-policy RL spiky; gradient std: PrefixRL below off-policy RL"
    if pre is None or rl8 is None:
        out.append((claim, "not tested", "needs PrefixRL and standard RL runs"))
    else:
        gp, gr = window_mean(pre, "train/grad_norm", 0, 1), window_mean(rl8, "train/grad_norm", 0, 1)
        zero = [np.mean([v <= 1e-12 for v in train_window(r, "train/grad_norm", 0, 1)]) for r in rl8.runs if train_window(r, "train/grad_norm", 0, 1)]
        def spike(m):  # max / median of the gradient norm, mean over seeds
            ratios = [max(v) / max(float(np.median(v)), 1e-12) for v in (train_window(r, "train/grad_norm", 0, 1) for r in m.runs) if v]
            return float(np.mean(ratios)) if ratios else float("nan")

        zero = float(np.mean(zero)) if zero else float("nan")
        checks = [gp is not None and gr is not None and gp > gr, zero >= 0.25]
        txt = (f"mean grad norm PrefixRL {f3(gp)}, {rl8.label} {f3(gr)}; {rl8.label} has a zero gradient on "
               f"{zero:.0%} of steps ('vanishing' = at least 25%); max/median grad norm PrefixRL {spike(pre):.1f}")
        if off is not None:
            checks.append(spike(off) > spike(pre))
            txt += f", {off.label} {spike(off):.1f}"
            sp, so = window_mean(pre, "train/grad_std", 0, 1), window_mean(off, "train/grad_std", 0, 1)
            if sp is not None and so is not None:
                checks.append(sp < so)
                txt += f"; mean grad std PrefixRL {sp:.3g}, {off.label} {so:.3g}"
            else:
                txt += "; grad std not logged by " + " and ".join(m.label for m, s in ((pre, sp), (off, so)) if s is None)
        out.append((claim, status_of(checks, [] if off else ["Off-policy RL"]), txt))

    claim = "(logged, not in the paper's plots) PrefixRL has fewer all-negative groups than standard RL early on"
    if pre is None or rl8 is None:
        out.append((claim, "not tested", "needs PrefixRL and standard RL runs"))
    else:
        a, b = window_mean(pre, "train/all_negative_frac", 0, 0.2), window_mean(rl8, "train/all_negative_frac", 0, 0.2)
        out.append((claim, "supported" if a is not None and b is not None and a < b else "not supported",
                    f"all-negative group fraction over the first 20% of steps: PrefixRL {f3(a)}, {rl8.label} {f3(b)}"))
    return out


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
        lines += [f"Note: the runs end at different steps ({', '.join(map(str, ends))}): runs still going or cut short; "
                  "final values are not all at the same point of training.", ""]
    lines += ["Computed from the runs above by plot.py; the thresholds are stated with each measurement.", ""]
    cl = claims(methods)
    for claim, status, measured in cl:
        lines.append(f"- **{status}** — {claim}. Measured: {measured}.")
    lines.append("")
    return lines, {"setting": slabel, "target_train_pass@1": target, "methods": numbers,
                   "claims": [dict(claim=c, status=s, measured=t) for c, s, t in cl]}


def main(args: Args):
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
                       "Token entropy over training (paper Fig. 11)", "fig3_entropy.png", ylim=(0, None),
                       note=f"rolling mean of {args.smooth} steps; SFT+RL's SFT phase is drawn at negative steps")
        fig_over_steps(plt, methods, out, args, [("train/grad_norm", "(a) gradient norm before clipping", "global grad norm (log)"),
                                                 ("train/grad_std", "(b) gradient standard deviation", "train/grad_std (log)")],
                       "Gradient norm and standard deviation (paper Fig. 12)", "fig4_grad_norm_std.png", logy=True,
                       note=f"rolling mean of {args.smooth} steps; a zero gradient (every group with equal rewards) is drawn at the dashed floor")
        fig_prefix_length(plt, methods, out, args)
        fig_over_steps(plt, methods, out, args, [("train/all_negative_frac", "groups whose rollouts all failed (no gradient signal)", "fraction of groups")],
                       "All-negative groups over training", "fig6_all_negative.png", ylim=(-0.02, 1.02), note=f"rolling mean of {args.smooth} steps")
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
    raise SystemExit(main(tyro.cli(Args)))
