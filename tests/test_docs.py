"""The teaching pages are generated from the code and must be current: docs/worked-example.md and docs/diffs.md;
docs/default-toy records the checksums of the runs its results came from."""

import itertools
import json
import os
import random
import re

import pytest
from conftest import ROOT, load_script

worked_example, diffs = load_script("docs/worked_example.py"), load_script("docs/diffs.py")


def test_worked_example_page_is_current():
    with open(worked_example.OUT) as f:
        assert worked_example.render() == f.read(), "docs/worked-example.md is out of date: run python docs/worked_example.py --write"


def test_diffs_page_is_current():
    with open(diffs.OUT) as f:
        assert diffs.render() == f.read(), "docs/diffs.md is out of date: run python docs/diffs.py"


def test_each_diff_against_standard_rl_stays_small():
    base = diffs.read(diffs.BASE).splitlines()
    for script in diffs.SCRIPTS:
        changed = sum(tag != " " for tag, _ in diffs.shortest_diff(base, diffs.read(script).splitlines()))
        bound = diffs.MAX_CHANGED[script]
        assert changed <= bound, f"diff {diffs.BASE} {script}: {changed} changed lines, > {bound}"
    assert diffs.MAX_CHANGED["prefixrl.py"] <= 70  # the bound the project states for PrefixRL


def test_a_hunk_without_a_note_stops_the_page():
    texts = {name: diffs.read(name) for name in (diffs.BASE, *diffs.SCRIPTS)}
    assert texts["prefixrl.py"].count("        optimizer.step()\n") == 1
    texts["prefixrl.py"] = texts["prefixrl.py"].replace("        optimizer.step()\n", "        optimizer.step()\n        print('a change no note describes')\n")
    with pytest.raises(diffs.NoteError, match="prefixrl.py hunk .* has no note"):
        diffs.render(texts)


def test_a_note_whose_phrase_left_the_diff_stops_the_page():
    texts = {name: diffs.read(name) for name in (diffs.BASE, *diffs.SCRIPTS)}
    texts["prefixrl.py"] = texts["prefixrl.py"].replace("# THE PREFIX MASK:", "# THE MASK:")
    with pytest.raises(diffs.NoteError, match="'THE PREFIX MASK' matches no hunk"):
        diffs.render(texts)


def test_shortest_diff_turns_a_into_b_with_the_fewest_changed_lines():
    rng = random.Random(0)
    for _ in range(200):
        a, b = ([rng.choice("xyz") for _ in range(rng.randint(0, 7))] for _ in range(2))
        ops = diffs.shortest_diff(a, b)
        assert [line for tag, line in ops if tag != "+"] == a and [line for tag, line in ops if tag != "-"] == b
        # the longest common subsequence by brute force: the kept lines can be no more
        longest = max(k for k in range(len(a) + 1) for sub in itertools.combinations(a, k) if is_subsequence(sub, b))
        assert sum(tag == " " for tag, _ in ops) == longest


def is_subsequence(sub, seq):
    it = iter(seq)
    return all(x in it for x in sub)


def test_default_toy_checksums_cover_every_run_of_its_results():
    """docs/default-toy/runs.sha256 holds, in `sha256sum` format, the metrics.jsonl and final_eval.json of
    every run that results.json was drawn from: a reproduction elsewhere is checked byte for byte with
    `sha256sum -c --ignore-missing docs/default-toy/runs.sha256`."""
    folder = os.path.join(ROOT, "docs", "default-toy")
    with open(os.path.join(folder, "runs.sha256")) as f:
        lines = f.read().splitlines()
    listed = [re.fullmatch(r"[0-9a-f]{64}  (\S+)", line) for line in lines]
    assert all(listed), f"not a sha256sum line: {lines[listed.index(None)]!r}"
    listed = {m.group(1) for m in listed}
    with open(os.path.join(folder, "results.json")) as f:
        runs = {run["run"] for setting in json.load(f) for seeds in setting["methods"].values() for run in seeds}
    assert runs
    missing = sorted(f"{r}/{name}" for r in runs for name in ("metrics.jsonl", "final_eval.json")
                     if f"{r}/{name}" not in listed)
    assert not missing, f"docs/default-toy/runs.sha256 lacks {missing}: run sha256sum on the runs of results.json"
