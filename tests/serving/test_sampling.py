"""course_utils.sampling: OpenAI's sampling parameters, penalties, bias and log-probabilities."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import math
import pickle

import pytest
import torch
import torch.nn.functional as F

import course_utils.serving.sampling as sampling_module
from course_utils.model import sample_next_token
from course_utils.sampling import SamplingError, SamplingParams, penalized_logits, sample_token, sample_tokens
from course_utils.serving import protocol
from course_utils.serving.sampling import MAX_SEED, MAX_TEMPERATURE, MAX_TOKENS
from course_utils.validate import ArgumentTypeError, check_int, check_number


def test_penalties_follow_openai_formula():
    logits = torch.zeros(6)
    p = SamplingParams(presence_penalty=0.5, frequency_penalty=0.25)
    out = penalized_logits(logits, [2, 2, 3, 2], p)
    # token 2 appeared 3 times, token 3 once, others never
    assert out.tolist() == pytest.approx([0, 0, -(0.5 + 0.75), -(0.5 + 0.25), 0, 0])
    assert logits.tolist() == [0.0] * 6  # the model's logits are not modified in place


def test_logit_bias_forces_a_token_but_logprob_is_the_models():
    logits = torch.tensor([3.0, 1.0, 0.0, -1.0])
    choice = sample_token(logits, [], SamplingParams(temperature=0, logit_bias={"2": 100}))
    assert choice.token_id == 2
    assert choice.logprob == pytest.approx(float(F.log_softmax(logits, -1)[2]))
    banned = sample_token(logits, [], SamplingParams(temperature=0, logit_bias={0: -100}))
    assert banned.token_id == 1


def test_greedy_is_argmax_first_on_ties_and_penalty_changes_it():
    logits = torch.tensor([1.0, 5.0, 5.0, 4.9])
    assert sample_token(logits, [], SamplingParams(temperature=0)).token_id == 1
    # token 1 and 2 were generated, so their presence penalty lets token 3 win
    assert sample_token(logits, [1, 2], SamplingParams(temperature=0, presence_penalty=0.2)).token_id == 3


def test_top_logprobs_are_the_k_most_likely_sorted():
    logits = torch.randn(50, generator=torch.Generator().manual_seed(0))
    choice = sample_token(logits, [], SamplingParams(temperature=0, logprobs=5))
    ref = F.log_softmax(logits, -1)
    ids = [i for i, _ in choice.top_logprobs]
    assert ids == torch.topk(ref, 5).indices.tolist() and ids[0] == choice.token_id
    assert [lp for _, lp in choice.top_logprobs] == pytest.approx(torch.topk(ref, 5).values.tolist())
    assert sample_token(logits, [], SamplingParams(logprobs=0)).top_logprobs == []


def test_seeded_sampling_is_reproducible_and_seeds_differ():
    logits = torch.zeros(128)
    p = SamplingParams(temperature=1.0)

    def draw(seed):
        g = torch.Generator().manual_seed(seed)
        return [sample_token(logits, [], p, g).token_id for _ in range(20)]

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


def test_sampling_frequencies_match_softmax_at_temperature():
    logits = torch.log(torch.tensor([1.0, 2.0, 4.0]))
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(3)
    for _ in range(3000):
        counts[sample_token(logits, [], SamplingParams(temperature=0.5), g).token_id] += 1
    expected = torch.softmax(logits / 0.5, -1)  # [1, 4, 16] / 21
    assert (counts / 3000 - expected).abs().max() < 0.03


def test_top_p_keeps_only_the_nucleus():
    logits = torch.tensor([5.0, 0.0, 0.0, 0.0])  # token 0 has ~98% of the mass
    g = torch.Generator().manual_seed(0)
    assert {sample_token(logits, [], SamplingParams(top_p=0.5), g).token_id for _ in range(50)} == {0}


@pytest.mark.parametrize(
    "kw, field",
    [
        (dict(max_tokens=0), "max_tokens"),
        (dict(max_tokens=2.5), "max_tokens"),
        (dict(temperature=-0.1), "temperature"),
        (dict(temperature=2.5), "temperature"),
        (dict(temperature="hot"), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(seed=-1), "seed"),
        (dict(seed=True), "seed"),
        (dict(presence_penalty=3), "presence_penalty"),
        (dict(frequency_penalty=-2.5), "frequency_penalty"),
        (dict(logit_bias=[1]), "logit_bias"),
        (dict(logit_bias={"x": 1}), "logit_bias"),
        (dict(logit_bias={1: 101}), "logit_bias"),
        (dict(logprobs=21), "logprobs"),
        (dict(logprobs=-1), "logprobs"),
        (dict(stop_token_ids=[-3]), "stop_token_ids"),
        (dict(stop_token_ids="ab"), "stop_token_ids"),
        (dict(temperature=math.nan), "temperature"),
    ],
)
def test_params_are_validated_naming_the_field(kw, field):
    with pytest.raises((ValueError, TypeError), match=field):
        SamplingParams(**kw)


def test_vocab_check_and_bad_logits():
    p = SamplingParams(logit_bias={300: 1.0})
    with pytest.raises(ValueError, match="logit_bias"):
        sample_token(torch.zeros(256), [], p)
    with pytest.raises(ValueError, match="stop_token_ids"):
        SamplingParams(stop_token_ids=[999]).check_vocab(256)
    with pytest.raises(ValueError, match="logits"):
        sample_token(torch.zeros(2, 4), [], SamplingParams())


def test_batched_sampling_equals_row_by_row():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(5, 40, generator=g)
    logits[0, 7] = logits[0, 9] = logits[0].max() + 1  # a tie: the first id wins in both paths
    params = [
        SamplingParams(temperature=0),
        SamplingParams(temperature=0, logprobs=3),
        SamplingParams(temperature=0.8, seed=1),
        SamplingParams(temperature=0, presence_penalty=1.0),
        SamplingParams(temperature=0),
    ]
    generated = [[1], [2, 2], [], [int(logits[3].argmax())], []]
    batch = sample_tokens(logits, generated, params, [torch.Generator().manual_seed(5) for _ in params])
    one = [sample_token(logits[i], generated[i], params[i], torch.Generator().manual_seed(5)) for i in range(5)]
    assert [c.token_id for c in batch] == [c.token_id for c in one] and batch[0].token_id == 7
    assert [c.logprob for c in batch] == pytest.approx([c.logprob for c in one], abs=1e-6)
    assert [c.top_logprobs for c in batch] == [c.top_logprobs for c in one]
    with pytest.raises(ValueError, match="one generated"):
        sample_tokens(logits, generated[:2], params, [None] * 5)


# ----------------------------------------------------------------------------------------------- one SamplingParams
def test_params_are_keyword_only_and_frozen():
    with pytest.raises(TypeError):
        SamplingParams(16, 0.0)  # positional: a new field could silently shift the others
    p = SamplingParams(temperature=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.temperature = 1.0
    assert p.replace(seed=3).seed == 3 and p.seed is None
    with pytest.raises(SamplingError, match="top_k") as err:
        p.replace(top_k=-1)
    assert err.value.field == "top_k"


def test_cache_key_holds_every_field_so_none_can_be_forgotten():
    names = [f.name for f in dataclasses.fields(SamplingParams)]
    base = SamplingParams()
    assert [k for k, _ in base.cache_key()] == names
    other = {
        "max_tokens": 3,
        "temperature": 0.5,
        "top_p": 0.5,
        "top_k": 4,
        "seed": 1,
        "presence_penalty": 0.1,
        "frequency_penalty": 0.1,
        "logit_bias": {5: 1.0},
        "logprobs": 2,
        "stop": ("x",),
        "stop_token_ids": (7,),
    }
    assert set(other) == set(names)  # a new field must be added here too: the test then checks it
    for name, value in other.items():
        changed = base.replace(**{name: value})
        assert changed.cache_key() != base.cache_key(), name
        hash(changed.cache_key())
    assert (
        SamplingParams(logit_bias={1: 1.0, 2: 2.0}).cache_key()
        == SamplingParams(logit_bias={2: 2.0, 1: 1.0}).cache_key()
    )


def test_requests_make_their_params_in_one_method():
    from course_utils.serving import protocol

    body = dict(model="m", prompt="hi", temperature=0.3, top_p=0.9, top_k=5, seed=4, stop=["a", "b"], logprobs=2)
    body.update(presence_penalty=0.5, frequency_penalty=-0.5, logit_bias={"3": -100})
    p = protocol.parse(protocol.CompletionRequest, body).to_sampling_params(stop_token_ids=[9])
    assert p == SamplingParams(
        max_tokens=16,
        temperature=0.3,
        top_p=0.9,
        top_k=5,
        seed=4,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        logit_bias={3: -100.0},
        logprobs=2,
        stop=("a", "b"),
        stop_token_ids=(9,),
    )
    chat = dict(model="m", messages=[{"role": "user", "content": "x"}], logprobs=True, top_logprobs=3, stop="z")
    c = protocol.parse(protocol.ChatCompletionRequest, {**chat, "max_completion_tokens": 7}).to_sampling_params(50)
    assert (c.max_tokens, c.logprobs, c.stop, c.temperature, c.top_k) == (7, 3, ("z",), 1.0, 0)
    plain = protocol.parse(protocol.ChatCompletionRequest, {**chat, "logprobs": False, "top_logprobs": None})
    assert plain.to_sampling_params(50).max_tokens == 50 and plain.to_sampling_params(50).logprobs is None


def test_gen_request_reads_through_to_its_params():
    from course_utils.serving import GenRequest

    short = GenRequest([1, 2], 5, 0.0, seed=3, stop_token_ids=(4,), top_logprobs=2)
    full = GenRequest(
        [1, 2], sampling=SamplingParams(max_tokens=5, temperature=0.0, seed=3, stop_token_ids=[4], logprobs=2)
    )
    assert short == full and (short.max_tokens, short.seed, short.top_logprobs, short.top_p) == (5, 3, 2, 1.0)
    with pytest.raises(TypeError, match="not both"):
        GenRequest([1], 5, sampling=SamplingParams())
    with pytest.raises(AttributeError):
        short.max_tokens = 7
    assert copy.deepcopy(short) == short and pickle.loads(pickle.dumps(short)) == short
    with pytest.raises(SamplingError, match="max_tokens"):
        GenRequest([1], 0)


# ----------------------------------------------------------------------------------------------- tiny values
TINY = [1e-300, 5e-324, 1e-46]  # all three are 0 in float32


@pytest.mark.parametrize("tiny", TINY)
def test_tiny_temperature_and_top_p_act_as_their_limits(tiny):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 300, generator=g) * 5
    for row in logits:
        best = int(row.argmax())
        for kw in (dict(temperature=tiny), dict(top_p=tiny), dict(temperature=tiny, top_p=tiny, top_k=3)):
            assert sample_token(row, [], SamplingParams(**kw), g).token_id == best, kw
        pen = SamplingParams(temperature=tiny, presence_penalty=2.0, logit_bias={7: 100})
        assert sample_token(row, [7], pen, g).token_id == int(penalized_logits(row, [7], pen).argmax())
    rows = sample_tokens(logits, [[]] * 8, [SamplingParams(top_p=tiny)] * 8, [g] * 8)
    assert [c.token_id for c in rows] == logits.argmax(-1).tolist()


def test_no_nan_reaches_multinomial(monkeypatch):
    seen = []
    real = torch.multinomial

    def spy(probs, *a, **kw):
        seen.append(bool(torch.isfinite(probs).all()) and float(probs.sum()) > 0)
        return real(probs, *a, **kw)

    monkeypatch.setattr(torch, "multinomial", spy)
    logits = torch.tensor([3.0, 1.0, -2.0, 3.0 - 1e-3])
    for t in [*TINY, 1e-30, 0.01, 2.0]:
        for top_p in [*TINY, 1e-30, 0.5, 1.0]:
            sample_token(logits, [], SamplingParams(temperature=t, top_p=top_p), torch.Generator().manual_seed(1))
    assert seen and all(seen)


def test_nan_logits_are_a_clear_error_not_a_sample():
    with pytest.raises(ValueError, match="NaN"):
        sample_token(torch.tensor([0.0, math.nan]), [], SamplingParams(), torch.Generator())


# ---------------------------------------------------------------- one sampler, one set of validators (issue #28)
_DRAWS = [dict(temperature=1.0), dict(temperature=0.7, top_k=5), dict(temperature=1.3, top_p=0.8),
          dict(temperature=0.9, top_k=8, top_p=0.6), dict(temperature=0.0)]  # fmt: skip


def _chapter3_draw(row, kw, seed, temperature=None):
    t = kw["temperature"] if temperature is None else temperature
    gen = torch.Generator().manual_seed(seed)
    return int(sample_next_token(row[None], t, kw.get("top_k"), kw.get("top_p"), gen)[0])


@pytest.mark.parametrize("kw", _DRAWS, ids=str)
def test_sample_token_draws_what_chapter_3_draws(kw):
    """Without bias or penalties, serving's sampler is chapter 3's ``sample_next_token`` with the same generator:
    the same token for every seed (the draw lives in one place; serving only adds bias, penalties, logprobs)."""
    logits = torch.randn(40, 64, generator=torch.Generator().manual_seed(28)) * 2
    params = SamplingParams(**kw)
    for seed, row in enumerate(logits):
        got = sample_token(row, [], params, torch.Generator().manual_seed(seed)).token_id
        assert got == _chapter3_draw(row, kw, seed), (kw, seed)


def test_the_same_draw_test_tells_a_different_sampler_apart():
    # the comparison above can fail: a sampler that ignores top_k, or the temperature, draws other tokens
    logits = torch.randn(40, 64, generator=torch.Generator().manual_seed(28)) * 2
    params = SamplingParams(temperature=0.7, top_k=5)
    ours = [sample_token(row, [], params, torch.Generator().manual_seed(s)).token_id for s, row in enumerate(logits)]
    assert ours != [_chapter3_draw(row, dict(temperature=0.7), s) for s, row in enumerate(logits)]  # no top_k
    assert ours != [_chapter3_draw(row, dict(temperature=0.7, top_k=5), s, 2.0) for s, row in enumerate(logits)]


@pytest.mark.parametrize(
    "kw,check",
    [
        (dict(temperature=2.5), lambda: check_number("temperature", 2.5, 0.0, MAX_TEMPERATURE)),
        (dict(top_p=0.0), lambda: check_number("top_p", 0.0, 0.0, 1.0, low_open=True)),
        (dict(max_tokens=True), lambda: check_int("max_tokens", True, 1, MAX_TOKENS)),
        (dict(seed=-1), lambda: check_int("seed", -1, 0, MAX_SEED)),
        (dict(stop_token_ids=[3, -2]), lambda: check_int("stop_token_ids", -2, 0)),
    ],
)
def test_sampling_errors_are_validates_errors_naming_the_field(kw, check):
    """SamplingParams' range checks are course_utils.validate's: the same message, as a SamplingError naming the
    field (and a TypeError too where validate's is one)."""
    with pytest.raises(ValueError) as want:
        check()
    with pytest.raises(SamplingError) as got:
        SamplingParams(**kw)
    assert str(got.value) == str(want.value)
    assert got.value.field == next(iter(kw))
    assert isinstance(got.value, TypeError) == isinstance(want.value, ArgumentTypeError)


def test_the_limits_are_defined_once_in_sampling():
    """protocol's schemas import the limits (MAX_SEED, MAX_TOP_LOGPROBS, ...) from sampling; none is defined twice."""
    limits = [name for name in sampling_module.__all__ if name.startswith(("MAX_", "DEFAULT_"))]
    assert {"MAX_SEED", "MAX_TOP_LOGPROBS"} <= set(limits)
    source = inspect.getsource(protocol)
    for name in limits:
        assert f"\n{name} =" not in source, name
        if hasattr(protocol, name):
            assert getattr(protocol, name) is getattr(sampling_module, name), name
