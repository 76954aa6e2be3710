"""The toy base models shipped in toy_models/: the bytes recorded, the calibration recorded, loaded with no
pretraining; and the command that remakes them runs."""

import json
import os
import subprocess
import sys

import pytest

import models
import tasks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("name", list(models.TOY_MODELS))
def test_shipped_toy_model_matches_its_checksum_and_calibration(name, tmp_path):
    path = os.path.join(models.SHIPPED, name)
    assert models.file_sha256(os.path.join(path, "model.safetensors")) == models.shipped_checksums()[f"{name}/model.safetensors"]
    with open(os.path.join(path, "prefixrl_toy.json")) as f:
        made = json.load(f)
    assert (made["steps"], made["seed"], made["toy_steps"], made["rules"]) == (models.TOY_PRETRAIN_STEPS[name], 0, tasks.TOY_LENGTH, tasks.RULES)
    cache = tmp_path / "empty-cache"
    model, _, model_id = models.load_model(name, str(cache), "cpu")  # the scripts' defaults
    assert not cache.exists()  # loaded from the repo: nothing pretrained, nothing cached
    # named by the recorded checksum, not the checkout's path: trace caches and files carry over
    assert model_id == f"{name}@sha256:{models.shipped_checksums()[f'{name}/model.safetensors'][:16]}"
    calibration = models.calibration_summary(model)
    assert calibration == pytest.approx(made["calibration"], rel=1e-4, abs=1e-6)
    assert 0.4 < calibration["p_right_hard"] < 0.6 and calibration["p_right_easy"] > 0.95  # the rule-or-decoy coin


def test_pretrain_command_remakes_a_model(tmp_path):
    out = tmp_path / "toy"
    cmd = [sys.executable, "models.py", "pretrain", "--name", "toy-gpt2", "--steps", "3", "--out", str(out), "--threads", "1"]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, timeout=300)
    with open(out / "prefixrl_toy.json") as f:
        made = json.load(f)
    assert made["steps"] == 3 and made["name"] == "toy-gpt2" and set(made["calibration"]) >= {"p_right_hard", "exact_pass1"}
    assert models.shipped_toy_dir("toy-gpt2", 3, 0, tasks.TOY_LENGTH) is None  # another recipe is never taken for the shipped one
    bad = subprocess.run([sys.executable, "models.py", "pretrian"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "usage: python models.py pretrain" in bad.stderr
