import importlib.util
import json
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import models  # noqa: E402
import tasks  # noqa: E402
import utils  # noqa: E402

SMOKE_TASK = dict(hard_min=1, hard_max=4, n_train=4, n_heldout=4, task_seed=0)


@pytest.fixture(scope="session")
def toy_cache(tmp_path_factory):
    """A cache dir holding a barely pretrained toy base model (20 steps): enough to run the code.
    $PREFIXRL_TEST_CACHE names one to reuse (tests/mutation.py gives all its pytest runs the same)."""
    torch.set_num_threads(2)
    cache = os.environ.get("PREFIXRL_TEST_CACHE") or str(tmp_path_factory.mktemp("cache"))
    models.toy_model_dir(cache, pretrain_steps=20, seed=0)
    return cache


@pytest.fixture(scope="session")
def teacher_traces(tmp_path_factory):
    """A traces file with the exact solutions of the smoke task's training problems, so the smoke
    runs do not depend on how well a 20-step model samples."""
    task = tasks.make_toy_task(tasks.TOY_LENGTH, SMOKE_TASK["hard_min"], SMOKE_TASK["hard_max"], SMOKE_TASK["n_train"],
                               SMOKE_TASK["n_heldout"], SMOKE_TASK["task_seed"])
    traces = {}
    for p in task.train:
        ids = tasks.toy_solution_ids(*tasks.toy_solve(p.meta["params"]))
        traces[p.id] = utils.Trace(p.id, ids, task.decode(ids), 1, 1.0, [-0.1] * len(ids))
    path = str(tmp_path_factory.mktemp("traces") / "teacher.json")
    utils.save_traces(path, {"source": "teacher"}, traces, {pid: 1 for pid in traces}, {pid: 1.0 for pid in traces})
    return path


def read_metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def load_script(path):
    """A script of bench/ or docs/ (not packages) as a module, e.g. load_script("bench/takeoff.py")."""
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
