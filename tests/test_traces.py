"""Rejection sampling and the trace cache."""

import dataclasses
import json

import pytest
import torch

import tasks
import utils
from test_math import tiny_model


def lenient_task():
    """The toy task with a reward that passes half the samples, so a random model finds traces."""
    task = tasks.make_toy_task(12, 1, 6, 6, 0, 0)
    task.reward = lambda p, prefix, r: float(len(r) > 0 and r[0] % 2 == 0)
    task.max_new_tokens = 5
    return task


def test_rejection_sampling_stops_at_first_success_caps_the_budget_and_charges_every_sample(tmp_path, monkeypatch):
    """Scripted samples: problem 0 passes at its 1st sample, 1 at its 13th (several rounds of batches),
    2 never (it exhausts the budget of 20), 3 at its 20th (the last the budget allows). The j-th sample
    of a problem is [5 + j] plus j % 3 tokens, with log-prob -(j + 1)/100 per token."""
    task, model = lenient_task(), tiny_model()
    problems = task.train[:4]
    success_at = dict(zip([p.id for p in problems], [1, 13, None, 20]))
    drawn = {p.id: [] for p in problems}  # every sample drawn, per problem
    owner = {tuple(p.prompt_ids): p.id for p in problems}

    def sample(model, prompts, *a, **k):
        responses, logprobs = [], []
        for prompt in prompts:
            j = len(drawn[owner[tuple(prompt)]])
            responses.append([5 + j] + [5] * (j % 3))
            logprobs.append([-(j + 1) / 100] * len(responses[-1]))
            drawn[owner[tuple(prompt)]].append(responses[-1])
        return responses, logprobs, [[0.5] * len(r) for r in responses]

    monkeypatch.setattr(utils, "sample", sample)
    task.reward = lambda p, prefix, r: float(r[0] - 4 == success_at[p.id])  # the sample's number, from 1
    path = str(tmp_path / "traces.json")
    traces, total = utils.collect_traces(model, task, problems, budget=20, temperature=0.7, seed=0, cache_path=path, batch_size=16, model_id="m")
    data = json.load(open(path))
    n_params, found = utils.count_params(model), {pid for pid, s in success_at.items() if s}
    assert set(traces) == found
    prompt_len = {p.id: len(p.prompt_ids) for p in problems}
    charged = {pid: 2 * n_params * sum(prompt_len[pid] + len(r) for r in rs) for pid, rs in drawn.items()}
    assert data["flops"] == charged and total == sum(charged.values())  # the failed problem's samples too
    assert {pid: len(rs) for pid, rs in drawn.items() if success_at[pid] is None} == {problems[2].id: 20}  # budget cap
    assert data["attempts"] == {pid: s or 20 for pid, s in success_at.items()}  # attempts stop at the success
    assert len(drawn[problems[0].id]) > 1  # samples drawn in the same batch after the success are charged
    for pid, t in traces.items():
        j = success_at[pid] - 1
        assert t.token_ids == drawn[pid][j] and t.behaviour_logprobs == [-(j + 1) / 100] * len(t.token_ids)
        assert t.attempts == success_at[pid] and t.flops == charged[pid] and t.temperature == 0.7


def test_traces_file_charges_only_the_training_problems(tmp_path):
    """--traces FILE: the FLOPs of the problems used (found or not), not the file's whole total."""
    task = lenient_task()
    a, b, outside = task.train[0].id, task.train[1].id, "toy:elsewhere"
    traces = {pid: utils.Trace(pid, [5, 6], "", 2, f, [-0.1, -0.1], 0.7) for pid, f in [(a, 10.0), (outside, 1000.0)]}
    path = str(tmp_path / "traces.json")
    utils.save_traces(path, {"source": "test"}, traces, {a: 2, b: 9, outside: 2}, {a: 10.0, b: 45.0, outside: 1000.0})
    loaded, charged = utils.load_traces(path, problems=task.train)
    assert set(loaded) == {a} and charged == 10.0 + 45.0 and loaded[a].temperature == 0.7
    assert utils.load_traces(path)[1] == 1055.0
    data = json.load(open(path))  # a v1 file: no per-problem FLOPs, no temperatures (all sampled at 1.0)
    data.update(format="prefixrl-traces-v1", traces=[{k: v for k, v in t.items() if k != "temperature"} for t in data.pop("traces")])
    del data["flops"]
    json.dump(data, open(path, "w"))
    loaded, charged = utils.load_traces(path, problems=task.train)
    assert charged == 10.0 and loaded[a].temperature == 1.0


def test_trace_cache_round_trips_and_rejects_foreign_or_truncated_files(tmp_path, monkeypatch):
    task, model = lenient_task(), tiny_model()
    path = str(tmp_path / "traces.json")
    first = utils.collect_traces(model, task, task.train, 20, 1.0, 0, path, batch_size=16, model_id="m")
    monkeypatch.setattr(utils, "sample", lambda *a, **k: pytest.fail("sampled again instead of reading the cache"))
    again = utils.collect_traces(model, task, task.train, 20, 1.0, 0, path, batch_size=16, model_id="m")
    assert first == again and first[0]  # read back from disk, equal field by field
    with pytest.raises(utils.InputError, match="other problems"):
        utils.load_traces(path, problems=tasks.make_toy_task(12, 1, 6, 6, 0, 99).train)
    text = open(path).read()
    with open(path, "w") as f:
        f.write(text[: len(text) // 2])  # truncated: a run killed while writing it without write_atomic
    damaged = r"is not JSON \(JSONDecodeError at line 1 column \d+\); delete it to re-collect"
    with pytest.raises(utils.InputError, match=damaged):
        utils.collect_traces(model, task, task.train, 20, 1.0, 0, path, batch_size=16, model_id="m")


@pytest.mark.parametrize("field", ["model", "task", "budget", "temperature", "seed", "problems"])
def test_trace_cache_made_with_another_setting_is_refused(field, tmp_path):
    """Every field of the cache key: a file collected with another value of any one is refused, naming it."""
    task, model = lenient_task(), tiny_model()
    path = str(tmp_path / "traces.json")
    key = dict(task=task, problems=task.train, budget=20, temperature=1.0, seed=0, model_id="m")
    utils.collect_traces(model, key["task"], key["problems"], key["budget"], key["temperature"], key["seed"], path, batch_size=16, model_id="m")
    other = dict(model=dict(model_id="other"), task=dict(task=dataclasses.replace(task, fingerprint="other")), budget=dict(budget=21),
                 temperature=dict(temperature=0.7), seed=dict(seed=1), problems=dict(problems=task.train[:-1]))[field]
    key.update(other)
    with pytest.raises(utils.InputError, match=f"collected for a different {field}; "):
        utils.collect_traces(model, key["task"], key["problems"], key["budget"], key["temperature"], key["seed"], path, batch_size=16,
                             model_id=key["model_id"])


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampling_log_probs_match_a_forward_pass(temperature):
    """The log-probs sample() returns are log_softmax(model(...).logits / T) of one full forward, and
    token_logprobs at T gives the same."""
    model, task = tiny_model(), lenient_task()
    prompts = [p.prompt_ids[: 3 + i] for i, p in enumerate(task.train) for _ in range(3)]  # repeats, ragged
    responses, logprobs, entropies = utils.sample(model, prompts, 6, temperature, task.eos_id, task.pad_id, torch.Generator().manual_seed(0))
    assert len({tuple(r) for r in responses}) > len(task.train)  # rows of one prompt sample independently
    ids, attn, mask = utils.make_batch(prompts, responses, task.pad_id, "cpu")
    with torch.no_grad():
        full = torch.log_softmax(model(input_ids=ids, attention_mask=attn).logits[:, :-1] / temperature, -1)
        logp, entropy = utils.token_logprobs(model, ids, attn, temperature)
    flat = torch.tensor([lp for row in logprobs for lp in row])
    torch.testing.assert_close(full.gather(-1, ids[:, 1:, None])[..., 0][mask == 1], flat, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logp[mask == 1], flat, rtol=1e-4, atol=1e-5)
    # train/entropy: the entropy of each distribution a token was drawn from, as the forward pass gives it
    flat = torch.tensor([h for row in entropies for h in row])
    torch.testing.assert_close(-(full.exp() * full).sum(-1)[mask == 1], flat, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(entropy[mask == 1], flat, rtol=1e-4, atol=1e-5)


def test_the_sampler_draws_from_softmax_at_the_temperature():
    """Token frequencies over many rows match softmax(logits / T) (a chi-square-sized tolerance), the
    same generator state gives the same tokens, and the returned log-probs are those of the tokens and
    the entropies that of softmax(logits / T)."""
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -30.0, 0.5]]).repeat(40000, 1)
    for temperature in [1.0, 0.5]:
        token, logp, entropy = utils.draw(logits, temperature, torch.Generator().manual_seed(0))
        want = torch.softmax(logits[0] / temperature, -1)
        freq = torch.bincount(token, minlength=6).float() / len(token)
        assert (freq - want).abs().max() < 4 * (want * (1 - want) / len(token)).sqrt().max() and freq[4] == 0
        torch.testing.assert_close(logp, want.log()[token])
        torch.testing.assert_close(entropy, -(want * want.log()).sum().expand(len(token)))
        assert torch.equal(token, utils.draw(logits, temperature, torch.Generator().manual_seed(0))[0])


def test_the_other_family_collects_its_own_traces_for_the_same_problems(toy_cache, tmp_path, monkeypatch):
    """reproduce.py's prefixrl_other_family traces: the toy-gpt2 base model (another architecture and
    teacher) samples the problems that --extra gives; the file is keyed by that model, and a trace
    sampled by it has the log-probs it had when sampled."""
    import models
    import reproduce

    monkeypatch.setattr(tasks, "toy_reward", lambda p, prefix, r: float(len(r) > 0 and r[0] % 2 == 0))  # finds traces fast
    path = str(tmp_path / "other.json")
    extra = f"--cache-dir {toy_cache} --toy-pretrain-steps 20 --hard-min 1 --hard-max 3 --n-train 4 --n-heldout 2 --trace-budget 8"
    reproduce.collect_other_traces(path, extra)
    with open(path) as f:
        data = json.load(f)
    model, _, model_id = models.load_model("toy-gpt2", toy_cache, "cpu", 20)
    assert type(model).__name__ == "GPT2LMHeadModel" and data["key"]["model"] == model_id and "toy-gpt2" in model_id
    task = tasks.make_toy_task(tasks.TOY_LENGTH, 1, 3, 4, 2, 0)
    assert data["traces"] and {t["problem_id"] for t in data["traces"]} <= {p.id for p in task.train}
    t = data["traces"][0]
    p = next(p for p in task.train if p.id == t["problem_id"])
    ids, attn, mask = utils.make_batch([p.prompt_ids], [t["token_ids"]], task.pad_id, "cpu")
    with torch.no_grad():
        logp = utils.token_logprobs(model, ids, attn)[0][mask > 0]
    torch.testing.assert_close(logp, torch.tensor(t["behaviour_logprobs"]), rtol=0, atol=1e-5)


def test_the_other_family_traces_remade_into_toy_models_record_their_checksum(toy_cache, tmp_path, monkeypatch):
    """`reproduce.py --collect-traces-to toy_models/toy-gpt2/traces.json` (the shipped file's remake) writes the
    new file's sha256 to toy_models/SHA256SUMS; a collection anywhere else leaves SHA256SUMS alone."""
    import models
    import reproduce

    shipped = tmp_path / "toy_models"
    (shipped / "toy-gpt2").mkdir(parents=True)
    (shipped / "SHA256SUMS").write_text("abc  toy/model.safetensors\n")
    monkeypatch.setattr(models, "SHIPPED", str(shipped))
    monkeypatch.setattr(models, "SHA256SUMS", str(shipped / "SHA256SUMS"))
    monkeypatch.setattr(tasks, "toy_reward", lambda p, prefix, r: float(len(r) > 0 and r[0] % 2 == 0))  # finds traces fast
    extra = f"--cache-dir {toy_cache} --toy-pretrain-steps 20 --hard-min 1 --hard-max 3 --n-train 4 --n-heldout 2 --trace-budget 8"
    reproduce.collect_other_traces(str(tmp_path / "elsewhere.json"), extra)
    assert models.shipped_checksums() == {"toy/model.safetensors": "abc"}
    path = shipped / "toy-gpt2" / "traces.json"
    reproduce.collect_other_traces(str(path), extra)
    assert models.shipped_checksums() == {"toy/model.safetensors": "abc", "toy-gpt2/traces.json": models.file_sha256(str(path))}


def test_a_shipped_collection_is_copied_only_for_its_own_key(tmp_path, monkeypatch):
    """collect_traces(shipped=FILE): a file this collection wrote (its key) is copied into the cache, bytes and
    FLOPs as they are, with no sampling; one with another key (another budget here) is not used: the run samples."""
    task, model = lenient_task(), tiny_model()
    made = str(tmp_path / "made.json")
    traces, flops = utils.collect_traces(model, task, task.train, 20, 1.0, 0, made, batch_size=16, model_id="m")
    calls = []

    def sample(*a, **k):
        calls.append(1)
        raise RuntimeError("sampled")

    monkeypatch.setattr(utils, "sample", sample)
    cache = str(tmp_path / "cache" / "traces.json")
    copied, charged = utils.collect_traces(model, task, task.train, 20, 1.0, 0, cache, batch_size=16, model_id="m", shipped=made)
    assert not calls and open(cache, "rb").read() == open(made, "rb").read()
    assert charged == flops and {k: t.token_ids for k, t in copied.items()} == {k: t.token_ids for k, t in traces.items()}
    other = str(tmp_path / "other.json")
    with pytest.raises(RuntimeError, match="sampled"):  # nothing was copied: it samples
        utils.collect_traces(model, task, task.train, 19, 1.0, 0, other, batch_size=16, model_id="m", shipped=made)
    assert calls and not (tmp_path / "other.json").exists()
