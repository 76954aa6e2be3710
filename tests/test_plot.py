"""plot.py on tiny synthetic run dirs (every figure, results.md numbers equal the files' numbers),
claims.py's checks on fabricated runs, reproduce.py --dry-run (the commands it would run), and
bench/takeoff.py on a synthetic groups.jsonl."""

import json
import math
import os
import sys

import numpy as np
import pytest

import claims
import models
import plot
import reproduce
import rundirs
import tasks
from utils import InputError
from conftest import load_script

STEPS, EVERY = 20, 5
# method: (script, flags, final train pass@1 before the seed's offset, rejection-sampling FLOPs, label in plot.py)
SPEC = {
    "rl8": ("standard_rl", {"rollouts": 8}, 0.30, 0.0, "RL n=8"),
    "rl64": ("standard_rl", {"rollouts": 64}, 0.50, 0.0, "RL n=64"),
    "sft": ("sft_rl", {"rollouts": 8, "sft_steps": 10}, 0.70, 1e12, "SFT+RL"),
    "off": ("offpolicy_rl", {"rollouts": 8, "shaping": None}, 0.60, 1e12, "Off-policy RL"),
    "pre": ("prefixrl", {"rollouts": 8, "prefixed_only": False}, 0.90, 1e12, "PrefixRL"),
    "only": ("prefixrl", {"rollouts": 8, "prefixed_only": True}, 0.40, 1e12, "PrefixRL prefixed-only"),
}
SEEDS = (1, 2)
N_FINAL = 16


def train_acc(method, seed, step):
    return min(1.0, SPEC[method][2] * step / STEPS + 0.01 * seed)


def step_flops(method):
    return 8e10 if method == "rl64" else 1e10


def write_run(root, method, seed):
    script, flags, _, offset, _ = SPEC[method]
    d = root / f"{method}_s{seed}"
    d.mkdir()
    args = dict(seed=seed, run_dir=str(d), hard_min=7, hard_max=8, trace_budget=2048, steps=STEPS, eval_every=EVERY,
                eval_samples=16, lr=1e-4, script=script, **flags)
    (d / "args.json").write_text(json.dumps(args))
    rows, flops = [], offset
    if method == "sft":
        for s in range(11):
            rows.append({"sft_step": s, "flops": flops, "sft/loss": 1.0 / (s + 1)})
            if s % 5 == 0:
                rows.append({"sft_step": s, "flops": flops, "train/entropy": 0.2 / (s + 1), "sft/reward_no_prefix": 0.5})
            flops += 1e10 if s < 10 else 0
    for step in range(STEPS + 1):
        if step % EVERY == 0:
            acc = train_acc(method, seed, step)
            row = {"step": step, "flops": flops, "eval/train_pass@1": acc, "eval/heldout_pass@1": acc / 2,
                   "eval/heldout_pass@8": None if (method, step) == ("rl8", 5) else min(1.0, 0.8 * acc + 0.05)}
            if method == "only":
                row.update({f"eval/prefix@{f:.1f}_pass@1": min(1.0, acc + f / 2) for f in (0.2, 0.4, 0.6, 0.8)})
            rows.append(row)
        if step == STEPS:
            break
        flops += step_flops(method)
        rows.append({
            "step": step + 1, "flops": flops,
            "train/reward_no_prefix": None if method == "only" else train_acc(method, seed, step + 1),
            **({"train/reward_prefixed": 0.5} if script == "prefixrl" else {}),
            **({"train/all_negative_frac_no_prefix": 0.6, "train/entropy_no_prefix": 0.25} if method == "pre" else {}),
            "train/all_negative_frac": 1.0 if method == "rl8" and step < 5 else 0.3,
            "train/grad_norm": 0.0 if method == "rl8" and step < 5 else 0.1 + 0.01 * step,
            "train/grad_std": {"off": 0.5, "sft": 0.2}.get(method),
            "train/entropy": 0.01 if method == "sft" else 0.2 - 0.002 * step, "train/response_len": 30.0, "time": step})
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if (method, seed) == ("pre", 2):
        text += '{"step": 21, "flo'  # a run being written ends in a partial line
    (d / "metrics.jsonl").write_text(text)
    counts = [min(N_FINAL, int(N_FINAL * SPEC[method][2] * (i + 1) / 8) + seed - 1) for i in range(8)]
    (d / "final_eval.json").write_text(json.dumps({"n": N_FINAL, "step": STEPS, "heldout_counts": counts, "train_counts": train_counts(counts)}))
    return counts


def train_counts(heldout_counts):
    return [min(N_FINAL, 2 * c + 1) for c in heldout_counts[::-1]]  # other numbers than held-out's


def expected(vals):
    m = float(np.mean(vals))
    return f"{m:.3f} ± {float(np.std(vals, ddof=1)):.3f}"


def passk(n, c, k):  # written out again here, not taken from utils
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def table_rows(md):
    rows = {}
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) >= 8 and cells[1].isdigit():
            rows.setdefault(cells[0], cells)  # the first table: one row per method
    return rows


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    counts = {(m, s): write_run(root, m, s) for m in SPEC for s in SEEDS}
    out = tmp_path_factory.mktemp("figs")
    figures, finish = {}, plot.finish

    def keep(plt, fig, axes, title, path, note=None):  # the figures' drawn data, read back by the tests
        figures[os.path.basename(path)] = (fig, list(np.ravel(axes)))
        return finish(plt, fig, axes, title, path, note)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plot, "finish", keep)
        assert plot.main(plot.Args(runs=(str(root),), out=str(out))) == 0
    return root, out, counts, figures


def drawn(ax):
    """{legend label: (x, y)} of an axis' labelled lines."""
    return {line.get_label(): (np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float))
            for line in ax.get_lines() if not line.get_label().startswith("_")}


def seeds_label(method):
    return f"{SPEC[method][4]} ({len(SEEDS)} seeds)"


def test_every_figure_draws_the_files_numbers(synthetic):
    """Each PNG is an image of its figure; the curves are the numbers in the run dirs, averaged over seeds."""
    import matplotlib.image

    _, out, counts, figures = synthetic
    names = ["fig1_reward_vs_flops", "fig2_passk_heldout", "fig3_entropy", "fig4_grad_norm_std", "fig5_prefix_length", "fig6_all_negative"]
    assert sorted(figures) == sorted(f"{n}.png" for n in names)
    for name, (fig, _) in figures.items():
        width, height = fig.get_size_inches() * 110
        assert matplotlib.image.imread(out / name).shape[:2] == (round(height), round(width)), name
    evals = range(0, STEPS + 1, EVERY)
    (train_ax, _, heldout_ax) = figures["fig1_reward_vs_flops.png"][1]
    for m, (_, _, _, offset, _) in SPEC.items():  # eval pass@1 against FLOPs: rejection sampling and SFT included
        flops = [offset + (10 * 1e10 if m == "sft" else 0) + t * step_flops(m) for t in evals]
        acc = [np.mean([train_acc(m, s, t) for s in SEEDS]) for t in evals]
        for ax, scale in [(train_ax, 1.0), (heldout_ax, 0.5)]:
            x, y = drawn(ax)[seeds_label(m)]
            np.testing.assert_allclose(x, flops, rtol=1e-12)
            np.testing.assert_allclose(y, np.array(acc) * scale, rtol=1e-12)
    for ax, key in zip(figures["fig2_passk_heldout.png"][1], ["heldout_counts", "train_counts"]):  # pass@k from final_eval.json
        for m in SPEC:
            per_seed = [counts[m, s] if key == "heldout_counts" else train_counts(counts[m, s]) for s in SEEDS]
            want = [np.mean([np.mean([passk(N_FINAL, c, k) for c in cs]) for cs in per_seed]) for k in range(1, N_FINAL + 1)]
            x, y = drawn(ax)[seeds_label(m)]
            assert x.tolist() == list(range(1, N_FINAL + 1))
            np.testing.assert_allclose(y, want, rtol=1e-12)
    x, y = drawn(figures["fig5_prefix_length.png"][1][0])[seeds_label("only")]  # step 0, by prefix length
    assert x.tolist() == [0, 0.2, 0.4, 0.6, 0.8]
    np.testing.assert_allclose(y, [np.mean([min(1.0, train_acc("only", s, 0) + f / 2) for s in SEEDS]) for f in x], rtol=1e-12)
    x, y = drawn(figures["fig6_all_negative.png"][1][0])[seeds_label("rl8")]  # rolling mean of 9 steps, centred
    raw = np.array([1.0 if step < 5 else 0.3 for step in range(STEPS)])
    assert x.tolist() == list(range(1, STEPS + 1))
    np.testing.assert_allclose(y, [raw[max(0, i - 4) : i + 5].mean() for i in range(STEPS)], rtol=1e-12)
    no_prefix = f"{SPEC['pre'][4]} (no-prefix rollouts) ({len(SEEDS)} seeds)"
    for name in ["fig3_entropy.png", "fig6_all_negative.png"]:  # every method, and PrefixRL's no-prefix rollouts apart
        assert {seeds_label(m) for m in SPEC} | {no_prefix} <= set(drawn(figures[name][1][0])), name
    assert {seeds_label(m) for m in ("rl8", "rl64", "sft", "off", "pre", "only")} <= set(drawn(figures["fig4_grad_norm_std.png"][1][0]))
    assert (out / "results.md").exists() and (out / "results.json").exists()


def test_results_numbers_match_the_files(synthetic):
    _, out, counts, _ = synthetic
    rows = table_rows((out / "results.md").read_text())
    assert set(rows) == {spec[4] for spec in SPEC.values()}
    target = np.mean([train_acc("sft", s, STEPS) for s in SEEDS])
    for m, (_, _, _, offset, label) in SPEC.items():
        cells = rows[label]
        assert cells[1] == str(len(SEEDS)) and cells[2] == str(STEPS)
        assert cells[4] == expected([train_acc(m, s, STEPS) for s in SEEDS])
        assert cells[5] == expected([train_acc(m, s, STEPS) / 2 for s in SEEDS])
        assert cells[6] == expected([min(1.0, 0.8 * train_acc(m, s, STEPS) + 0.05) for s in SEEDS])
        assert cells[7] == expected([np.mean([passk(N_FINAL, c, N_FINAL) for c in counts[m, s]]) for s in SEEDS])
        sft_flops = 10 * 1e10 if m == "sft" else 0.0
        reach = [offset + sft_flops + t * step_flops(m) for s in SEEDS
                 for t in [next((t for t in range(0, STEPS + 1, EVERY) if train_acc(m, s, t) >= target), None)] if t is not None]
        if not reach:
            assert cells[8] == "not reached"
        elif len(reach) == len(SEEDS):
            assert cells[8] == (f"{np.mean(reach):.3g} ± {np.std(reach, ddof=1):.3g}" if np.std(reach) > 0 else f"{np.mean(reach):.3g} ± 0")
        else:
            assert cells[8].endswith(f"({len(reach)}/{len(SEEDS)} seeds; others not reached)")


def test_claims_are_computed(synthetic):
    _, out, _, _ = synthetic
    md = (out / "results.md").read_text()
    final = {SPEC[m][4]: np.mean([train_acc(m, s, STEPS) for s in SEEDS]) for m in SPEC}
    order = ", ".join(f"{lab} {final[lab]:.3f}" for lab in ["RL n=8", "RL n=64", "SFT+RL", "PrefixRL"])
    assert "**supported** — Fig. 2/7: final no-prefix training accuracy" in md and order in md
    # back-generalization: prefixed-only no-prefix pass@1 from step 0 to the end
    start = expected([train_acc("only", s, 0) for s in SEEDS])
    assert f"no-prefix train pass@1 {start} -> {expected([train_acc('only', s, STEPS) for s in SEEDS])}" in md
    # Fig. 3 from the step-0 prefix evals: pass@1 rises with prefix length
    base = np.mean([train_acc("only", s, 0) for s in SEEDS])
    assert "step-0 pass@1 by prefix length: 0% " + f"{base:.3f}, 20% {base + 0.1:.3f}" in md
    data = json.loads((out / "results.json").read_text())
    assert {c["status"].split(" (")[0] for c in data[0]["claims"]} <= {"supported", "partly", "not supported", "not tested"}


def test_missing_final_eval_skips_passk(tmp_path, capsys):
    root = tmp_path / "runs"
    root.mkdir()
    for m in ("rl8", "pre"):
        write_run(root, m, 1)
        os.remove(root / f"{m}_s1" / "final_eval.json")
    starting = root / "just_started"  # a run that has written its args but no metric yet
    starting.mkdir()
    (starting / "args.json").write_text(json.dumps({"script": "sft_rl", "seed": 1, "hard_min": 7, "hard_max": 8, "trace_budget": 2048}))
    (starting / "metrics.jsonl").write_text("")
    plot.main(plot.Args(runs=(str(root / "*"),), out=str(tmp_path / "out")))
    assert "skipped fig2_passk_heldout.png" in capsys.readouterr().out
    assert not (tmp_path / "out" / "fig2_passk_heldout.png").exists()
    assert (tmp_path / "out" / "fig1_reward_vs_flops.png").exists()
    assert "| RL n=8 | 1 | 20 |" in (tmp_path / "out" / "results.md").read_text()


def test_settings_split_only_on_keys_that_apply_to_the_task():
    def run(**a):
        args = dict(script="prefixrl", seed=1, task="toy", level=3, hard_min=7, hard_max=8, **a)
        return rundirs.Run(path=f"r{len(a)}", args=args, rows=[], final_eval=None)

    toy_a, toy_b, hard = run(), run(), run()
    toy_b.args["level"] = 4  # --level is for --task arith: not a different toy setting
    hard.args["hard_min"] = 9
    assert [len(ms[0].runs) for _, ms in rundirs.group([toy_a, toy_b, hard])] == [2, 1]


# The claims on fabricated runs: eval rows every EVERY steps, each followed by a training row
def fake_run(script, pass1, flops_per_eval, offset=0.0, heldout=None, train=(), **args):
    rows = []
    for i, p in enumerate(pass1):
        flops = offset + i * flops_per_eval
        rows += [{"step": i * EVERY, "flops": flops, "eval/train_pass@1": p, "eval/heldout_pass@1": (heldout or pass1)[i]},
                 {"step": i * EVERY + 1, "flops": flops, **dict(train)}]
    return rundirs.Run(f"{script}_{len(args)}", dict(script=script, seed=1, **args), rows, None)


# the paper's regime: RL n=8 stuck, RL n=64 a little better, PrefixRL well ahead (on the FLOPs axis too)
REGIME = {
    "rl8": dict(script="standard_rl", rollouts=8, pass1=[0, .05, .08, .1, .12], flops_per_eval=1e11,
                train={"train/all_negative_frac": .8, "train/entropy": .3, "train/grad_norm": 0.0}),
    "rl64": dict(script="standard_rl", rollouts=64, pass1=[0, .1, .2, .3, .4], flops_per_eval=4e11),
    "pre": dict(script="prefixrl", pass1=[0, .3, .5, .6, .7], flops_per_eval=5e10, offset=5e10,
                train={"train/all_negative_frac": .1, "train/all_negative_frac_no_prefix": .4, "train/entropy": .25,
                       "train/entropy_no_prefix": .28, "train/grad_norm": .2, "train/grad_std": .1}),
    "other": dict(script="prefixrl", traces="/cache/toy-gpt2.json", pass1=[0, .2, .4, .6, .65], heldout=[0, .1, .2, .3, .68],
                  flops_per_eval=5e10, offset=5e10),
    "off": dict(script="offpolicy_rl", pass1=[0, .1, .2, .3, .35], flops_per_eval=1e11, offset=5e10,
                train={"train/grad_norm": .5, "train/grad_std": .3, "train/max_is_weight": 1.9}),
}
REGIME_CLAIMS = [claims.claim_rl8_stays_low, claims.claim_rl64_between, claims.claim_prefixrl_solves_most,
                 claims.claim_heldout_above_rl, claims.claim_ahead_on_flops]


def regime_methods(**changes):
    """REGIME's methods, with changes[method] replacing its fields (a training metric set to None is not logged)."""
    runs = []
    for m, spec in REGIME.items():
        change = changes.get(m, {})
        train = {k: v for k, v in {**spec.get("train", {}), **change.get("train", {})}.items() if v is not None}
        runs.append(fake_run(**{**spec, **change, "train": train}))
    (_, methods), = rundirs.group(runs)
    return methods


def test_regime_claims_supported():
    methods = regime_methods()
    assert [m.label for m in methods] == ["RL n=8", "RL n=64", "Off-policy RL", "PrefixRL", "PrefixRL, other-family traces"]
    cast = claims.Cast.of(methods)
    for claim in REGIME_CLAIMS + [claims.claim_other_family, claims.claim_fewer_all_negative]:
        assert claim(cast)[1] == "supported", claim(cast)
    _, _, measured = claims.claim_other_family(cast)
    assert ("final train pass@1: own traces 0.700, PrefixRL, other-family traces 0.650; "
            "final held-out pass@1: own traces 0.700, PrefixRL, other-family traces 0.680") in measured
    _, _, measured = claims.claim_grad_norm_and_std(cast)
    assert ("grad norm PrefixRL max 0.2, median 0.2 (max/median 1.0), Off-policy RL max 0.5, median 0.5 (max/median 1.0); "
            "mean grad std PrefixRL 0.1, Off-policy RL 0.3; largest importance weight of Off-policy RL's trace tokens 1.9") in measured



def write_runs(root, runs):
    """Fabricated runs as run dirs (args.json, metrics.jsonl) under root, for plot.main."""
    root.mkdir()
    for i, run in enumerate(runs):
        d = root / f"{i}_{run.args['script']}"
        d.mkdir()
        (d / "args.json").write_text(json.dumps(run.args))
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in run.rows))


def test_standard_rl_on_other_family_traces_is_a_method_of_its_own(tmp_path):
    """standard_rl --traces FILE trains on the pool of problems another model family traced: it is
    drawn and listed as "RL n=8, other-family traces", and the claims compare PrefixRL with standard
    RL on its own pool (RL n=8 and RL n=64), never with it."""
    other_rl = dict(REGIME["rl8"], traces="/cache/toy-gpt2.json", pass1=[0, .3, .5, .7, .9])
    runs = [fake_run(**spec) for spec in [*REGIME.values(), other_rl]]
    write_runs(tmp_path / "runs", runs)
    assert plot.main(plot.Args(runs=(str(tmp_path / "runs"),), out=str(tmp_path / "figs"))) == 0
    results = (tmp_path / "figs" / "results.md").read_text()
    assert "| RL n=8, other-family traces | 1 | 20 |" in results
    (_, methods), = rundirs.group(runs)
    cast = claims.Cast.of(methods)
    assert (cast.rl8.label, cast.rl64.label) == ("RL n=8", "RL n=64")
    for claim in REGIME_CLAIMS:
        assert claim(cast)[1] == "supported", claim(cast)
    # with standard RL on its own pool at n=16 only, that run is the RL baseline, not the other one
    alone = [dict(REGIME["rl8"], rollouts=16), other_rl, REGIME["pre"]]
    (_, methods), = rundirs.group([fake_run(**spec) for spec in alone])
    cast = claims.Cast.of(methods)
    assert cast.rl8.label == "RL n=16" and cast.rl64 is None

@pytest.mark.parametrize("claim, changes, status, measured", [
    (claims.claim_rl8_stays_low, {"rl8": {"pass1": [0, .1, .2, .3, .1]}}, "partly", "highest eval train pass@1 (mean over seeds) 0.300"),
    (claims.claim_rl8_stays_low, {"rl8": {"train": {"train/all_negative_frac": .4}}}, "partly", "over the whole run 0.400 ('most' = above 0.5)"),
    (claims.claim_rl64_between, {"rl64": {"pass1": [0, .1, .2, .3, .6]}}, "partly", "RL n=64 0.600, PrefixRL 0.700 ('well below' = at most 0.67"),
    (claims.claim_prefixrl_solves_most, {"pre": {"pass1": [0, .1, .2, .3, .4]}}, "partly", "PrefixRL 0.400, RL n=8 0.120"),
    # >= 3x, but at more FLOPs than standard RL spent: not a like-for-like final
    (claims.claim_prefixrl_solves_most, {"pre": {"flops_per_eval": 5e12}}, "partly", "final FLOPs: PrefixRL 2e+13, RL n=8"),
    (claims.claim_heldout_above_rl, {"rl64": {"heldout": [0, .1, .2, .3, .8]}}, "partly", "PrefixRL 0.700, RL n=8 0.120, RL n=64 0.800"),
    (claims.claim_ahead_on_flops, {"pre": {"pass1": [0, .02, .5, .6, .7]}}, "partly", "vs RL n=8: ahead at 3/4 points compared, 0 beyond"),
    (claims.claim_ahead_on_flops, {"pre": {"flops_per_eval": 3e11}}, "partly", "vs RL n=8: ahead at 1/1 points compared, 3 beyond"),
    # like with like: PrefixRL's no-prefix rollouts against standard RL's, though its plain keys (all rollouts) would pass
    (claims.claim_fewer_all_negative, {"pre": {"train": {"train/all_negative_frac_no_prefix": .9}}}, "not supported",
     "PrefixRL (no-prefix rollouts) 0.900, RL n=8 0.800"),
    (claims.claim_entropy, {"pre": {"train": {"train/entropy_no_prefix": .01}}}, "not supported",
     "PrefixRL (no-prefix rollouts) 0.010, RL n=8 0.300"),
    # an older run without the no-prefix key: the plain key, and a note
    (claims.claim_fewer_all_negative, {"pre": {"train": {"train/all_negative_frac_no_prefix": None}}}, "supported",
     "1/1 run(s) log no train/all_negative_frac_no_prefix (older runs): all rollouts there, prefixed ones included) 0.100"),
])
def test_claims_on_fabricated_runs(claim, changes, status, measured):
    got = claim(claims.Cast.of(regime_methods(**changes)))
    assert got[1].split(" (as far as tested")[0] == status and measured in got[2], got


def test_no_prefix_series_drawn_for_prefixrl(monkeypatch, tmp_path):
    drawn, notes = [], []
    monkeypatch.setattr(plot, "draw", lambda ax, m, c, ls: drawn.append((m.label, ls)))
    monkeypatch.setattr(plot, "finish", lambda plt, fig, axes, title, path, note: notes.append(note))
    plot.fig_over_steps(plot._plt(), regime_methods(), tmp_path, plot.Args(smooth=1), [("train/entropy", "", "")], "", "f.png", no_prefix_too=True)
    assert drawn == [("RL n=8", "-"), ("PrefixRL", "-"), ("PrefixRL (no-prefix rollouts)", ":")]
    assert notes[0].endswith(plot.NO_PREFIX_NOTE)


def test_reproduce_dry_run_lists_the_commands(tmp_path, capsys):
    out = tmp_path / "repro"
    assert reproduce.main(reproduce.Args(out=str(out), seeds=2, jobs=2, steps=30, extra="--hard-min 9 --hard-max 9", dry_run=True)) == 0
    lines = capsys.readouterr().out.splitlines()
    cmds = [ln.split("  > ")[0] for ln in lines if ln.startswith("python ") and "plot.py" not in ln]
    traces = f"{out}/traces/toy-gpt2.json"
    flags = {"prefixrl": "prefixrl.py --steps 500 ", "rl_n8": "standard_rl.py --steps 800 --eval-every 40 ",
             "rl_n64": "standard_rl.py --rollouts 64 --prompts-per-step 2 --steps 800 --eval-every 40 ",
             "sft_rl": "sft_rl.py", "offpolicy_rl": "offpolicy_rl.py", "prefixrl_prefixed_only": "prefixrl.py --steps 500 --prefixed-only ",
             "prefixrl_other_family": f"prefixrl.py --steps 500 --traces {traces} "}
    want = []
    for s in (1, 2):
        for m, f in flags.items():
            script, _, extra = f.partition(" ")
            want.append(f"python {script} --seed {s} --threads 1 --run-dir {out}/runs/{m}_s{s} {extra}--steps 30 --hard-min 9 --hard-max 9")
    want[0] = want[0].replace("--threads 1", "--threads 2")  # the first run is alone and gets every core (--jobs)
    # the other family's traces right after it, the runs that need them last
    other = [w for w in want if "--traces" in w]
    want = [w for w in want if "--traces" not in w]
    want = want[:1] + [f"python reproduce.py --collect-traces-to {traces} '--extra=--hard-min 9 --hard-max 9'"] + want[1:] + other
    assert cmds == want
    assert lines[0].startswith("# first, alone") and lines[2].startswith("# then, 2 at a time")
    assert lines[-1] == f"python plot.py {out}/runs --out {out}/figures"


def test_reproduce_runs_other_seeds_from_first_seed(tmp_path, capsys):
    out = tmp_path / "repro"
    reproduce.main(reproduce.Args(out=str(out), seeds=2, first_seed=4, methods=("prefixrl",), dry_run=True))
    cmds = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("python prefixrl.py")]
    assert [c.split(" --threads")[0] + c.split("--run-dir")[1].split()[0][-12:] for c in cmds] == [
        "python prefixrl.py --seed 4/prefixrl_s4", "python prefixrl.py --seed 5/prefixrl_s5"]
    with pytest.raises(InputError, match="--first-seed must be in 0..2"):
        reproduce.main(reproduce.Args(out=str(out), first_seed=-1, dry_run=True))


def test_reproduce_skips_finished_runs(tmp_path, capsys):
    out = tmp_path / "repro"
    done = out / "runs" / "rl_n8_s1"
    done.mkdir(parents=True)
    (done / "args.json").write_text(json.dumps({"steps": 3}))
    (done / "metrics.jsonl").write_text(json.dumps({"step": 3, "flops": 1.0, "eval/train_pass@1": 0.5}) + "\n")
    reproduce.main(reproduce.Args(out=str(out), seeds=1, methods=("prefixrl", "rl_n8"), dry_run=True))
    text = capsys.readouterr().out
    assert "# rl_n8_s1: finished already" in text and "python standard_rl.py" not in text
    assert [ln for ln in text.splitlines() if ln.startswith("python prefixrl.py")]
    # an unfinished run with a checkpoint continues with --resume
    (out / "runs" / "prefixrl_s1").mkdir()
    (out / "runs" / "prefixrl_s1" / "checkpoint.pt").write_text("")
    reproduce.main(reproduce.Args(out=str(out), seeds=1, methods=("prefixrl",), dry_run=True))
    threads = max(1, reproduce.Args().jobs)  # the first run is alone and gets every core
    assert f"python prefixrl.py --resume {out}/runs/prefixrl_s1 --threads {threads}" in capsys.readouterr().out


FAKE_SCRIPT = """
import json, os, sys
a = sys.argv[1:]
run_dir, seed = a[a.index("--run-dir") + 1], int(a[a.index("--seed") + 1])
if seed == 2 and "--rollouts" in a:
    sys.exit(3)
os.makedirs(run_dir)
json.dump({"script": os.path.basename(sys.argv[0])[:-3], "seed": seed, "steps": 1, "rollouts": 8}, open(os.path.join(run_dir, "args.json"), "w"))
with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
    for s in (0, 1):
        f.write(json.dumps({"step": s, "flops": s * 1e9, "eval/train_pass@1": 0.1 * s * seed, "eval/heldout_pass@1": 0.0, "eval/heldout_pass@8": 0.0}) + "\\n")
"""


def test_reproduce_runs_first_alone_then_the_rest_then_plots(tmp_path, monkeypatch, capsys):
    """The whole flow with stand-in scripts that write a tiny run (no training): order, progress, failures, figures."""
    for name in ("prefixrl", "standard_rl"):
        (tmp_path / f"{name}.py").write_text(FAKE_SCRIPT)
    monkeypatch.setattr(reproduce, "ROOT", str(tmp_path))
    monkeypatch.setattr(reproduce, "POLL_S", 0.05)
    out = tmp_path / "repro"
    rc = reproduce.main(reproduce.Args(out=str(out), seeds=2, methods=("prefixrl", "rl_n64"), jobs=2))
    text = capsys.readouterr().out
    assert rc == 1  # rl_n64_s2 fails (exit 3): reported, the others still run and are plotted
    assert text.index("started prefixrl_s1") < text.index("[1/4] prefixrl_s1 done") < text.index("started rl_n64_s1")
    assert "rl_n64_s2 FAILED (exit 3)" in text and "train pass@1 0.200" in text
    assert (out / "figures" / "results.md").exists() and (out / "figures" / "fig1_reward_vs_flops.png").exists()
    # run again: the finished runs are kept, the failed one is run again
    monkeypatch.setattr(plot, "main", lambda args: 0)
    reproduce.main(reproduce.Args(out=str(out), seeds=2, methods=("prefixrl", "rl_n64"), jobs=2))
    text = capsys.readouterr().out
    assert text.count("finished already") == 3 and "started rl_n64_s2" in text


def test_reproduce_runs_a_job_only_after_the_job_it_needs(tmp_path, capsys):
    def job(name, code, needs=None):
        return reproduce.Job(name, ["python", "-c", code], None, str(tmp_path / f"{name}.log"), needs=needs)

    order = tmp_path / "order"
    write = "import time; time.sleep({}); open(r'%s', 'a').write('{} ')" % order
    jobs = [job("late", write.format(0, "late"), needs="traces"), job("traces", write.format(1.5, "traces")),
            job("bad", "raise SystemExit(3)"), job("orphan", write.format(0, "orphan"), needs="bad")]
    failed = reproduce.run_pool(jobs, 2, sys.executable, [0, len(jobs)])
    assert sorted(failed) == ["bad", "orphan"] and order.read_text().split() == ["traces", "late"]
    assert "orphan not run: bad failed" in capsys.readouterr().out


def test_reproduce_runs_the_jobs_that_need_the_first_one_after_it(tmp_path, monkeypatch, capsys):
    # only the other family's runs to do: its traces job runs first, alone, and they must start after it
    # (they waited forever when the second pool did not know the first had finished)
    monkeypatch.setattr(reproduce, "run_pool", lambda jobs, width, python, counter, done=(): calls.append(
        ([j.name for j in jobs], [j.needs for j in jobs], list(done))) or [])
    monkeypatch.setattr(plot, "main", lambda args: 0)
    calls = []
    # another trace budget than the shipped collection's: the other family's traces are collected, not copied
    reproduce.main(reproduce.Args(out=str(tmp_path / "out"), seeds=1, methods=("prefixrl_other_family",), jobs=2, extra="--trace-budget 64"))
    (first, _, _), (rest, needs, done) = calls
    assert first == ["traces_toy-gpt2"] and rest == ["prefixrl_other_family_s1"] and needs[0] in done


def test_reproduce_copies_the_shipped_other_family_traces_for_the_default_problems(tmp_path, monkeypatch, capsys):
    """The default problems' other-family collection ships in toy_models/: copied, byte for byte, and no job
    collects it; any other collection (here another trace seed) is a job again."""
    monkeypatch.setattr(reproduce, "run_pool", lambda jobs, width, python, counter, done=(): calls.append([j.name for j in jobs]) or [])
    monkeypatch.setattr(plot, "main", lambda args: 0)
    calls, out = [], tmp_path / "out"
    reproduce.main(reproduce.Args(out=str(out), seeds=1, methods=("prefixrl", "prefixrl_other_family"), jobs=2))
    assert calls == [["prefixrl_s1"], ["prefixrl_other_family_s1"]]
    with open(out / "traces" / "toy-gpt2.json", "rb") as f, open(os.path.join(reproduce.ROOT, reproduce.SHIPPED_OTHER_TRACES), "rb") as g:
        assert f.read() == g.read()
    assert "# the other family's traces: toy_models/toy-gpt2/traces.json, copied to" in capsys.readouterr().out
    calls.clear()
    reproduce.main(reproduce.Args(out=str(tmp_path / "other"), seeds=1, methods=("prefixrl", "prefixrl_other_family"), jobs=2, extra="--trace-seed 1"))
    assert calls == [["prefixrl_s1"], ["traces_toy-gpt2", "prefixrl_other_family_s1"]]


# BENCH/TAKEOFF.PY: per family, the first success and the take-off, from groups.jsonl
def load_takeoff():
    return load_script("bench/takeoff.py")


def test_takeoff_is_the_first_window_at_the_rate_and_counts_the_successes_before_it():
    takeoff = load_takeoff().takeoff
    # 8 rollouts, 2-group window, rate 0.25: 4 successes in 2 consecutive groups; groups 4-5 hold 3 + 4
    assert takeoff([0, 0, 1, 0, 3, 4, 8], 8, 2, 0.25) == (5, 1)
    assert takeoff([0, 0, 1, 0, 3, 0, 3], 8, 2, 0.25) is None
    assert takeoff([8], 8, 2, 0.25) is None  # fewer groups than the window


def test_takeoff_counts_no_prefix_groups_only(tmp_path):
    """A family's prefixed groups (PrefixRL) succeed often; only its groups without a prefix say whether
    it takes off; runs are read per family of the toy task in args.json."""
    takeoff = load_takeoff()
    settings = dict(task="toy", dataset=None, toy_length=12, hard_min=1, hard_max=4, n_train=4, n_heldout=4, task_seed=0)
    train = tasks.make_toy_task(*(settings[k] for k in ("toy_length", "hard_min", "hard_max", "n_train", "n_heldout", "task_seed"))).train
    (tmp_path / "args.json").write_text(json.dumps(settings))
    a, b = train[0], next(p for p in train if p.meta["family"] != train[0].meta["family"])
    rows = [{"step": s, "rollouts": 4, "problems": [a.id, a.id, b.id], "successes": [4, 1 if s == 3 else 0, 0],
             "prefix_tokens": [5, 0, 0]} for s in range(1, 11)]
    rows += [{"step": s, "rollouts": 4, "problems": [a.id, b.id, b.id], "successes": [3, 0, s % 2], "prefix_tokens": [0, 0, 7]}
             for s in range(11, 21)]
    (tmp_path / "groups.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    units = takeoff.analyse(takeoff.read_groups(str(tmp_path)), takeoff.unit_of(str(tmp_path), "family"), 5, 0.25, 0.2)
    fa, fb = f"F{a.meta['family']}", f"F{b.meta['family']}"
    assert units[fa] == dict(first=3, took=(12, 1), final=0.75, successes=31, final_prefixed=None)  # its prefixed groups all early
    assert units[fb] == dict(first=None, took=None, final=0.0, successes=0, final_prefixed=0.125)  # steps 17-20: 2 of 16


def test_takeoff_names_a_run_without_groups_or_families(tmp_path):
    takeoff = load_takeoff()
    with pytest.raises(InputError) as e:
        takeoff.read_groups(str(tmp_path))
    assert "groups.jsonl' does not exist" in str(e.value)
    settings = dict(task="toy", dataset=None, toy_length=12, hard_min=1, hard_max=4, n_train=4, n_heldout=4, task_seed=0)
    (tmp_path / "args.json").write_text(json.dumps(settings))
    with pytest.raises(InputError, match="problem toy:F7:0:1 of its groups.jsonl is not a training problem"):
        takeoff.unit_of(str(tmp_path), "family")("toy:F7:0:1")
    (tmp_path / "args.json").write_text(json.dumps({"task": "arith", "dataset": None}))
    with pytest.raises(InputError) as e:
        takeoff.unit_of(str(tmp_path), "family")
    assert "not a --task toy run" in str(e.value)


def test_a_run_recording_the_shipped_pretraining_steps_groups_with_one_recording_0():
    # --toy-pretrain-steps 0 means the shipped model's count; runs made before recorded the count itself
    for model in ("toy", "toy-gpt2"):
        steps = rundirs.setting_value(dict(task="toy", model=model, toy_pretrain_steps=0), "toy_pretrain_steps")
        assert steps == models.TOY_PRETRAIN_STEPS[model]
    assert rundirs.setting_value(dict(task="toy", model="toy", toy_pretrain_steps=200), "toy_pretrain_steps") == 200
