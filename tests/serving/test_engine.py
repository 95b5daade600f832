"""course_utils.batching: continuous batching with a block KV cache, checked token for token against generate()."""

from __future__ import annotations

import threading
import time

import pytest
import torch
import torch.nn.functional as F
from helpers import fail_sampling_at

from course_utils.batching import Engine, RequestHandle
from course_utils.model import GPT, GPTConfig
from course_utils.sampling import SamplingParams

TIMEOUT = 120


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # fixture in conftest.py


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    # grouped-query attention (2 KV heads for 4 query heads) so the pool's H_kv differs from H
    return GPT(GPTConfig(vocab_size=128, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=128)).eval()


def prompts(lengths, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 128, (n,), generator=g).tolist() for n in lengths]


def greedy(max_tokens, **kw):
    return SamplingParams(max_tokens=max_tokens, temperature=0, **kw)


def reference(model, prompt, k):
    return model.generate(torch.tensor([prompt]), k, temperature=0)[0, len(prompt) :].tolist()


def test_forward_attn_mask_threads_through_every_layer(model):
    """A padding mask through GPT.forward: a left-padded row computes what the row computes alone."""
    p = prompts([5])[0]
    x = torch.tensor([[0, 0, 0] + p])
    valid = torch.tensor([[False] * 3 + [True] * 5])
    mask = valid[:, None, None, :] | torch.eye(8, dtype=torch.bool)[None, None]  # a pad sees itself: no NaN
    padded, _ = model(x, attn_mask=mask)
    alone, _ = model(torch.tensor([p]))
    torch.testing.assert_close(padded[0, 3:], alone[0], atol=1e-5, rtol=1e-5)
    unmasked, _ = model(x)
    assert (unmasked[0, 3:] - alone[0]).abs().max() > 1e-3  # without the mask the pads do change the result


def test_greedy_engine_equals_generate_for_requests_joining_at_different_steps(model):
    ps = prompts([1, 5, 17, 33, 3, 40, 12])
    ks = [20, 7, 30, 16, 40, 5, 25]
    with Engine(model, block_size=8, max_batch=3, record=True) as eng:
        started = threading.Event()
        # the first request's first token releases the others, so they join a batch that is already decoding
        first = eng.submit(ps[0], greedy(ks[0]), on_token=lambda e: started.set())
        assert started.wait(TIMEOUT)
        handles = [first] + [eng.submit(p, greedy(k)) for p, k in zip(ps[1:], ks[1:])]
        results = [h.result(TIMEOUT) for h in handles]
        timeline = eng.timeline
    for r, p, k in zip(results, ps, ks):
        assert r.token_ids == reference(model, p, k)
        assert r.finish_reason == "length" and r.completion_tokens == k and r.prompt_tokens == len(p)
    # requests really overlapped and joined mid-flight: some step ran 3 at once, and request 0 shared a step
    assert max(sum(x is not None for x in row) for row in timeline) == 3
    assert any(row.count(0) and sum(x is not None for x in row) > 1 for row in timeline)
    # a slot freed by a finished request was reused by another one
    slot_owners = {i: {row[i] for row in timeline if row[i] is not None} for i in range(3)}
    assert max(len(v) for v in slot_owners.values()) > 1


def test_newcomers_prompts_ride_in_the_running_batchs_forward_pass(model):
    """Packed steps: one forward pass per step, a newcomer's whole prompt included, no separate prefill pass."""
    ps = prompts([3, 14, 9], seed=5)
    calls = []
    hook = model.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape))
    try:
        with Engine(model, block_size=8, max_batch=3, record=True) as eng:
            started = threading.Event()
            first = eng.submit(ps[0], greedy(30), on_token=lambda e: started.set())
            assert started.wait(TIMEOUT)
            later = [eng.submit(p, greedy(6)) for p in ps[1:]]
            results = [h.result(TIMEOUT) for h in [first] + later]
    finally:
        hook.remove()
    timeline, stats = eng.timeline, eng.stats()  # after close(): the loop's last step is counted
    assert [r.token_ids for r in results] == [reference(model, p, k) for p, k in zip(ps, [30, 6, 6])]
    assert len(calls) == len(timeline) == stats["steps"]  # every pass is a step where every running row decodes
    # some pass carried request 0's next token and a newcomer's 14- or 9-token prompt in one packed row
    assert any(shape[0] == 1 and shape[1] >= 1 + 9 for shape in calls)
    assert stats["prefills"] >= 1


def test_chunked_prefill_feeds_long_prompts_in_pieces_with_the_same_tokens(model):
    ps = prompts([12, 30, 7], seed=6)
    with Engine(model, block_size=8, max_batch=3, max_step_tokens=5, record=True) as eng:
        alone = eng.submit(ps[0], greedy(4)).result(TIMEOUT)
        steps_alone = eng.stats()["steps"]
        with eng.hold():
            handles = [eng.submit(p, greedy(10)) for p in ps]
        results = [h.result(TIMEOUT) for h in handles]
    assert alone.token_ids == reference(model, ps[0], 4)
    assert steps_alone == 3 + 3  # 12 prompt tokens in chunks of 5, 5, 2, then 3 more decode steps
    assert alone.finished_step - alone.submitted_step == steps_alone  # its latency in forward passes
    assert [r.token_ids for r in results] == [reference(model, p, 10) for p in ps]
    with pytest.raises(ValueError, match="max_step_tokens"):
        Engine(model, max_step_tokens=0)


def test_logprobs_are_the_models_and_events_stream_in_order(model):
    p = prompts([6])[0]
    events = []
    with Engine(model, block_size=4) as eng:
        r = eng.submit(p, greedy(5, logprobs=3), on_token=events.append).result(TIMEOUT)
    seq = torch.tensor([p + r.token_ids])
    with torch.no_grad():
        logp = F.log_softmax(model(seq)[0][0], -1)
    for i, (tok, lp, top) in enumerate(zip(r.token_ids, r.logprobs, r.top_logprobs)):
        row = logp[len(p) - 1 + i]
        assert lp == pytest.approx(float(row[tok]), abs=1e-4)
        assert [t for t, _ in top] == torch.topk(row, 3).indices.tolist()
    assert [e.token_id for e in events] == r.token_ids and [e.index for e in events] == list(range(5))
    assert [e.finish_reason for e in events] == [None] * 4 + ["length"]


def test_stop_token_ends_with_stop_and_is_not_returned(model):
    p = prompts([8])[0]
    free = reference(model, p, 10)
    stop = free[3]
    events = []
    with Engine(model) as eng:
        r = eng.submit(p, greedy(10, stop_token_ids=[stop]), on_token=events.append).result(TIMEOUT)
    cut = free.index(stop)
    assert r.token_ids == free[:cut] and r.finish_reason == "stop" and r.completion_tokens == cut + 1
    assert events[-1].token_id is None and events[-1].finish_reason == "stop"


def test_seeded_sampling_is_reproducible_alone_and_in_company(model):
    p = prompts([10])[0]
    params = SamplingParams(max_tokens=24, temperature=1.0, top_p=0.9, seed=1234)
    with Engine(model, block_size=8) as eng:
        alone = eng.submit(p, params).result(TIMEOUT).token_ids
        again = eng.submit(p, params).result(TIMEOUT).token_ids
        other = eng.submit(p, SamplingParams(max_tokens=24, temperature=1.0, seed=99)).result(TIMEOUT).token_ids
    assert alone == again
    assert alone != other
    with Engine(model, block_size=8, max_batch=4) as eng:
        crowd = [
            eng.submit(q, SamplingParams(max_tokens=30, temperature=1.0, seed=i))
            for i, q in enumerate(prompts([3, 20, 7], seed=5))
        ]
        mine = eng.submit(p, params)
        assert mine.result(TIMEOUT).token_ids == alone
        [h.result(TIMEOUT) for h in crowd]


def test_cancel_frees_slot_and_blocks_at_the_step_boundary(model):
    gate = threading.Event()
    with Engine(model, block_size=8, max_batch=2) as eng:
        h = eng.submit(prompts([30])[0], greedy(90), on_token=lambda e: gate.set())
        assert gate.wait(TIMEOUT)
        assert eng.stats()["blocks_used"] >= 4  # 30 prompt tokens + 1 = 4 blocks of 8
        assert eng.cancel(h) is True
        r = h.result(TIMEOUT)  # freed by the engine's own thread at the end of the step in flight
        s = eng.stats()
        assert s["blocks_used"] == 0 and s["running"] == 0 and s["kv_bytes_reserved"] == 0
        assert r.finish_reason == "cancelled" and len(r.token_ids) < 90
        assert eng.cancel(h) is False
        waiting = [eng.submit(prompts([4])[0], greedy(50)) for _ in range(4)]
        assert eng.cancel(waiting[-1]) is True  # cancelling a queued request works too
        assert all(w.result(TIMEOUT).finish_reason == "length" for w in waiting[:-1])
        assert waiting[-1].result(TIMEOUT).finish_reason == "cancelled"


def test_blocks_never_leak_and_waste_is_small(model):
    ps = prompts([5, 60, 9, 31, 2, 44, 17, 23], seed=3)
    ks = [70, 16, 100, 40, 120, 30, 64, 90]
    with Engine(model, block_size=8, max_batch=4) as eng:
        hs = [eng.submit(p, greedy(k)) for p, k in zip(ps, ks)]
        [h.result(TIMEOUT) for h in hs]
        s = eng.stats()
    assert s["blocks_used"] == 0 and s["blocks_free"] == eng.allocator.num_blocks and s["running"] == 0
    assert s["kv_waste"] < 0.10  # at most one partly filled block per sequence
    assert s["kv_waste_maxlen"] > 2 * s["kv_waste"]  # reserving prompt + max_tokens up front wastes far more


def test_preemption_when_blocks_run_out_still_gives_exact_outputs(model):
    ps = prompts([20, 25, 30], seed=7)
    ks = [60, 60, 60]
    # 3 sequences of ~85 tokens need 3 x 11 blocks of 8; give the pool 20 so someone must be preempted
    with Engine(model, block_size=8, num_blocks=20, max_batch=3) as eng:
        results = [h.result(TIMEOUT) for h in [eng.submit(p, greedy(k)) for p, k in zip(ps, ks)]]
        s = eng.stats()
    assert s["preemptions"] >= 1 and s["blocks_used"] == 0
    assert sum(r.preemptions for r in results) == s["preemptions"]
    for r, p, k in zip(results, ps, ks):
        assert r.token_ids == reference(model, p, k)


def test_static_policy_same_tokens_but_waits_for_the_batch(model):
    ps = prompts([4, 6], seed=9)
    with Engine(model, block_size=8, max_batch=2, policy="static") as eng:
        gate = threading.Event()
        short = eng.submit(ps[0], greedy(3))
        long = eng.submit(ps[1], greedy(40), on_token=lambda e: gate.set())
        rs, rl = short.result(TIMEOUT), long.result(TIMEOUT)
        assert eng.stats()["blocks_used"] == 0
    assert rs.token_ids == reference(model, ps[0], 3) and rl.token_ids == reference(model, ps[1], 40)
    assert rs.finished_at >= rl.first_token_at  # the short one was delivered only when the batch ended


def test_bad_input_is_rejected(model):
    with Engine(model) as eng:
        with pytest.raises(ValueError, match="prompt_ids"):
            eng.submit([], greedy(3))
        with pytest.raises(ValueError, match="prompt_ids"):
            eng.submit([500], greedy(3))
        with pytest.raises(TypeError, match="prompt_ids"):
            eng.submit("hello", greedy(3))
        with pytest.raises(ValueError, match="max_tokens"):
            eng.submit([1, 2], greedy(200))
        with pytest.raises(ValueError, match="logit_bias"):
            eng.submit([1], SamplingParams(logit_bias={300: 1.0}))
        with pytest.raises(TypeError, match="params"):
            eng.submit([1], {"max_tokens": 3})
        with pytest.raises(TypeError, match="handle"):
            eng.cancel(3)
    with pytest.raises(RuntimeError, match="closed"):
        eng.submit([1], greedy(2))
    with pytest.raises(ValueError, match="policy"):
        Engine(model, policy="greedy")
    with pytest.raises(ValueError, match="block_size"):
        Engine(model, block_size=0)
    with pytest.raises(ValueError, match="max_wait_ms"):
        Engine(model, policy="static", max_wait_ms=-1)
    assert isinstance(RequestHandle(0), RequestHandle)


def test_broken_callback_fails_only_its_request(model):
    def boom(event):
        raise KeyError("client went away")

    with Engine(model) as eng:
        bad = eng.submit([1, 2, 3], greedy(5), on_token=boom)
        good = eng.submit([4, 5, 6], greedy(5))
        with pytest.raises(RuntimeError, match="failed"):
            bad.result(TIMEOUT)
        assert good.result(TIMEOUT).token_ids == reference(model, [4, 5, 6], 5)
        assert eng.stats()["blocks_used"] == 0


def test_a_held_burst_gives_the_same_schedule_every_time(model):
    from course_utils.batching import run_clients

    jobs = [(p, greedy(k)) for p, k in zip(prompts([3, 9, 4, 12, 6, 2], seed=11), [20, 5, 12, 30, 8, 16])]
    timelines, steps = [], {}
    for policy in ("continuous", "continuous", "static"):
        with Engine(model, block_size=8, max_batch=2, policy=policy, record=True) as eng:
            out = run_clients(eng, jobs, None)
        assert [r.token_ids for r in out["results"]] == [reference(model, p, s.max_tokens) for p, s in jobs]
        timelines.append(eng.timeline)
        steps[policy] = len(eng.timeline)
    assert timelines[0] == timelines[1]
    assert steps["static"] > steps["continuous"]  # static waits for the longest of each pair


def _storm_round(eng, ps, doomed, delays, max_tokens=24, during=None):
    """Submit every prompt from its own thread; the ``doomed`` ones cancel after ``delays[i]`` s; ``during()`` runs
    while the threads do. The handles."""
    handles, errors = [None] * len(ps), []

    def client(i):
        try:
            handles[i] = eng.submit(ps[i], greedy(max_tokens))
            if i in doomed:
                time.sleep(delays[i])
                eng.cancel(handles[i])
            handles[i].result(TIMEOUT)
        except Exception as err:  # noqa: BLE001 - collected and asserted by the caller
            errors.append(err)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(ps))]
    for t in threads:
        t.start()
    if during is not None:
        during()
    for t in threads:
        t.join(TIMEOUT)
    assert not errors, errors[0]
    return handles


@pytest.mark.slow
def test_a_storm_of_cancels_from_other_threads_breaks_no_other_request(model):
    """32 requests, each cancelled at a random moment by another thread or left alone, over several rounds: the
    engine alone touches its sequences' blocks (cancel() queues to the step boundary), so no step ever reads a block
    table emptied under it; every uncancelled request gets its exact tokens and every block comes back."""
    import random

    rng = random.Random(0)
    ps = prompts([rng.randint(1, 40) for _ in range(32)], seed=11)
    refs = [reference(model, p, 24) for p in ps]
    with Engine(model, block_size=4, max_batch=16, max_step_tokens=64) as eng:
        for _ in range(4):
            doomed = {i for i in range(len(ps)) if rng.random() < 0.5}
            handles = _storm_round(eng, ps, doomed, {i: rng.uniform(0.0, 0.05) for i in doomed})
            for i, h in enumerate(handles):
                r = h.result(TIMEOUT)
                if r.finish_reason != "cancelled":
                    assert r.token_ids == refs[i] and r.finish_reason == "length"
                else:
                    assert i in doomed and r.token_ids == refs[i][: len(r.token_ids)]
            s = eng.stats()
            assert s["blocks_used"] == 0 and s["running"] == s["waiting"] == 0
            assert eng.allocator.free == eng.allocator.num_blocks


def test_a_request_whose_sampling_fails_ends_alone(model, monkeypatch):
    """A request that fails in its third sampling step, in a running batch of other requests sent from other
    threads: it alone ends with the error; the others finish with their exact tokens."""
    fail_sampling_at(monkeypatch, seed=666, step=2)
    ps = prompts([3, 17, 8, 30, 5, 12], seed=4)
    refs = [reference(model, p, 20) for p in ps]
    with Engine(model, block_size=8, max_batch=8) as eng:
        bad = []

        def inject():  # joins the batch the other threads' requests are running in
            time.sleep(0.01)
            bad.append(eng.submit(ps[0], SamplingParams(max_tokens=20, temperature=0.7, seed=666)))

        handles = _storm_round(eng, ps, set(), {}, max_tokens=20, during=inject)
        with pytest.raises(RuntimeError, match="failed in the engine") as err:
            bad[0].result(TIMEOUT)
        assert "boom" in repr(err.value.__cause__)
        assert [h.result(TIMEOUT).token_ids for h in handles] == refs
        assert eng.stats()["blocks_used"] == 0
