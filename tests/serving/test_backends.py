"""course_utils.serving.backends: batched generation over the course's GPT, seeded sampling, bad requests,
checkpoints."""

from __future__ import annotations

import pytest
import torch

from course_utils.serving import ByteTokenizer, GenRequest, GPTBackend

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # fixture in conftest.py


def test_batched_generation_equals_unbatched_with_greedy_decoding(backend):
    prompts = ["hi", "a somewhat longer prompt", "x", "tokens: 1 2 3"]
    alone = [backend.generate(p, max_tokens=10, temperature=0.0) for p in prompts]
    reqs = [GenRequest(backend.tokenizer.encode(p), max_tokens=10 - i, temperature=0.0) for i, p in enumerate(prompts)]
    together = backend.generate_batch(reqs)
    for i, (a, t) in enumerate(zip(alone, together)):
        assert t.token_ids == a.token_ids[: 10 - i]
        assert t.logprobs == pytest.approx(a.logprobs[: 10 - i], abs=1e-4)


def test_backend_matches_the_models_own_generate(backend):
    ids = backend.tokenizer.encode("The cat")
    ref = backend.model.generate(torch.tensor([ids]), 8, temperature=0.0)[0, len(ids) :].tolist()
    assert backend.generate(ids, max_tokens=8, temperature=0.0).token_ids == ref


def test_seeded_sampling_is_reproducible_and_per_request(backend):
    a = backend.generate("seed me", max_tokens=12, temperature=1.0, seed=7)
    b = backend.generate("seed me", max_tokens=12, temperature=1.0, seed=7)
    assert a.token_ids == b.token_ids
    ids = backend.tokenizer.encode("seed me")
    other = GenRequest(backend.tokenizer.encode("another prompt"), 12, 1.0, seed=3)
    batched = backend.generate_batch([other, GenRequest(ids, 12, 1.0, seed=7)])
    assert batched[1].token_ids == a.token_ids  # a neighbour in the batch does not change my sample


def test_batch_too_long_for_one_padded_pass_is_split(backend):
    long_prompt = [65] * 80
    reqs = [GenRequest(long_prompt, 4), GenRequest([66], 60)]  # 80 + 60 > 96 together, each fits alone
    out = backend.generate_batch(reqs)
    assert [len(g.token_ids) for g in out] == [4, 60]


def test_backend_rejects_bad_requests(backend):
    with pytest.raises(ValueError, match="context"):
        backend.generate_batch([GenRequest([1] * 90, 10)])
    with pytest.raises(ValueError, match="max_tokens"):
        backend.generate_batch([GenRequest([1], 0)])
    with pytest.raises(TypeError, match="GPT"):
        GPTBackend(torch.nn.Linear(2, 2))


def test_load_backend_serves_a_checkpoint_without_pickle():
    from course_utils import serving
    from course_utils.serving import load_backend

    be = load_backend("adder", serving.ASSETS / "serve_adder_large.safetensors")
    assert be.name == "adder" and isinstance(be.tokenizer, ByteTokenizer)
    assert be.generate("12+34=", max_tokens=3).text == "64\n"  # 46, digits reversed
    with pytest.raises(FileNotFoundError):
        load_backend("x", serving.ASSETS / "missing.safetensors")
