"""The paper's claims checked against runs: each claim_* function takes the methods that were run
(a Cast) and returns (claim, status, what was measured), with the thresholds stated in the
measurement. plot.py writes them into results.md and results.json; tests/test_plot.py tests each
on fabricated runs."""

from dataclasses import dataclass
from typing import Optional

import numpy as np

from rundirs import (OTHER_FAMILY, RL_NAME, Method, aggregate, eval_series, final_mean, fmt,
                     mean_std, pass_at_k_curve, pick, prefix_fracs, prefix_series, reach_flops,
                     train_window, value)


# HELPERS
def window_mean(m, key, lo, hi):
    vals = [np.mean(v) for v in (train_window(r, key, lo, hi) for r in m.runs) if v]
    return float(np.mean(vals)) if vals else None


def heldout_pass_at(m):
    """({k: mean held-out pass@k}, source): every k <= n from final_eval.json when all seeds have
    it, else k = 1 and 8 from the last eval rows."""
    fes = [r.final_eval for r in m.runs if r.final_eval and r.final_eval.get("heldout_counts")]
    if fes and len(fes) == len(m.runs):
        n = min(fe["n"] for fe in fes)
        curves = [pass_at_k_curve(fe, "heldout_counts") for fe in fes]
        mean = {k: float(np.mean([c[k][1] for c in curves])) for k in range(1, n + 1)}
        return mean, "final_eval.json"
    d = {k: final_mean(m, f"eval/heldout_pass@{k}") for k in (1, 8)}
    return {k: v for k, v in d.items() if v is not None}, "last eval rows"


def no_prefix_window_mean(m, key, lo, hi):
    """(mean over seeds of `key` over [lo, hi] of each run, where): for PrefixRL over its no-prefix
    rollouts only (`key`_no_prefix), like standard RL's, whose rollouts are all no-prefix; a run
    that does not log it (an older run) falls back to `key`, over all its rollouts, prefixed ones
    included, and `where` says so."""
    per_run, fallback = [], 0
    for r in m.runs:
        vals = train_window(r, key + "_no_prefix", lo, hi)
        if not vals:
            vals = train_window(r, key, lo, hi)
            fallback += bool(vals)
        if vals:
            per_run.append(float(np.mean(vals)))
    where = "no-prefix rollouts"
    if fallback:
        where += (f"; {fallback}/{len(m.runs)} run(s) log no {key}_no_prefix (older runs): "
                  "all rollouts there, prefixed ones included")
    return (float(np.mean(per_run)) if per_run else None), where


def f3(v):
    return "–" if v is None else f"{v:.3f}"


def status_of(checks, missing=(), partly=False):
    """supported / partly / not supported from the tested parts; names the methods not run."""
    if checks and all(checks):
        st = "supported"
    else:
        st = "partly" if any(checks) or partly else "not supported"
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
        rl_all = sorted([m for m in methods if RL_NAME.fullmatch(m.base)],
                        key=lambda m: int(RL_NAME.fullmatch(m.base)[1]))
        return cls(methods, rl8=pick(methods, "RL n=8") or (rl_all[0] if rl_all else None),
                   rl64=pick(methods, "RL n=64") or (rl_all[-1] if len(rl_all) > 1 else None),
                   sft=pick(methods, "SFT+RL"), pre=pick(methods, "PrefixRL"),
                   off=pick(methods, "Off-policy RL"), only=pick(methods, "PrefixRL prefixed-only"),
                   other=pick(methods, OTHER_FAMILY))

    def missing(self, fields, have):
        """Names of the methods in `fields` that were not run or are not in `have` (no numbers)."""
        return [self.NAMES[f] for f in fields
                if getattr(self, f) is None or getattr(self, f) not in have]


# THE PAPER'S REGIME: the problems are hard for the base model, as in the paper
def claim_rl8_stays_low(c):
    claim = ("Paper's regime: RL n=8's no-prefix train pass@1 stays low for the whole run, "
             "with most groups all-negative")
    curve = None
    if c.rl8:
        curve = aggregate([eval_series(r, "eval/train_pass@1") for r in c.rl8.runs], "std")
    neg = window_mean(c.rl8, "train/all_negative_frac", 0, 1) if c.rl8 else None
    if curve is None or neg is None:
        return claim, "not tested", ("needs standard RL runs with eval rows and "
                                     "train/all_negative_frac")
    peak, low, most = float(curve.mean.max()), 0.2, 0.5
    return claim, status_of([peak < low, neg > most]), (
        f"{c.rl8.label}: highest eval train pass@1 (mean over seeds) {peak:.3f} "
        f"('low' = below {low}); "
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
    claim = ("Paper's regime: PrefixRL's final no-prefix train pass@1 is >= 0.5 and >= 3x RL n=8's, "
             "RL n=8 having had at least PrefixRL's FLOPs")
    p, a = final_mean(c.pre, "eval/train_pass@1"), final_mean(c.rl8, "eval/train_pass@1")
    if p is None or a is None:
        return claim, "not tested", "needs PrefixRL and RL n=8 runs with eval rows"
    checks, at = [p >= 0.5, p >= 3 * a], ""
    fp, fa = final_mean(c.pre, "flops"), final_mean(c.rl8, "flops")
    if None not in (fp, fa):  # finals compare fairly only if standard RL spent no less
        checks.append(fa >= fp)
        at = f"; final FLOPs: PrefixRL {fp:.3g}, {c.rl8.label} {fa:.3g}"
    return claim, status_of(checks), (
        f"final eval train pass@1: PrefixRL {p:.3f}, {c.rl8.label} {a:.3f} "
        f"(PrefixRL / {c.rl8.label} = " + (f"{p / a:.1f}" if a > 0 else "inf") + ")" + at)


def claim_heldout_above_rl(c):
    claim = "Paper's regime: PrefixRL's final held-out pass@1 is above both RL runs'"
    p = final_mean(c.pre, "eval/heldout_pass@1")
    rls = [m for m in (c.rl8, c.rl64)
           if m is not None and final_mean(m, "eval/heldout_pass@1") is not None]
    if p is None or not rls:
        return claim, "not tested", "needs PrefixRL and standard RL runs with eval rows"
    vals = [final_mean(m, "eval/heldout_pass@1") for m in rls]
    return claim, status_of([p > v for v in vals], c.missing(("rl8", "rl64"), rls)), (
        f"final eval held-out pass@1: PrefixRL {p:.3f}, "
        + ", ".join(f"{m.label} {v:.3f}" for m, v in zip(rls, vals)))


def claim_ahead_on_flops(c):
    claim = ("Paper's regime: on the FLOPs axis (rejection sampling included), PrefixRL is ahead "
             "of both RL runs from where its curve starts to the end")

    def curve(m):  # seed mean of eval train pass@1 by FLOPs
        if m is None:
            return None
        return aggregate([eval_series(r, "eval/train_pass@1", x="flops") for r in m.runs], "std")

    p = curve(c.pre)
    rls = [(m, curve(m)) for m in (c.rl8, c.rl64) if curve(m) is not None]
    if p is None or len(p.x) < 2 or not rls:
        return claim, "not tested", ("needs PrefixRL runs with eval rows after the first, and "
                                     "standard RL runs with eval rows")
    xs, ys = p.x[1:], p.mean[1:]  # the first point is the base model at the traces' cost
    full, parts, any_ahead = [], [], False
    for m, rl in rls:
        compared = xs <= rl.x[-1]  # beyond RL's last FLOPs there is no RL value to compare with
        n = int(compared.sum())
        ahead = int((ys[compared] > np.interp(xs[compared], rl.x, rl.mean)).sum())
        full.append(n > 0 and ahead == n and 2 * n >= len(xs))
        any_ahead |= ahead > 0
        parts.append(f"vs {m.label}: ahead at {ahead}/{n} points compared, {len(xs) - n} beyond "
                     f"its last FLOPs ({rl.x[-1]:.3g})")
    status = status_of(full, c.missing(("rl8", "rl64"), [m for m, _ in rls]), partly=any_ahead)
    return claim, status, (
        "; ".join(parts) + f" (seed means; RL interpolated linearly in FLOPs; PrefixRL has "
        f"{len(xs)} eval points after its first; 'supported' = ahead at every compared point, "
        "with at least half of them compared, against each RL run)")


# THE PAPER'S FIGURES
def claim_final_order(c):
    claim = "Fig. 2/7: final no-prefix training accuracy RL n=8 < RL n=64 < SFT+RL < PrefixRL"
    order = [m for m in (c.rl8, c.rl64, c.sft, c.pre)
             if m is not None and final_mean(m, "eval/train_pass@1") is not None]
    if len(order) < 2 or c.pre not in order:
        return claim, "not tested", "needs PrefixRL and at least one baseline"
    vals = [final_mean(m, "eval/train_pass@1") for m in order]
    ok = all(a < b for a, b in zip(vals, vals[1:]))
    top = max(zip(vals, [m.label for m in order]))
    status = status_of([ok] if ok else [False, top[1] == c.pre.label],
                       c.missing(("rl8", "rl64", "sft"), order))
    return claim, status, ("final eval train pass@1: "
                           + ", ".join(f"{m.label} {f3(v)}" for m, v in zip(order, vals))
                           + f"; highest: {top[1]}")


def claim_reaches_sft_faster(c):
    claim = ("Fig. 2/7: PrefixRL reaches SFT+RL's final training accuracy ~2x faster in FLOPs "
             "(rejection sampling included)")
    target = final_mean(c.sft, "eval/train_pass@1")
    if target is None or c.pre is None:
        return claim, "not tested", "needs PrefixRL and SFT+RL runs with eval rows"
    fp = [reach_flops(r, "eval/train_pass@1", target) for r in c.pre.runs]
    fs = [reach_flops(r, "eval/train_pass@1", target) for r in c.sft.runs]
    mp, ms = mean_std(fp)[0], mean_std(fs)[0]
    reached = (f"PrefixRL reached it in {sum(v is not None for v in fp)}/{len(fp)} seeds, "
               f"SFT+RL in {sum(v is not None for v in fs)}/{len(fs)}")
    if mp is None or ms is None or None in fp:
        return claim, "not supported", (f"target {f3(target)} (SFT+RL's mean final eval train "
                                        f"pass@1); {reached}")
    ratio = ms / mp
    status = "supported" if ratio >= 1.5 else ("partly" if ratio > 1 else "not supported")
    return claim, status, (f"target {f3(target)}; FLOPs to reach it: PrefixRL {mp:.3g}, "
                           f"SFT+RL {ms:.3g} (SFT+RL / PrefixRL = {ratio:.2f}; paper ~2; "
                           f"'supported' needs >= 1.5); {reached}")


def claim_success_rises_with_prefix(c):
    claim = "Fig. 3: before RL, success rises with prefix length (~0 without prefix, then a jump)"
    base_runs = [r for m in c.methods for r in m.runs if prefix_fracs(r)]
    if not base_runs:
        return claim, "not tested", ("no run logs eval/prefix@F_pass@1 rows "
                                     "(format: plot.py docstring)")
    fr = sorted({0.0} | {f for r in base_runs for f in prefix_fracs(r)})
    v = [mean_std([prefix_series(r, f).get(0, (None, None))[1] for r in base_runs])[0] for f in fr]
    fv = [(f, x) for f, x in zip(fr, v) if x is not None]
    ys = [x for _, x in fv]
    rises = len(ys) > 1 and all(b >= a for a, b in zip(ys, ys[1:])) and ys[-1] > ys[0]
    rise = ys[-1] - ys[0] if len(ys) > 1 else 0.0
    jump = max((b - a for a, b in zip(ys, ys[1:])), default=0.0) / rise if rise > 0 else 0.0
    status = "supported" if rises and jump > 0.5 else ("partly" if rises else "not supported")
    return claim, status, ("step-0 pass@1 by prefix length: "
                           + ", ".join(f"{f:.0%} {x:.3f}" for f, x in fv)
                           + f"; largest step between neighbouring lengths = {jump:.0%} of the "
                           "total rise ('jump' needs > 50%)")


def claim_back_generalization(c):
    claim = ("§4: training only on prefixed problems raises no-prefix accuracy "
             "(back-generalization)")
    if c.only is None:
        return claim, "not tested", "no prefixrl --prefixed-only runs"
    runs = c.only.runs
    start = [value(r.evals[min(r.evals)], "eval/train_pass@1") for r in runs if r.evals]
    end = [r.final("eval/train_pass@1") for r in runs]
    hs = [value(r.evals[min(r.evals)], "eval/heldout_pass@1") for r in runs if r.evals]
    he = [r.final("eval/heldout_pass@1") for r in runs]
    up = [b > a for a, b in zip(start, end) if a is not None and b is not None]
    status = "supported" if up and all(up) else ("partly" if any(up) else "not supported")
    return claim, status, (f"no-prefix train pass@1 {fmt(start)} -> {fmt(end)}, "
                           f"held-out pass@1 {fmt(hs)} -> {fmt(he)}; "
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
        half[f] = next((s for s, g in zip(steps, gain) if gain.max() > 0 and g >= gain.max() / 2),
                       None)
    seq = [half[f] for f in sorted(half, reverse=True) if half[f] is not None]
    ok = len(seq) > 1 and all(a <= b for a, b in zip(seq, seq[1:]))
    return claim, "supported" if ok else "not supported", (
        "step at which each prefix length reaches half its gain: "
        + ", ".join(f"{f:.0%}: {'no gain' if half[f] is None else half[f]}"
                    for f in sorted(half, reverse=True))
        + " (longer prefixes should come first)")


def claim_drops_prefix_strategy(c):
    return ("Fig. 5: the model can drop the prefix's strategy for a better one", "not tested",
            "needs reading samples, not metrics")


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
        parts.append(f"vs {b.label}: lead {l1:+.3f} at k=1, {lk:+.3f} at k={ks[-1]} "
                     f"({p[1] if p[1] == q[1] else 'last eval rows'})")
    missing = c.missing(("rl8", "rl64", "sft", "off"), baselines)
    status = "not tested" if not grows else status_of(grows, missing)
    return claim, status, "; ".join(parts) or "no held-out pass@k numbers"


def claim_other_family(c):
    claim = "Fig. 10: prefixes from another model family work nearly as well"
    if c.other is None or c.pre is None:
        return claim, "not tested", ("needs PrefixRL runs with --traces from another model family "
                                     "next to runs with their own traces")
    keys = ("eval/train_pass@1", "eval/heldout_pass@1")
    own, other = [final_mean(c.pre, k) for k in keys], [final_mean(c.other, k) for k in keys]
    nearly = [a is not None and b is not None and b >= 0.9 * a for a, b in zip(own, other)]
    return claim, status_of(nearly), (
        f"final train pass@1: own traces {f3(own[0])}, {c.other.label} {f3(other[0])}; "
        f"final held-out pass@1: own traces {f3(own[1])}, {c.other.label} {f3(other[1])} "
        "('nearly' = at least 90% of own traces', for each)")


def claim_entropy(c):
    claim = "Fig. 11: token entropy: SFT+RL collapses towards 0; PrefixRL stays near standard RL"
    if c.pre is None or c.rl8 is None:
        return claim, "not tested", "needs PrefixRL and standard RL runs"
    ep, where = no_prefix_window_mean(c.pre, "train/entropy", 0.8, 1.0)
    er = window_mean(c.rl8, "train/entropy", 0.8, 1.0)
    e0 = window_mean(c.rl8, "train/entropy", 0.0, 0.05)
    ratio = ep / er if ep is not None and er else float("nan")
    checks = [0.5 <= ratio <= 2]
    txt = (f"mean entropy over the last 20% of steps: PrefixRL ({where}) {f3(ep)}, "
           f"{c.rl8.label} {f3(er)} (ratio {ratio:.2f}; 'near' = 0.5..2); start of RL {f3(e0)}")
    if c.sft is not None:
        es = window_mean(c.sft, "train/entropy", 0.8, 1.0)
        checks.append(es is not None and er is not None and es < 0.25 * er)
        txt += f"; SFT+RL {f3(es)} ('collapse' = below 25% of {c.rl8.label}'s)"
    return claim, status_of(checks, [] if c.sft else ["SFT+RL"]), txt


def grad_norm_spread(m):
    """(max, median, max / median) of a run's gradient norm, each a mean over seeds; None if not
    logged."""
    per_run = [v for v in (train_window(r, "train/grad_norm", 0, 1) for r in m.runs) if v]
    stats = [(max(v), float(np.median(v)), max(v) / max(float(np.median(v)), 1e-12))
             for v in per_run]
    return tuple(float(np.mean(s)) for s in zip(*stats)) if stats else None


def claim_grad_norm_and_std(c):
    claim = ("Fig. 12: gradient norm: PrefixRL higher and steady, standard RL vanishing, "
             "off-policy RL spiky; gradient std: PrefixRL below off-policy RL")
    if c.pre is None or c.rl8 is None:
        return claim, "not tested", "needs PrefixRL and standard RL runs"
    gp = window_mean(c.pre, "train/grad_norm", 0, 1)
    gr = window_mean(c.rl8, "train/grad_norm", 0, 1)
    windows = (train_window(r, "train/grad_norm", 0, 1) for r in c.rl8.runs)
    zero = [np.mean([v <= 1e-12 for v in w]) for w in windows if w]
    zero = float(np.mean(zero)) if zero else float("nan")
    checks = [gp is not None and gr is not None and gp > gr, zero >= 0.25]
    txt = (f"mean grad norm PrefixRL {f3(gp)}, {c.rl8.label} {f3(gr)}; {c.rl8.label} has a zero "
           f"gradient on {zero:.0%} of steps ('vanishing' = at least 25%)")
    shown = [m for m in (c.pre, c.off) if m is not None]
    spread = [grad_norm_spread(m) for m in shown]
    std = [window_mean(m, "train/grad_std", 0, 1) for m in shown]
    txt += "; grad norm " + ", ".join(
        f"{m.label} max {s[0]:.3g}, median {s[1]:.3g} (max/median {s[2]:.1f})" if s
        else f"{m.label} not logged" for m, s in zip(shown, spread))
    txt += "; mean grad std " + ", ".join(
        f"{m.label} {'not logged' if s is None else f'{s:.3g}'}" for m, s in zip(shown, std))
    if c.off is not None:
        weights = [max(v) for v in (train_window(r, "train/max_is_weight", 0, 1) for r in c.off.runs) if v]
        if weights:  # the paper's spikes come from trace tokens whose weight grows far above 1
            txt += f"; largest importance weight of {c.off.label}'s trace tokens {max(weights):.3g}"
        (sp, so), (dp, do) = spread, std
        # spiky: off-policy's max/median above PrefixRL's
        checks.append(sp is not None and so is not None and so[2] > sp[2])
        if dp is not None and do is not None:
            checks.append(dp < do)
    return claim, status_of(checks, [] if c.off else ["Off-policy RL"]), txt


def claim_fewer_all_negative(c):
    claim = ("(logged, not in the paper's plots) PrefixRL has fewer all-negative groups than "
             "standard RL early on")
    if c.pre is None or c.rl8 is None:
        return claim, "not tested", "needs PrefixRL and standard RL runs"
    a, where = no_prefix_window_mean(c.pre, "train/all_negative_frac", 0, 0.2)
    b = window_mean(c.rl8, "train/all_negative_frac", 0, 0.2)
    status = "supported" if a is not None and b is not None and a < b else "not supported"
    return claim, status, (f"all-negative group fraction over the first 20% of steps: "
                           f"PrefixRL ({where}) {f3(a)}, {c.rl8.label} {f3(b)}")


CLAIMS = [claim_rl8_stays_low, claim_rl64_between, claim_prefixrl_solves_most,
          claim_heldout_above_rl, claim_ahead_on_flops, claim_final_order,
          claim_reaches_sft_faster, claim_success_rises_with_prefix, claim_back_generalization,
          claim_long_prefixes_first, claim_drops_prefix_strategy, claim_lead_grows_with_k,
          claim_other_family, claim_entropy, claim_grad_norm_and_std, claim_fewer_all_negative]


def check(methods):
    """[(claim, status, measured)] computed from the runs; status: supported / partly / not
    supported / not tested."""
    cast = Cast.of(methods)
    return [claim(cast) for claim in CLAIMS]
