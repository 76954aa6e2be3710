"""Per-token sampling time of utils.draw against the sampler it replaced (log-softmax, the full
probabilities copied to the CPU, torch.multinomial there), for --rows rows of logits at SmolLM2's
(49,152) and Qwen2's (151,936) vocabulary sizes. The model's forward is not included: this is the
cost of turning one step's logits into tokens and their log-probs.

    python bench/sampler_speed.py --threads 1
"""

import os
import sys
import time
from dataclasses import dataclass
from typing import Tuple

import torch
import tyro

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import utils  # noqa: E402


def draw_before(logits, temperature, generator):
    """The previous sampler, step for step: every token, the full-vocabulary probabilities went to the CPU."""
    logp = torch.log_softmax(logits.float() / temperature, -1)
    token = torch.multinomial(logp.exp().cpu(), 1, generator=generator).to(logits.device)[:, 0]
    return token, logp.gather(-1, token[:, None])[:, 0]


@dataclass
class Args:
    rows: int = 512
    """rows sampled at once (sample()'s batch size)"""
    vocabs: Tuple[int, ...] = (49152, 151936)
    """vocabulary sizes"""
    repeats: int = 5
    """timed draws per sampler (after one warm-up)"""
    threads: int = 1
    """torch CPU threads"""
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    """where the logits live"""


def main(args: Args):
    utils.check_args(args)
    torch.set_num_threads(args.threads)
    print(f"per-token sampling time, {args.rows} rows, {args.device}, {args.threads} thread(s)")
    print("| vocab | before (CPU multinomial) | after (utils.draw) | speed-up |")
    print("| --- | --- | --- | --- |")
    for vocab in args.vocabs:
        logits = torch.randn(args.rows, vocab, generator=torch.Generator().manual_seed(0)).to(args.device) * 3
        seconds = {}
        for name, fn in [("before", draw_before), ("after", utils.draw)]:
            generator = torch.Generator().manual_seed(0)
            fn(logits, 1.0, generator)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(args.repeats):
                token, _ = fn(logits, 1.0, generator)
                token.tolist()  # the token ids are needed on the host each step anyway
            seconds[name] = (time.perf_counter() - start) / args.repeats
        print(f"| {vocab:,} | {1000 * seconds['before']:.0f} ms | {1000 * seconds['after']:.0f} ms | {seconds['before'] / seconds['after']:.1f}x |", flush=True)


if __name__ == "__main__":
    with utils.clean_errors():
        main(tyro.cli(Args))
