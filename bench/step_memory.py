"""Step time and peak memory of one of the four scripts, as the script itself runs: the script runs in
this process with the flags given after it; afterwards this prints the seconds per RL step (from the
run's time.jsonl, steps after the first, which holds the first evaluation) and, on CUDA, the peak
memory PyTorch allocated and reserved over the whole run (trace collection and evaluation included),
to compare with the estimate the script printed at start-up (above it in the output).

    python bench/step_memory.py standard_rl.py --model smollm2-135m --task arith --level 4 \\
        --prompts-per-step 128 --rollouts 8 --max-new-tokens 256 --steps 4 --device cuda

The run dir (--run-dir, or the script's default) keeps metrics.jsonl and time.jsonl as usual.
"""

import json
import os
import runpy
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ("prefixrl.py", "standard_rl.py", "sft_rl.py", "offpolicy_rl.py")


def main(argv):
    if not argv or os.path.basename(argv[0]) not in SCRIPTS:
        print(f"error: give one of {', '.join(SCRIPTS)}, then its flags: python bench/step_memory.py SCRIPT [FLAGS]", file=sys.stderr)
        sys.exit(2)
    script = os.path.join(ROOT, os.path.basename(argv[0]))
    flags = argv[1:]
    if "--run-dir" not in flags:
        flags += ["--run-dir", os.path.join("runs", f"step_memory__{os.path.basename(script)[:-3]}")]
    run_dir = flags[flags.index("--run-dir") + 1]
    sys.argv, sys.path[0] = [script] + flags, ROOT
    try:
        runpy.run_path(script, run_name="__main__")
    finally:  # a run stopped early (a signal, a timeout) still reports the steps it took
        report(script, run_dir)


def report(script, run_dir):
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        gb = 1e9
        print(f"peak CUDA memory over the run: allocated {torch.cuda.max_memory_allocated() / gb:.1f} GB, "
              f"reserved {torch.cuda.max_memory_reserved() / gb:.1f} GB ({torch.cuda.get_device_name()})")
    if not os.path.exists(os.path.join(run_dir, "time.jsonl")):
        return print(f"{os.path.basename(script)}: no step was taken")
    with open(os.path.join(run_dir, "time.jsonl")) as f:
        times = [row["time"] for row in map(json.loads, f) if "time" in row]
    per_step = np.diff(times)
    print(f"\n{os.path.basename(script)}: {len(times)} steps; seconds per step after the first: "
          + (f"median {np.median(per_step):.2f}, min {per_step.min():.2f}, max {per_step.max():.2f}" if len(per_step) else "n/a (one step)"))


if __name__ == "__main__":
    main(sys.argv[1:])
