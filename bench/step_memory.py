"""Step time and peak memory of one of the four scripts, as the script itself runs: the script runs in
this process with the flags given after it; afterwards this prints the seconds per RL step (from the
run's time.jsonl, steps after the first, which holds the first evaluation) and, on CUDA, the peak
memory PyTorch allocated and reserved over the whole run (trace collection and evaluation included),
to compare with the estimate the script printed at start-up (above it in the output). Each step's
seconds split into rollouts (sampling and scoring) and training. A run killed before it reports (a
second signal, SIGKILL) leaves the peaks so far in RUN_DIR/peak_memory.json, rewritten every 10 s.

    python bench/step_memory.py standard_rl.py --model smollm2-135m --task arith --level 4 \\
        --prompts-per-step 128 --rollouts 8 --max-new-tokens 256 --steps 4 --device cuda

The run dir (--run-dir, or the script's default) keeps metrics.jsonl and time.jsonl as usual.
"""

import json
import os
import runpy
import sys
import threading
import time

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
    threading.Thread(target=record_peaks, args=(run_dir,), daemon=True).start()
    try:
        runpy.run_path(script, run_name="__main__")
    finally:  # a run stopped early (a signal, a timeout) still reports the steps it took
        report(script, run_dir)


def peaks():
    """{allocated, reserved}: PyTorch's peak CUDA memory so far, GB; None before CUDA is in use."""
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return None
    return dict(allocated=torch.cuda.max_memory_allocated() / 1e9, reserved=torch.cuda.max_memory_reserved() / 1e9)


def record_peaks(run_dir, every=10.0):
    """RUN_DIR/peak_memory.json, rewritten every `every` seconds (a daemon thread): what report() would print."""
    while True:
        time.sleep(every)
        if peaks() and os.path.isdir(run_dir):
            with open(os.path.join(run_dir, "peak_memory.json"), "w") as f:
                json.dump(peaks(), f)


def report(script, run_dir):
    if peaks():
        print(f"peak CUDA memory over the run: allocated {peaks()['allocated']:.1f} GB, "
              f"reserved {peaks()['reserved']:.1f} GB ({torch.cuda.get_device_name()})")
    if not os.path.exists(os.path.join(run_dir, "time.jsonl")):
        return print(f"{os.path.basename(script)}: no step was taken")
    with open(os.path.join(run_dir, "time.jsonl")) as f:
        rows = [row for row in map(json.loads, f) if "time" in row]
    per_step = np.diff([row["time"] for row in rows])
    split = {k[5:]: [row[k] for row in rows if k in row][1:] for k in ("time_rollouts", "time_training")}
    split = "".join(f"; {k} {np.median(v):.2f}" for k, v in split.items() if v)
    print(f"\n{os.path.basename(script)}: {len(rows)} steps; seconds per step after the first: "
          + (f"median {np.median(per_step):.2f}, min {per_step.min():.2f}, max {per_step.max():.2f}{split} (medians)"
             if len(per_step) else "n/a (one step)"))


if __name__ == "__main__":
    main(sys.argv[1:])
