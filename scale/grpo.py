"""Train on an exported mixture (scale/export.py) with TRL's GRPOTrainer, set to the scripts' objective.

    python scale/export.py --out data/toy-prefixrl && python scale/grpo.py --data data/toy-prefixrl
    accelerate launch --num_processes 8 scale/grpo.py --data DIR --num-processes 8 --use-vllm
    torchrun --nproc-per-node 2 scale/grpo.py --data DIR --num-processes 2  # 2 CPU processes, gloo
    python scale/grpo.py --resume RUN_DIR                # continue from RUN_DIR's last checkpoint

The objective is prefixrl.py's (and standard_rl.py's): REINFORCE with a group-mean baseline (advantage =
reward - group mean, no std scaling: scale_rewards="none"), no KL term (beta = 0), one optimizer step per
generation batch (steps_per_generation = gradient_accumulation_steps, num_iterations = 1: the PPO ratio
is 1, never clipped), the loss a mean over all sampled tokens of the batch (loss_type="dapo"; "grpo" for
--loss-agg sequence), log pi at the sampling temperature, n rollouts per prompt, torch AdamW (weight
decay 0.01 on every parameter) at a constant learning rate, the gradient norm clipped. A prefixed
problem's prompt is the problem's prompt followed by the prefix, so TRL's loss mask starts after the
prefix, as the script's does; the reward is the task's verifier on the completion's ids alone.

One step of this trainer and one of prefixrl.py update the weights alike (tests/test_scale.py). What
differs: TRL samples with transformers' generate (or vLLM), not utils.sample, so the draws differ;
it also stops at the tokenizer's and generation config's end-of-sequence ids (refused if the task's
own is not among them); --std-normalize divides by std + 1e-4 (the scripts: 1e-6); evaluation (--eval-
every) is pass@1 on held-out problems at the training temperature. Rows logged to RUN_DIR/metrics.jsonl
carry the scripts' names (train/reward_no_prefix, train/reward_prefixed, train/all_negative_frac,
...) and TRL's own under trl/ (trl/completions/clipped_ratio: the share of completions cut at
--max-new-tokens; with --vllm-importance-sampling-correction, trl/sampling/...: the IS ratios).

With vLLM, TRL 1.16 by default weights each rollout's loss by pi_train / pi_vLLM and drops rollouts
whose ratio is above 3; here that correction is off unless --vllm-importance-sampling-correction is
given, so the objective stays plain REINFORCE on vLLM's draws (as the scripts treat their draws).
"""

import dataclasses
import glob
import importlib.util
import json
import os
import sys
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Literal, Optional

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import models  # noqa: E402
import tasks  # noqa: E402
import utils  # noqa: E402
from scale.export import FORMAT  # noqa: E402


@dataclass
class Args:
    data: Optional[str] = None
    """an export directory (scale/export.py --out): train.jsonl, heldout.jsonl, meta.json"""
    run_dir: Optional[str] = None
    """where args.json, metrics.jsonl, checkpoint-STEP/ and the final policy/ go
    (default: runs/grpo__<seed>__<time>)"""
    resume: Optional[str] = None
    """continue the run in this run dir from its last checkpoint-STEP/, with its args.json flags"""
    save_every: int = 50
    """write RUN_DIR/checkpoint-STEP/ (weights, optimizer, scheduler, RNG states) every this many
    steps and at the end, keeping the last (0: never)"""
    num_processes: Optional[int] = None
    """the processes this run must have (torchrun --nproc-per-node, accelerate launch
    --num_processes); another count is refused (default: the launcher's WORLD_SIZE)"""
    seed: Optional[int] = None
    """seed of sampling (default: the export's --seed; the order of the prompts is the export's)"""
    model: Optional[str] = None
    """the policy (default: the export's --model, loaded the same way: toy cache, .gguf, local dir, hub id)"""
    cache_dir: str = "cache"
    """where the toy base models are cached"""
    steps: Optional[int] = None
    """optimizer steps (default: every exported step)"""
    lr: Optional[float] = None
    """AdamW learning rate (default: the export's --lr)"""
    grad_clip: Optional[float] = None
    """clip the global gradient norm to this (default: the export's --grad-clip)"""
    micro_batch: Optional[int] = None
    """rollouts per forward/backward on each process (default: the export's --micro-batch)"""
    gradient_checkpointing: bool = False
    """recompute activations in the backward pass"""
    bf16: Optional[bool] = None
    """bf16 autocast, fp32 weights (default: on CUDA, as the scripts)"""
    use_vllm: bool = False
    """sample with vLLM (needs `pip install vllm` and a GPU)"""
    vllm_mode: Literal["colocate", "server"] = "colocate"
    """colocate: vLLM shares each training GPU; server: a separate `trl vllm-serve` process"""
    vllm_gpu_memory_utilization: float = 0.3
    """colocate: the share of each GPU's memory vLLM may take"""
    vllm_tensor_parallel_size: int = 1
    """colocate: GPUs one vLLM engine spans"""
    vllm_max_model_length: Optional[int] = None
    """vLLM's context window (default: the longest prompt with its prefix + --max-new-tokens, not
    the model's declared maximum)"""
    vllm_enable_sleep_mode: bool = False
    """colocate: vLLM frees its weights and KV cache while the trainer computes the update"""
    vllm_importance_sampling_correction: bool = False
    """TRL's correction for vLLM's numerics (sequence_mask, cap 3): each rollout's loss times
    pi_train / pi_vLLM, rollouts above 3 dropped; the objective is then no longer plain REINFORCE"""
    eval_every: int = 0
    """pass@1 on the held-out problems at the start, every this many steps and at the end, at the training temperature (0: never)"""
    tensorboard: bool = False
    """also log every metrics.jsonl row to RUN_DIR/tensorboard (needs `pip install tensorboard`)"""
    threads: int = 2
    """torch CPU threads"""


def read_export(path):
    try:
        with open(os.path.join(path, "meta.json")) as f:
            meta = json.load(f)
        assert meta.get("format") == FORMAT
    except (OSError, ValueError, AssertionError) as e:
        raise utils.InputError(f"'{path}' is not an export of scale/export.py (meta.json: {type(e).__name__}); make one with python scale/export.py --out {path}") from None
    return meta


def require_extra():
    try:
        import datasets
        import trl
    except ImportError as e:
        raise utils.InputError(f"scale/grpo.py needs the optional extra ({e.name} is missing): pip install -r scale/requirements.txt") from None
    return datasets, trl


# PROCESSES: the ones launched, all of them in one process group
def process_state():
    """accelerate's state, made for the CPU when there is no GPU: otherwise processes started by
    torchrun on CPUs never join a group and each trains alone on the whole batch."""
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def check_processes(expected, source=None):
    """The processes in the group must be those launched (WORLD_SIZE) and, with --num-processes (or
    a resumed run's count, `source` saying so), those asked for. Returns their count."""
    running, launched = process_state().num_processes, int(os.environ.get("WORLD_SIZE", "1"))
    cpu = "on CPUs launch with torchrun --nproc-per-node N (accelerate launch --cpu starts one)"
    if running != launched:
        raise utils.InputError(f"{launched} processes were launched (WORLD_SIZE) but {running} "
                               f"joined the process group; {cpu}")
    accelerate_asked_several = {"ACCELERATE_USE_CPU", "MASTER_ADDR"} <= set(os.environ)
    if expected is None and running == 1 and accelerate_asked_several:
        raise utils.InputError(f"accelerate launch was asked for several processes but started "
                               f"one; {cpu}, or give --num-processes 1")
    if expected is not None and expected != running:
        asked = f"{source} {expected} processes" if source else f"--num-processes {expected}"
        are = "processes are" if running > 1 else "process is"
        raise utils.InputError(f"{asked} but {running} {are} running; {cpu}")
    return running


# CHECKPOINTS: the HF Trainer's checkpoint-STEP/ dirs; --resume continues from the last whole one
def last_checkpoint(run_dir):
    """The checkpoint-STEP/ of the highest STEP written to the end (trainer_state.json is last)."""
    done = [d for d in glob.glob(os.path.join(run_dir, "checkpoint-*"))
            if os.path.isfile(os.path.join(d, "trainer_state.json"))]
    return max(done, key=lambda d: int(d.rsplit("-", 1)[1]), default=None)


def resume_args(args: Args):
    """Without --resume: `args` (--data required). With --resume RUN_DIR: the run's own flags
    (RUN_DIR/args.json; only --threads may be given again); a finished run exits 0."""
    if not args.resume:
        if not args.data:
            raise utils.InputError("give --data DIR (scale/export.py's --out), or --resume RUN_DIR")
        return args  # a run dir that holds a run is refused by utils.start_run
    run_dir, defaults, path = args.resume, Args(), os.path.join(args.resume, "args.json")
    try:
        with open(path) as f:
            saved = json.load(f)
        assert isinstance(saved, dict) and saved.get("script") == "grpo"
    except FileNotFoundError:
        raise utils.InputError(f"--resume {run_dir}: no args.json there, so it is not a run dir "
                               "(give the --run-dir of the run to continue)") from None
    except (OSError, ValueError, AssertionError) as e:
        raise utils.InputError(f"--resume {run_dir}: '{path}' is unreadable or not a scale/grpo.py "
                               f"run ({type(e).__name__})") from None
    names = [f.name for f in dataclasses.fields(Args)]
    given = [n for n in names if n not in ("resume", "threads")
             and getattr(args, n) != getattr(defaults, n)]
    if given:
        flag = "--" + given[0].replace("_", "-")
        raise utils.InputError(f"--resume takes every flag from '{path}'; drop {flag} "
                               "(only --threads may be given again)")
    if os.path.isdir(os.path.join(run_dir, utils.POLICY_DIR)):
        print(f"run dir '{run_dir}' holds a finished run ({utils.POLICY_DIR}/ is there): "
              "nothing to resume")
        sys.exit(0)
    if last_checkpoint(run_dir) is None:
        raise utils.InputError(f"run dir '{run_dir}' has no whole checkpoint-STEP/ (it stopped "
                               "before --save-every steps); start it again with another --run-dir")
    merged = {n: saved.get(n, getattr(defaults, n)) for n in names}
    threads = args.threads if args.threads != defaults.threads else merged["threads"]
    return Args(**dict(merged, resume=run_dir, run_dir=run_dir, threads=threads))


def cut_rows(run_dir, step):
    """Drop the rows logged after the checkpoint at `step` (they are logged again), so metrics.jsonl
    is the uninterrupted run's. A checkpoint follows its step's row and evaluation: those stay."""
    for name in ("metrics.jsonl", "time.jsonl"):
        path = os.path.join(run_dir, name)
        if os.path.exists(path):
            with open(path) as f:
                kept = [line for line in f
                        if line.strip() and json.loads(line).get("step", 0) <= step]
            utils.write_atomic(path, "".join(kept))


def optimizer_config(name):
    """The export's RL optimizer (utils.optimizer) as GRPOConfig fields: torch's AdamW with weight decay 0.01,
    or torch's SGD with momentum 0.9 and none."""
    if name == "sgd":
        return dict(optim="sgd", optim_args="momentum=0.9", weight_decay=0.0)
    return dict(optim="adamw_torch", weight_decay=0.01)


def build(args: Args, meta: dict, callbacks=(), **trainer_kwargs):
    """The GRPOTrainer of this export, configured to the scripts' objective, its task and run dir."""
    datasets, trl = require_extra()
    if args.use_vllm and importlib.util.find_spec("vllm") is None:
        raise utils.InputError("--use-vllm needs vLLM, which is not installed: "
                               "pip install -r scale/requirements-gpu.txt (a GPU machine)")

    ex = meta["args"]  # the export's flags: the task, the objective's settings
    seed = ex["seed"] if args.seed is None else args.seed
    micro = args.micro_batch or ex["micro_batch"]
    batch, n_proc = ex["prompts_per_step"] * ex["rollouts"], process_state().num_processes
    if batch % (micro * n_proc):
        raise utils.InputError(f"a step's {ex['prompts_per_step']}x{ex['rollouts']} rollouts do not split into --micro-batch {micro} on {n_proc} processes")
    steps = args.steps or ex["steps"]
    if not 1 <= steps <= ex["steps"]:
        raise utils.InputError(f"--steps must be in 1..{ex['steps']} (the export's steps), got {steps}")

    # MODEL, TASK: loaded as the scripts load them; the verifier needs the task's problems
    model, tokenizer, model_id = models.load_model(args.model or ex["model"], args.cache_dir, "cpu", ex["toy_pretrain_steps"], toy_length=ex["toy_length"])
    task = tasks.load_task(SimpleNamespace(**{k: ex[k] for k in ("task", "dataset", "level", "max_new_tokens", "toy_length", "hard_min", "hard_max", "n_train", "n_heldout", "task_seed")}), tokenizer)
    by_id = {p.id: p for p in task.train + task.heldout}
    train = datasets.load_dataset("json", data_files=os.path.join(args.data, "train.jsonl"), split="train")
    train = train.select(range(steps * ex["prompts_per_step"]))
    heldout = datasets.load_dataset("json", data_files=os.path.join(args.data, "heldout.jsonl"), split="train") if args.eval_every else None
    missing = set(train["problem_id"]) - set(by_id)
    if missing:
        raise utils.InputError(f"{args.data}: {len(missing)} problem ids (e.g. {sorted(missing)[0]}) are not problems of the task its meta.json describes; export again")

    # REWARD: the task's verifier on the completion's ids; the prefix is context, never scored
    n = ex["rollouts"]

    def verifier(completion_ids, problem_id, prefix_ids, log_metric, **_):
        from accelerate import PartialState
        from accelerate.utils import gather_object

        rewards = [task.reward(by_id[pid], prefix, list(c)) for c, pid, prefix in zip(completion_ids, problem_id, prefix_ids)]
        rows = np.array(gather_object([(r, len(prefix) > 0) for r, prefix in zip(rewards, prefix_ids)]))  # every process's, in order
        r, has_prefix = rows[:, 0].reshape(-1, n), rows[:, 1].reshape(-1, n)[:, 0] > 0  # one group per row
        if PartialState().is_main_process:  # the other processes log nothing: TRL averages what was logged
            for name, value in (("reward_no_prefix", r[~has_prefix].mean() if (~has_prefix).any() else None),
                                ("reward_prefixed", r[has_prefix].mean() if has_prefix.any() else None),
                                ("all_negative_frac", (r.max(1) == 0).mean()),
                                ("all_negative_frac_no_prefix", (r[~has_prefix].max(1) == 0).mean() if (~has_prefix).any() else None)):
                if value is not None:
                    log_metric(name, float(value))
        return rewards

    # VLLM'S CONTEXT: the longest prompt (with its prefix) and a whole completion, not the model's
    longest = max(len(ids) for rows in (train, heldout) if rows is not None
                  for ids in rows["prompt_ids"])
    max_model_length = args.vllm_max_model_length or longest + task.max_new_tokens
    if max_model_length < longest + task.max_new_tokens:
        raise utils.InputError(f"--vllm-max-model-length {max_model_length} is shorter than the "
                               f"longest prompt ({longest} tokens) + --max-new-tokens "
                               f"{task.max_new_tokens}; raise it or leave it out")

    # THE OBJECTIVE
    ga = batch // (micro * n_proc)
    config = trl.GRPOConfig(
        output_dir=args.run_dir, seed=seed, max_steps=steps, learning_rate=args.lr or ex["lr"], lr_scheduler_type="constant",
        warmup_steps=0, **optimizer_config(ex.get("optimizer") or "adamw"), adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8,
        max_grad_norm=args.grad_clip or ex["grad_clip"], per_device_train_batch_size=micro, gradient_accumulation_steps=ga,
        steps_per_generation=ga, num_iterations=1, num_generations=n, beta=0.0, scale_rewards="group" if ex["std_normalize"] else "none",
        loss_type="dapo" if ex["loss_agg"] == "token" else "grpo", mask_truncated_completions=False, temperature=ex["temperature"],
        top_p=1.0, top_k=0, max_completion_length=task.max_new_tokens, shuffle_dataset=False, bf16=torch.cuda.is_available() if args.bf16 is None else args.bf16,
        gradient_checkpointing=args.gradient_checkpointing, use_vllm=args.use_vllm, vllm_mode=args.vllm_mode,
        use_cpu=not torch.cuda.is_available(),  # else CPU processes each train alone
        vllm_gpu_memory_utilization=args.vllm_gpu_memory_utilization, vllm_tensor_parallel_size=args.vllm_tensor_parallel_size,
        vllm_max_model_length=max_model_length, vllm_enable_sleep_mode=args.vllm_enable_sleep_mode,
        vllm_importance_sampling_correction=args.vllm_importance_sampling_correction,
        eval_strategy="steps" if args.eval_every else "no", eval_steps=args.eval_every or None,
        per_device_eval_batch_size=n,
        eval_on_start=args.eval_every > 0 and not args.resume,  # a checkpoint follows its eval
        save_strategy="steps" if args.save_every else "no", save_steps=args.save_every or None,
        save_total_limit=1,
        logging_steps=1, report_to="none", disable_tqdm=True, remove_unused_columns=False,
    )
    trainer = trl.GRPOTrainer(model=model, reward_funcs=verifier, args=config, train_dataset=train, eval_dataset=heldout,
                          processing_class=tokenizer, callbacks=list(callbacks), **trainer_kwargs)
    # weight decay on every parameter, as torch.optim.AdamW(model.parameters()) in the scripts (the
    # Trainer would spare biases and norm weights)
    trainer.get_decay_parameter_names = lambda model: [name for name, _ in model.named_parameters()]
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if trainer.accelerator.num_processes != launched:  # the Trainer makes its own process state
        raise utils.InputError(f"the trainer runs on {trainer.accelerator.num_processes} of the "
                               f"{launched} processes launched")
    if task.eos_id not in trainer.eos_token_ids:
        raise utils.InputError(f"TRL would not stop sampling at the task's end token {task.eos_id} (it stops at {trainer.eos_token_ids}); set the model's generation_config.eos_token_id")

    # EXACT TOKENS: TRL samples from the ids its tokenizer gives each prompt's text; they must be the
    # row's prompt_ids (prompt + prefix). Where some text does not give them back, TRL gets the ids
    texts, want = [], []
    for rows in (train, heldout) if heldout is not None else (train,):
        texts, want = texts + list(rows["prompt"]), want + list(rows["prompt_ids"])
    got, _, _ = trainer._tokenize_prompts(texts)
    off = sum(list(g) != list(w) for g, w in zip(got, want))
    if off:
        ids_of = {}
        for text, ids in zip(texts, want):
            if ids_of.setdefault(text, ids) != ids:
                raise utils.InputError(f"{args.data}: two rows share the text {text[:40]!r}... but not the ids; TRL cannot be given both")
        trainer._tokenize_prompts = lambda prompts: ([ids_of[p] for p in prompts], None, {})
        print(f"the text of {off}/{len(texts)} rows does not re-tokenize to its prompt_ids: TRL is given the ids")
    return trainer, task, model_id


def main(args: Args, **trainer_kwargs):
    """trainer_kwargs go to GRPOTrainer (the tests hand it fixed completions: rollout_func)."""
    from accelerate.utils import broadcast_object_list
    from transformers import TrainerCallback

    require_extra()
    resumed = bool(args.resume)
    args = resume_args(args)
    source = "the run to resume has" if resumed else None
    args.num_processes = check_processes(args.num_processes, source)
    meta = read_export(args.data)
    torch.set_num_threads(args.threads)
    args.seed = meta["args"]["seed"] if args.seed is None else args.seed
    main_process = process_state().is_main_process
    run_dir = [utils.start_run(args, "grpo") if main_process else None]
    args.run_dir = broadcast_object_list(run_dir)[0]  # the main process's, on every process
    checkpoint = last_checkpoint(args.run_dir) if args.resume else None
    if checkpoint and main_process:
        cut_rows(args.run_dir, int(checkpoint.rsplit("-", 1)[1]))
    n_params, trace_flops = meta["n_params"], meta["trace_flops"]
    start = time.time()

    class MetricRows(TrainerCallback):
        """TRL's logs as the scripts' metrics.jsonl rows, under their names; TRL's own in trl/."""

        def on_log(self, targs, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            flops = trace_flops + 8 * n_params * state.num_input_tokens_seen  # 2·N·D sampling + 6·N·D training
            if "eval_reward" in logs:
                utils.log_metrics(args.run_dir, {"step": state.global_step, "flops": flops, "eval/heldout_pass@1": logs["eval_reward"]})
            elif "reward" in logs:
                utils.log_metrics(args.run_dir, {
                    "step": state.global_step, "flops": flops, **{f"train/{k}": logs.get(k) for k in ("reward_no_prefix", "reward_prefixed", "all_negative_frac", "all_negative_frac_no_prefix")},
                    "train/grad_norm": logs.get("grad_norm"), "train/entropy": logs.get("entropy"), "train/response_len": logs.get("completions/mean_length"),
                    **{f"trl/{k}": v for k, v in logs.items()
                       if k.startswith(("completions/", "sampling/", "clip_ratio/"))},
                    "time": time.time() - start})

    trainer, task, model_id = build(args, meta, callbacks=[MetricRows()], **trainer_kwargs)
    trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model(os.path.join(args.run_dir, utils.POLICY_DIR))
    print(f"done in {time.time() - start:.0f}s: metrics in {args.run_dir}/metrics.jsonl, policy in {args.run_dir}/{utils.POLICY_DIR}")


if __name__ == "__main__":
    with utils.clean_errors():
        main(utils.cli(Args, __doc__))
