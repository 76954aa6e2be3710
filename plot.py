"""The paper's figures and a results table from run directories (finished or still running).

    python plot.py runs/def_* --out figures   # run dirs, globs, or parent dirs holding run dirs

Runs are grouped into methods: the script plus the flags that change the algorithm (standard_rl
with --rollouts 64 is "RL n=64", prefixrl --prefixed-only is "PrefixRL prefixed-only", prefixrl
--traces FILE (traces collected by another model family) is "PrefixRL, other-family traces"; any
other flag that differs between runs of a script is added to the name). Seeds of a method are
averaged: mean and a band (--band std: ± one standard deviation over seeds; minmax: min to max).
Runs of different task settings (--hard-min, --trace-budget, ...) are never averaged together:
each setting gets its own subfolder.

Read from each run dir: args.json, metrics.jsonl (docs/usage.md, "Metrics"), and when present
  final_eval.json   {"n": samples per problem, "heldout_counts": [...], "train_counts": [...]}:
                    per-problem correct counts at the end, no prefix (Fig. 8, pass@k, k = 1..n)
  eval rows with "eval/prefix@F_pass@1" (F = 0.2, 0.4, ...): pass@1 on the training problems
                    when the first F of their trace is the prefix (Fig. 3, back-generalization)
Written to --out: fig1..fig6 PNGs, results.md (a table per method and the paper's claims checked
against the measured numbers) and results.json (the same numbers, per run).
Reading and grouping the run dirs is rundirs.py; the claims are checked in claims.py.
"""

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

import claims  # noqa: E402
from rundirs import (COLORS, Method, aggregate, eval_series, final_mean, find_runs,  # noqa: E402
                     fmt, group, mean_std, pass_at_k_curve, per_run_numbers, pick, prefix_fracs,
                     prefix_series, train_series, value)


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
    """ignore RL rows after this step (compare runs still going at a common step); final_eval.json
    is then used only if it was taken at a step <= this"""


# FIGURES
def _plt():
    plt.rcParams.update({"font.size": 10, "axes.titlesize": 11, "axes.grid": True,
                         "grid.alpha": 0.3})
    return plt


def draw(ax, m, c, **kw):
    """Mean and band; where fewer seeds than the method's runs have the point (a run still going,
    or cut short), the mean goes on as a thin dashed line."""
    full = c.n >= len(m.runs)
    last = int(np.nonzero(full)[0][-1]) + 1 if full.any() else 0
    label = f"{m.label} ({len(m.runs)} seed{'s' * (len(m.runs) > 1)})"
    if last:
        ax.plot(c.x[:last], c.mean[:last], color=m.color, label=label, **kw)
    if last < len(c.x):
        ax.partial_seeds = True
        ax.plot(c.x[max(last - 1, 0):], c.mean[max(last - 1, 0):], color=m.color, lw=0.9, ls="--",
                alpha=0.8, label=None if last else label)
    if (c.n > 1).any():
        ax.fill_between(c.x, c.lo, c.hi, color=m.color, alpha=0.18, lw=0)


def finish(plt, fig, axes, title, path, note=None):
    if any(getattr(ax, "partial_seeds", False) for ax in np.ravel(axes)):
        note = ((note + "; " if note else "") + "thin dashed: mean over fewer seeds than the "
                "method has (runs of different lengths)")
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
        fig.legend([handles[lab] for lab in labels], labels, loc="lower center", ncol=ncol,
                   frameon=False, bbox_to_anchor=(0.5, note_h / height))
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
              ("train", "train/reward_no_prefix",
               f"(b) training reward on no-prefix rollouts (rolling mean of {args.smooth})"),
              ("eval", "eval/heldout_pass@1", "(c) held-out problems: pass@1, no prefix")]
    offsets = {round(float(np.median([r.offset for r in m.runs])), 0) for m in methods}
    offsets = sorted(offsets - {0.0})
    sft = [m for m in methods if m.base == "SFT+RL"]
    target = mean_std([r.final("eval/train_pass@1") for r in sft[0].runs])[0] if sft else None
    for ax, (kind, key, title) in zip(axes, panels):
        for m in methods:
            series = [eval_series(r, key, "flops") if kind == "eval"
                      else train_series(r, key, args.smooth, "flops") for r in m.runs]
            c = aggregate(series, args.band)
            if c is None:
                continue
            draw(ax, m, c)
            ax.plot(c.x[:1], c.mean[:1], "o", color=m.color, ms=5)
        for i, off in enumerate(offsets):
            ax.axvline(off, color="dimgray", ls=":", lw=1.5, label=(
                "rejection-sampling cost (curves using the traces start here)" if i == 0 else None))
        if key == "eval/train_pass@1" and target is not None:
            ax.axhline(target, color=COLORS["SFT+RL"], ls="--", lw=1, alpha=0.7,
                       label=f"SFT+RL final train pass@1 ({target:.3f})")
        ax.set(title=title, xlabel="FLOPs (sampling 2ND + training 6ND, traces included)",
               ylabel="pass@1" if kind == "eval" else "mean reward", ylim=(-0.02, 1.02))
        sci_x(ax)
    finish(plt, fig, axes, "No-prefix accuracy vs compute (paper Fig. 2 / 7)",
           os.path.join(out, "fig1_reward_vs_flops.png"),
           "dot: a curve's first point; dotted line: FLOPs spent on rejection sampling before RL "
           "starts")


def fig_passk(plt, methods, out, args):
    have = [m for m in methods if any(r.final_eval for r in m.runs)]
    if not have:
        print("note: no run has final_eval.json (per-problem counts at the end): "
              "skipped fig2_passk_heldout.png")
        return False
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    n = sorted({r.final_eval["n"] for m in have for r in m.runs if r.final_eval})
    panels = [("heldout_counts", "(a) held-out problems"),
              ("train_counts", "(b) training problems")]
    for ax, (counts_key, title) in zip(axes, panels):
        for m in have:
            curves = [pass_at_k_curve(r.final_eval, counts_key) for r in m.runs if r.final_eval]
            curves = [c for c in curves if c]
            if not curves:
                continue
            kmax = min(max(c) for c in curves)
            curves = [{k: v for k, v in cur.items() if k <= kmax} for cur in curves]
            c = aggregate(curves, args.band)
            draw(ax, m, c, marker=".", ms=3)
        ax.set_xscale("log", base=2)
        ticks = [2 ** i for i in range(0, 12) if 2 ** i <= max(n)]
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set(title=title, xlabel="k (samples per problem)",
               ylabel="pass@k (unbiased estimator), no prefix", ylim=(-0.02, 1.02))
    finish(plt, fig, axes, "pass@k at the end of training (paper Fig. 8)",
           os.path.join(out, "fig2_passk_heldout.png"),
           f"from final_eval.json: n = {', '.join(map(str, n))} samples per problem")
    return True


def with_no_prefix(methods, key):
    """[(method, key, line style)]: every method's `key`, and after each that logs `key`_no_prefix
    (PrefixRL) that too, dotted: its no-prefix rollouts alone are the ones to compare with standard
    RL's."""
    lines = []
    for m in methods:
        lines.append((m, key, "-"))
        if any(value(row, key + "_no_prefix") is not None for r in m.runs for row in r.train):
            no_prefix = Method(f"{m.label} (no-prefix rollouts)", m.base, m.runs, m.color)
            lines.append((no_prefix, key + "_no_prefix", ":"))
    return lines


NO_PREFIX_NOTE = ("PrefixRL, solid: over all its rollouts, prefixed ones included; dotted: over "
                  "its no-prefix rollouts (original problems) only, like standard RL's rollouts, "
                  "so that line is the one to compare with RL's")


def fig_over_steps(plt, methods, out, args, panels, title, fname, logy=False, note=None, ylim=None,
                   no_prefix_too=False):
    fig, axes = plt.subplots(1, len(panels), figsize=(max(9.0, 6.5 * len(panels) + 0.5), 5.6),
                             squeeze=False)
    drew_no_prefix = False
    has_sft = any("sft_step" in r for m in methods for run in m.runs for r in run.rows[:1])
    for ax, (key, ptitle, ylabel) in zip(axes[0], panels):
        lines = with_no_prefix(methods, key) if no_prefix_too else [(m, key, "-") for m in methods]
        curves = [(m, aggregate([train_series(r, k, args.smooth) for r in m.runs], args.band), ls)
                  for m, k, ls in lines]
        curves = [(m, c, ls) for m, c, ls in curves if c is not None]
        if logy and curves:  # a zero gradient has no place on a log axis: it is drawn at a floor
            pos = np.concatenate([c.mean[c.mean > 0] for _, c, _ in curves] + [np.array([])])
            floor = 10 ** math.floor(math.log10(pos.min() / 10)) if len(pos) else 1e-6
            if any((c.mean <= floor).any() for _, c, _ in curves):
                ax.axhline(floor, color="dimgray", lw=0.8, ls="--",
                           label="zero (drawn at the dashed floor)")
            for _, c, _ in curves:
                c.mean, c.lo, c.hi = (np.maximum(c.mean, floor), np.maximum(c.lo, floor),
                                      np.maximum(c.hi, floor))
        for m, c, ls in curves:
            draw(ax, m, c, ls=ls)
        drew_no_prefix |= any(ls == ":" for _, _, ls in curves)
        if key == "train/entropy" and has_sft:
            ax.axvline(0, color="dimgray", ls=":", lw=1.2,
                       label="SFT+RL: SFT ends, RL starts (SFT steps < 0)")
        if not curves:
            ax.text(0.5, 0.5, f"no run logs {key}", ha="center", va="center",
                    transform=ax.transAxes, color="dimgray")
        if logy and curves:
            ax.set_yscale("log")
        ax.set(title=ptitle, xlabel="RL step", ylabel=ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ylim and curves:
            ax.set_ylim(*ylim)
    if drew_no_prefix:
        note = (note + "; " if note else "") + NO_PREFIX_NOTE
    finish(plt, fig, axes, title, os.path.join(out, fname), note)


def fig_prefix_length(plt, methods, out, args):
    with_prefix = [m for m in methods if any(prefix_fracs(r) for r in m.runs)]
    only = [m for m in methods if m.base == "PrefixRL prefixed-only" and m not in with_prefix]
    if not with_prefix and not only:
        print("note: no prefixed-only run and no eval/prefix@F rows: "
              "skipped fig5_prefix_length.png")
        return False
    panels = (1 if with_prefix else 0) + len(with_prefix) + len(only)
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels + 0.5, 5.2), squeeze=False)
    all_axes = axes = list(axes[0])
    if with_prefix:
        ax, axes = axes[0], axes[1:]
        for m in with_prefix:
            fr = sorted({0.0} | {f for r in m.runs for f in prefix_fracs(r)})
            per_run = [{f: (f, prefix_series(r, f)[0][1]) for f in fr if 0 in prefix_series(r, f)}
                       for r in m.runs]
            c = aggregate(per_run, args.band)
            if c is not None:
                draw(ax, m, c, marker="o")
        ax.set(title="(a) before training (step 0): success vs prefix length",
               xlabel="prefix length (fraction of the trace's reasoning)",
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
            ax.plot(c.x, c.mean, color=col, marker=".",
                    label=f"prefix {f:.0%} of the reasoning" + (" (no prefix)" if f == 0 else ""))
            if (c.n > 1).any():
                ax.fill_between(c.x, c.lo, c.hi, color=col, alpha=0.15, lw=0)
        if len(fr) == 1:
            ax.text(0.5, 0.5, "only the no-prefix eval is logged:\nno eval/prefix@F_pass@1 rows",
                    ha="center", va="center", transform=ax.transAxes, color="dimgray")
        letter = chr(98 + i) if with_prefix else chr(97 + i)
        ax.set(title=f"({letter}) {m.label}, {len(m.runs)} seed(s): accuracy by prefix length",
               xlabel="RL step", ylabel="pass@1 on the training problems", ylim=(-0.02, 1.02))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    finish(plt, fig, all_axes, "Back-generalization: success vs prefix length (paper Fig. 3, §4)",
           os.path.join(out, "fig5_prefix_length.png"))
    return True


# RESULTS: a table per method, then the claims
def results_section(slabel, methods):
    sft = pick(methods, "SFT+RL")
    target = final_mean(sft, "eval/train_pass@1") if sft else None
    numbers = {m.label: [per_run_numbers(r, target) for r in m.runs] for m in methods}
    ks = sorted({k for rows in numbers.values() for d in rows for k in d
                 if re.match(r"heldout_pass@\d+$", k)}, key=lambda k: int(k.split("@")[1]))
    reach_col = "FLOPs to reach SFT+RL's final train pass@1"
    if target is not None:
        reach_col += f" ({target:.3f})"
    head = (["method", "seeds", "final step", "final FLOPs", "train pass@1"]
            + [k.replace("heldout_", "held-out ") for k in ks] + [reach_col])
    lines = [f"## Setting: {slabel}" if slabel else "## Results", "",
             "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for m in methods:
        rows = numbers[m.label]
        steps = sorted({d["final_step"] for d in rows if d["final_step"] is not None})
        if target is None:
            reach = "no SFT+RL eval yet" if sft else "no SFT+RL runs"
        else:
            hit = [d["flops_to_target"] for d in rows if d["flops_to_target"] is not None]
            reach = "not reached" if not hit else fmt(hit, ".3g")
            if hit and len(hit) < len(rows):
                reach += f" ({len(hit)}/{len(rows)} seeds; others not reached)"
        first_last = "–".join(map(str, steps[:1] + steps[1:][-1:])) or "–"
        cells = ([m.label, str(len(rows)), first_last, fmt([d["final_flops"] for d in rows], ".3g"),
                  fmt([d["train_pass@1"] for d in rows])]
                 + [fmt([d.get(k) for d in rows]) for k in ks] + [reach])
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Mean ± sample std (ddof 1) over seeds; final = each run's last eval row (no "
              "prefix). pass@k for k > 8 comes from final_eval.json. FLOPs include the "
              "rejection-sampling cost for the methods that use the traces.", "",
              "<details><summary>per run</summary>", "",
              "| method | run | seed | final step | final FLOPs | train pass@1 | held-out pass@1 "
              "| held-out pass@8 |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for m in methods:
        for d in numbers[m.label]:
            lines.append(f"| {m.label} | {d['run']} | {d['seed']} | {d['final_step']} | "
                         f"{fmt([d['final_flops']], '.3g')} | {fmt([d['train_pass@1']])} | "
                         f"{fmt([d['heldout_pass@1']])} | {fmt([d['heldout_pass@8']])} |")
    lines += ["", "</details>", "", "### The paper's claims against these runs", ""]
    ends = sorted({d["final_step"] for rows in numbers.values() for d in rows
                   if d["final_step"] is not None})
    if len(ends) > 1:
        lines += [f"Note: the runs end at different steps ({', '.join(map(str, ends))}): runs cut "
                  "short, or run to another budget (reproduce.py runs PrefixRL and standard RL to "
                  "about the same FLOPs); compare final values with that in mind.", ""]
    lines += ["Computed from the runs above by plot.py; the thresholds are stated with each "
              "measurement.", ""]
    checked = claims.check(methods)
    for claim, status, measured in checked:
        lines.append(f"- **{status}** — {claim}. Measured: {measured}.")
    lines.append("")
    return lines, {"setting": slabel, "target_train_pass@1": target, "methods": numbers,
                   "claims": [dict(claim=c, status=s, measured=t) for c, s, t in checked]}


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
        out = args.out
        if len(settings) > 1:
            out = os.path.join(args.out, re.sub(r"[^A-Za-z0-9_.=-]+", "_", slabel))
        os.makedirs(out, exist_ok=True)
        print(f"{slabel or 'runs'}: "
              + "; ".join(f"{m.label}: {len(m.runs)} run(s)" for m in methods))
        smoothed = f"rolling mean of {args.smooth} steps"
        fig_reward_vs_flops(plt, methods, out, args)
        fig_passk(plt, methods, out, args)
        fig_over_steps(plt, methods, out, args,
                       [("train/entropy", "token entropy of sampled tokens", "entropy (nats)")],
                       "Token entropy over training (paper Fig. 11)", "fig3_entropy.png",
                       ylim=(0, None), no_prefix_too=True,
                       note=f"{smoothed}; SFT+RL's SFT phase is drawn at negative steps")
        fig_over_steps(plt, methods, out, args,
                       [("train/grad_norm", "(a) gradient norm before clipping",
                         "global grad norm (log)"),
                        ("train/grad_std", "(b) gradient standard deviation",
                         "train/grad_std (log)")],
                       "Gradient norm and standard deviation (paper Fig. 12)",
                       "fig4_grad_norm_std.png", logy=True,
                       note=f"{smoothed}; a zero gradient (every group with equal rewards) is "
                       "drawn at the dashed floor")
        fig_prefix_length(plt, methods, out, args)
        fig_over_steps(plt, methods, out, args,
                       [("train/all_negative_frac",
                         "groups whose rollouts all failed (no gradient signal)",
                         "fraction of groups")],
                       "All-negative groups over training", "fig6_all_negative.png",
                       ylim=(-0.02, 1.02), no_prefix_too=True, note=smoothed)
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
        raise SystemExit(main(utils.cli(Args, __doc__.splitlines()[0])))
