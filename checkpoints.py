"""Checkpoints for the four scripts: --save-every, --resume, SIGINT/SIGTERM; exact continuation on CPU."""

import glob
import json
import math
import os
import random
import shutil
import signal
import sys
import threading

import numpy as np
import torch

from utils import CHECKPOINT, POLICY_DIR, InputError, Stopped, close_progress_bars, write_atomic


# CHECKPOINTS: --save-every, --resume, SIGINT/SIGTERM
ROW_FILES = ("metrics.jsonl", "time.jsonl", "groups.jsonl")
"""the run's append-only logs, cut back to the checkpoint on --resume"""


class Checkpoints:
    """One checkpoint file per run, RUN_DIR/checkpoint.pt, replaced atomically. A checkpoint at step s
    is taken after training step s (its metrics row logged) and before the evaluation at s. It holds
    the `state` objects (model, optimizers, the loop's numpy and torch Generators), the global RNGs
    (python, numpy, torch CPU, CUDA), the loop's counters (step, FLOPs...) and how many rows
    each of ROW_FILES had, so a resume drops the rows logged after it and logs them again: on CPU the
    resumed run's metrics.jsonl and groups.jsonl are byte for byte the uninterrupted run's.

    Written at step 0, every --save-every steps, at the last step, and when SIGINT or SIGTERM
    arrives after an update that no checkpoint holds: the loop finishes its step, saves, and the
    process exits with 128 + the signal (130 / 143); a second signal acts at once. With no update
    since the last checkpoint (in an evaluation, the final one included, or a step before its
    update) the signal stops the run at once (utils.Stopped): the checkpoint holds all its work.
    check_finite, called before each update, marks one. A non-finite loss or gradient norm stops
    the run before the update, with the last good checkpoint kept. --resume of a run stopped before
    its first checkpoint starts it again."""

    FORMAT = "prefixrl-checkpoint-v1"

    def __init__(self, run_dir: str, args):
        self.run_dir, self.args, self.path = run_dir, args, os.path.join(run_dir, CHECKPOINT)
        with open(os.path.join(run_dir, "args.json")) as f:
            self.run_args = json.load(f)
        self.saved, self.stop, self.handlers, self.updated = None, None, {}, False
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.handlers[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame):
        self.close()  # the previous handlers again: a second signal stops at once
        if not self.updated:  # the last checkpoint holds everything done
            stopped, at = Stopped(signum), self.saved and self.label(self.saved)
            stopped.add_note(f"no update since the checkpoint at {at} in {self.path}" if at else "")
            raise stopped
        self.stop = signum
        print(f"\n{signal.Signals(signum).name}: stopping after this step with a checkpoint (send it again to stop at once)", file=sys.stderr)

    def close(self):
        for sig, handler in self.handlers.items():
            signal.signal(sig, handler)
        self.handlers = {}

    def begin(self, state: dict, step: int = 0, **values):
        """A new run: write the step-0 checkpoint and return (step, *values) as given. --resume:
        load the last checkpoint into `state`, cut ROW_FILES back to it, return its (step,
        *values); a run stopped before its first checkpoint starts again, as a new one."""
        for tmp in glob.glob(self.path + ".tmp*"):  # left by a run killed while saving
            os.remove(tmp)
        if not self.args.resume or not os.path.exists(self.path):  # no rows yet (utils.resume_args)
            if self.args.resume:
                print(f"{self.run_dir} stopped before its first checkpoint: the run starts again")
            self.save(state, step, **values)
            return (step, *values.values())
        ckpt = self._load()
        if set(ckpt["state"]) != set(state) or set(ckpt["values"]) != set(values):
            raise InputError(f"checkpoint '{self.path}' holds {sorted(ckpt['state'])}, {sorted(ckpt['values'])}, not what {self.run_args['script']}.py saves; start a new run")
        try:
            for name, obj in state.items():
                _set_state(obj, ckpt["state"][name])
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise InputError(f"checkpoint '{self.path}' does not fit this run ({first}); start a new run") from None
        _set_global_rng_state(ckpt["rng"])
        for name, rows in ckpt["rows"].items():
            _truncate_rows(os.path.join(self.run_dir, name), rows, ckpt["step"])
        self.saved = ckpt
        print(f"resumed {self.run_dir} from its checkpoint at {self.label(ckpt)}")
        return (ckpt["step"], *(ckpt["values"][k] for k in values))

    def save(self, state: dict, step: int, **values):
        """After training step `step`: a checkpoint every --save-every steps, at the last step and when a
        signal arrived (then the process exits with 128 + the signal number)."""
        if step % self.args.save_every == 0 or step == self.args.steps or self.stop:
            ckpt = dict(format=self.FORMAT, args=self.run_args, step=step, values=values,
                        state={name: _get_state(obj) for name, obj in state.items()}, rng=_global_rng_state(),
                        rows={name: _count_rows(os.path.join(self.run_dir, name)) for name in ROW_FILES})
            tmp = f"{self.path}.tmp{os.getpid()}"
            with open(tmp, "wb") as f:
                torch.save(ckpt, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            self.saved, self.updated = ckpt, False
        if self.stop:
            self.close()
            close_progress_bars()
            print(f"checkpoint at {self.label(self.saved)} in {self.path}; continue with: python {self.run_args['script']}.py --resume {self.run_dir}", file=sys.stderr)
            sys.exit(128 + self.stop)

    def check_finite(self, where: str, **values):
        """Stop before a NaN/inf loss or gradient norm reaches the weights; the last checkpoint
        stays. Called right before each update: from here on, no checkpoint holds the state."""
        self.updated = True
        for name, v in values.items():
            if v is not None and not math.isfinite(v):
                self.close()
                raise InputError(f"{where}: {name} is {v}; stopped before the update, the last good checkpoint ({self.label(self.saved)}) "
                                 f"stays in {self.path}; start a new run with a lower learning rate or --grad-clip")

    @staticmethod
    def label(ckpt):
        return f"{'SFT ' if ckpt['values'].get('phase') == 'sft' else ''}step {ckpt['step']}"

    def finish(self, model, tokenizer):
        """The final policy as a Hugging Face directory, RUN_DIR/policy (save_pretrained, with the tokenizer)."""
        out = os.path.join(self.run_dir, POLICY_DIR)
        tmp = f"{out}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)  # atomic: a policy/ dir is always complete, and marks the run finished
        self.close()

    def _load(self):
        try:
            ckpt = torch.load(self.path, map_location="cpu", weights_only=True)
            assert isinstance(ckpt, dict) and ckpt.get("format") == self.FORMAT
            assert all(k in ckpt for k in ("args", "step", "values", "state", "rng", "rows"))
        except Exception as e:  # truncated, a foreign pickle, another format...
            raise InputError(f"checkpoint '{self.path}' is unreadable or not a prefixrl checkpoint ({type(e).__name__}); start a new run") from None
        if ckpt["args"] != self.run_args:
            diff = sorted(k for k in set(ckpt["args"]) | set(self.run_args) if ckpt["args"].get(k) != self.run_args.get(k))
            raise InputError(f"checkpoint '{self.path}' belongs to another run: its flags differ from args.json in {', '.join(diff)}; restore args.json or start a new run")
        return ckpt


def _get_state(obj):
    if isinstance(obj, np.random.Generator):
        return obj.bit_generator.state
    if isinstance(obj, torch.Generator):
        return obj.get_state()
    return obj.state_dict()


def _set_state(obj, saved):
    if isinstance(obj, np.random.Generator):
        obj.bit_generator.state = saved
    elif isinstance(obj, torch.Generator):
        obj.set_state(saved)
    else:
        obj.load_state_dict(saved)


def _global_rng_state():
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return dict(python=random.getstate(), numpy=(kind, keys.tolist(), pos, has_gauss, gauss), torch=torch.get_rng_state(),
                cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [])


def _set_global_rng_state(saved):
    random.setstate(saved["python"])
    kind, keys, *rest = saved["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(saved["torch"])
    if saved["cuda"] and torch.cuda.is_available() and len(saved["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(saved["cuda"])


def _count_rows(path):
    if not os.path.exists(path):
        return 0
    with open(path, "rb") as f:
        return f.read().count(b"\n")


def _truncate_rows(path, rows, step):
    """Keep the first `rows` lines (those logged up to the checkpoint), atomically."""
    if not os.path.exists(path) and rows == 0:
        return
    lines = open(path, "rb").read().split(b"\n")[:-1] if os.path.exists(path) else []
    if len(lines) < rows:
        raise InputError(f"'{path}' has {len(lines)} rows, fewer than the {rows} it had at the checkpoint (step {step}): it was cut or edited; start a new run")
    if len(lines) > rows or os.path.getsize(path) != sum(len(x) + 1 for x in lines):
        write_atomic(path, b"".join(x + b"\n" for x in lines[:rows]).decode())
