"""OpenAI compatibility of course_utils.serving, checked with the clients people use: the official ``openai`` client
(sync and async), raw server-sent events, and langchain-openai's ``ChatOpenAI`` — on 127.0.0.1 only, every request
loop bounded, every client with a timeout.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest
import torch
from helpers import tiny_gpt_backend

from course_utils.chat import END_OF_TURN, render_chat
from course_utils.serving import GenRequest, create_app, start_server

KEY = "sk-course-compat-0001"
MODEL = "tiny-gpt"


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # fixture in conftest.py


@pytest.fixture(scope="module")
def backend():
    return tiny_gpt_backend(MODEL)


@pytest.fixture(scope="module")
def url(backend):
    app = create_app({MODEL: backend}, api_keys={KEY: "alice"}, max_tokens_limit=64)
    with start_server(app) as base:
        yield base


def sync(url, key=KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, timeout=30.0, max_retries=0)


def chat_ref(backend, messages, max_tokens, **kw):
    """What the server must answer: the backend run directly on the rendered template, cut at END_OF_TURN."""
    ids = backend.tokenizer.encode(render_chat(messages))
    gen = backend.generate_batch([GenRequest(ids, max_tokens, 0.0, stop_token_ids=(ord(END_OF_TURN),), **kw)])[0]
    return gen.text.split(END_OF_TURN)[0], ("stop" if END_OF_TURN in gen.text else "length")


MESSAGES = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Capital of Veltria?"}]


# ---------------------------------------------------------------- chat completions
def test_chat_completion_round_trip_and_envelope(url, backend):
    r = sync(url).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12, temperature=0)
    text, finish = chat_ref(backend, MESSAGES, 12)
    assert r.object == "chat.completion" and r.model == MODEL and r.id.startswith("chatcmpl-")
    assert r.created > 0 and r.system_fingerprint
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content == text
    assert r.choices[0].finish_reason == finish
    assert r.usage.prompt_tokens == len(render_chat(MESSAGES).encode()) and 1 <= r.usage.completion_tokens <= 12


def test_content_parts_are_read_as_text(url):
    parts = [
        {"role": "user", "content": [{"type": "text", "text": "Capital of "}, {"type": "text", "text": "Veltria?"}]}
    ]
    c = sync(url)
    a = c.chat.completions.create(model=MODEL, messages=parts, max_tokens=6, temperature=0)
    b = c.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Capital of Veltria?"}], max_tokens=6, temperature=0
    )
    assert a.choices[0].message.content == b.choices[0].message.content


def test_max_completion_tokens_wins_over_max_tokens(url):
    r = sync(url).chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=20, max_completion_tokens=3, temperature=0, logit_bias={"65": 100}
    )  # "A" forever: no early stop
    assert r.usage.completion_tokens == 3 and r.choices[0].message.content == "AAA"


def test_chat_stream_starts_with_the_role_and_joins_to_the_plain_answer(url, backend):
    chunks = list(
        sync(url).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12, temperature=0, stream=True)
    )
    text, finish = chat_ref(backend, MESSAGES, 12)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == text
    assert chunks[-1].choices[0].finish_reason == finish
    assert all(c.object == "chat.completion.chunk" and c.usage is None for c in chunks)


def test_include_usage_adds_a_last_chunk_without_choices(url):
    stream = sync(url).chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=5, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1
    assert chunks[-1].usage.total_tokens == chunks[-1].usage.prompt_tokens + chunks[-1].usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def _raw_events(url, path, body) -> list[str]:
    with (
        httpx.Client(timeout=30) as h,
        h.stream("POST", url + path, json=body, headers={"Authorization": f"Bearer {KEY}"}) as r,
    ):
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        return [line[len("data: ") :] for line in r.iter_lines() if line.startswith("data: ")]


def test_raw_sse_framing_usage_null_and_done_last(url):
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 4, "temperature": 0, "stream": True}
    plain = _raw_events(url, "/v1/chat/completions", body)
    assert plain[-1] == "[DONE]" and plain.count("[DONE]") == 1
    assert all("usage" not in json.loads(e) for e in plain[:-1])  # not asked: no usage key at all
    asked = _raw_events(url, "/v1/chat/completions", {**body, "stream_options": {"include_usage": True}})
    events = [json.loads(e) for e in asked[:-1]]
    assert all(e["usage"] is None for e in events[:-1]) and events[-1]["choices"] == []
    assert events[-1]["usage"]["completion_tokens"] >= 1 and asked[-1] == "[DONE]"
    assert all({"id", "object", "created", "model", "system_fingerprint"} <= set(e) for e in events)


def test_n_seeded_choices_are_distinct_and_reproducible(url):
    c = sync(url)
    kw = dict(model=MODEL, messages=MESSAGES, max_tokens=8, temperature=1.0, seed=11, n=3)
    a, b = c.chat.completions.create(**kw), c.chat.completions.create(**kw)
    texts = [ch.message.content for ch in a.choices]
    assert [ch.index for ch in a.choices] == [0, 1, 2]
    assert texts == [ch.message.content for ch in b.choices]
    assert len(set(texts)) > 1  # choice j samples with seed + j


def test_stop_string_cuts_the_text_and_is_not_returned(url):
    c = sync(url)
    full = (
        c.completions.create(model=MODEL, prompt="The cat", max_tokens=24, temperature=0, logit_bias={"4": -100})
        .choices[0]
        .text
    )
    assert len(full) >= 8
    stop = full[4:7]  # three characters: three tokens, so the stop string spans tokens
    cut = full[: full.index(stop)]
    for stream in (False, True):
        r = c.completions.create(
            model=MODEL,
            prompt="The cat",
            max_tokens=24,
            temperature=0,
            stop=[stop, "zzzz"],
            stream=stream,
            logit_bias={"4": -100},
        )
        chunks = list(r) if stream else [r]
        assert "".join(ch.choices[0].text for ch in chunks) == cut
        assert chunks[-1].choices[0].finish_reason == "stop"


def test_chat_logprobs_with_top_alternatives(url):
    r = sync(url).chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=5,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
        logit_bias={"4": -100},
    )
    content = r.choices[0].logprobs.content
    assert len(content) == 5 and "".join(t.token for t in content) == r.choices[0].message.content
    for t in content:
        assert len(t.top_logprobs) == 3 and t.logprob <= 0
        assert t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob >= t.top_logprobs[2].logprob
        assert t.bytes == list(t.token.encode())


def test_penalties_and_logit_bias_reach_the_sampler(url, backend):
    kw = dict(presence_penalty=1.5, frequency_penalty=2.0)
    r = sync(url).completions.create(model=MODEL, prompt="aaaa", max_tokens=10, temperature=0, **kw)
    ref = backend.generate_batch([GenRequest(backend.tokenizer.encode("aaaa"), 10, 0.0, **kw)])[0]
    plain = backend.generate("aaaa", max_tokens=10)
    assert r.choices[0].text == ref.text and ref.token_ids != plain.token_ids
    forced = sync(url).completions.create(model=MODEL, prompt="x", max_tokens=4, logit_bias={"66": 100}, user="u1")
    assert forced.choices[0].text == "BBBB"


# ---------------------------------------------------------------- completions
def test_completions_echo_list_prompts_and_token_ids(url, backend):
    c = sync(url)
    r = c.completions.create(model=MODEL, prompt=["ab", "xyz"], n=2, max_tokens=4, temperature=0, echo=True)
    assert [ch.index for ch in r.choices] == [0, 1, 2, 3]
    for i, prompt in enumerate(["ab", "ab", "xyz", "xyz"]):
        assert r.choices[i].text == prompt + backend.generate(prompt, max_tokens=4).text
    assert r.usage.prompt_tokens == 5 and r.usage.completion_tokens == 16
    ids = c.completions.create(model=MODEL, prompt=[104, 105], max_tokens=4, temperature=0)
    hi = c.completions.create(model=MODEL, prompt="hi", max_tokens=4, temperature=0)
    assert ids.choices[0].text == hi.choices[0].text
    many = c.completions.create(model=MODEL, prompt=[[104, 105], [120]], max_tokens=2, temperature=0)
    assert len(many.choices) == 2
    streamed = c.completions.create(
        model=MODEL, prompt=["ab", "xyz"], n=2, max_tokens=4, temperature=0, echo=True, stream=True
    )
    texts = ["", "", "", ""]
    for ch in streamed:
        texts[ch.choices[0].index] += ch.choices[0].text
    assert texts == [ch.text for ch in r.choices]


def test_completion_logprobs_k_plain_and_streamed(url, backend):
    c = sync(url)
    r = c.completions.create(model=MODEL, prompt="abc", max_tokens=5, temperature=0, logprobs=2)
    lp = r.choices[0].logprobs
    ref = backend.generate("abc", max_tokens=5)
    assert lp.token_logprobs == pytest.approx(ref.logprobs, abs=1e-4)
    assert all(len(t) == 2 for t in lp.top_logprobs) and lp.text_offset[0] == 0
    chunks = list(c.completions.create(model=MODEL, prompt="abc", max_tokens=5, temperature=0, logprobs=2, stream=True))
    streamed = [x for ch in chunks if ch.choices[0].logprobs for x in ch.choices[0].logprobs.token_logprobs]
    assert streamed == pytest.approx(ref.logprobs, abs=1e-4)


def test_completion_echo_with_logprobs_scores_the_prompt_too(url, backend):
    """echo + logprobs (legacy completions): the prompt's tokens get logprobs as well, the first one null."""
    c = sync(url)
    r = c.completions.create(model=MODEL, prompt="abcd", max_tokens=3, temperature=0, logprobs=2, echo=True)
    lp, text = r.choices[0].logprobs, r.choices[0].text
    ids = backend.tokenizer.encode(text)
    with torch.no_grad():  # the whole text's log-probabilities from one plain forward pass
        full = torch.log_softmax(backend.model(torch.tensor([ids]))[0][0], -1)
    want = [None] + [float(full[i - 1, ids[i]]) for i in range(1, len(ids))]
    assert lp.tokens == [backend.tokenizer.decode([t]) for t in ids] and len(ids) == 4 + 3
    assert lp.token_logprobs[0] is None and lp.token_logprobs[1:] == pytest.approx(want[1:], abs=1e-4)
    assert lp.top_logprobs[0] is None and all(len(t) == 2 for t in lp.top_logprobs[1:])
    for i in range(1, len(ids)):  # each position's alternatives are the two most likely next tokens
        best = torch.topk(full[i - 1], 2)
        assert sorted(lp.top_logprobs[i].values(), reverse=True) == pytest.approx(best.values.tolist(), abs=1e-4)
    assert lp.text_offset == list(range(len(ids)))  # one byte per token: offsets count the echoed prompt
    streamed = list(
        c.completions.create(
            model=MODEL, prompt="abcd", max_tokens=3, temperature=0, logprobs=2, echo=True, stream=True
        )
    )
    got = [x for ch in streamed if ch.choices[0].logprobs for x in ch.choices[0].logprobs.token_logprobs]
    assert got[0] is None and got[1:] == pytest.approx(want[1:], abs=1e-4)
    offsets = [x for ch in streamed if ch.choices[0].logprobs for x in ch.choices[0].logprobs.text_offset]
    assert offsets == lp.text_offset
    bare = c.completions.create(model=MODEL, prompt="abcd", max_tokens=3, temperature=0, logprobs=0, echo=True)
    assert bare.choices[0].logprobs.top_logprobs is None
    assert bare.choices[0].logprobs.token_logprobs[1:] == pytest.approx(want[1:], abs=1e-4)


# ---------------------------------------------------------------- errors and models
@pytest.mark.parametrize(
    "kw,param",
    [
        (dict(messages=[{"role": "tool", "content": "x"}]), "messages.0.role"),
        (dict(messages=[]), "messages"),
        (
            dict(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
            "messages.0.content.0.type",
        ),
        (dict(messages=MESSAGES, temperature=5), "temperature"),
        (dict(messages=MESSAGES, n=0), "n"),
        (dict(messages=MESSAGES, top_logprobs=21, logprobs=True), "top_logprobs"),
        (dict(messages=MESSAGES, stop=["a", "b", "c", "d", "e"]), "stop"),
        (dict(messages=MESSAGES, max_completion_tokens=10_000), "max_completion_tokens"),
    ],
)
def test_invalid_parameters_are_bad_request_errors_naming_the_field(url, kw, param):
    with pytest.raises(openai.BadRequestError) as info:
        sync(url).chat.completions.create(model=MODEL, **kw)
    assert info.value.body["param"] == param and info.value.body["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "kw,param",
    [
        (dict(extra_body={"frobnicate": 1}), "frobnicate"),  # a field the API does not know
        (dict(extra_body={"Temperature": 0.5}), "Temperature"),  # names are case-sensitive
        (dict(tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}]), "tools"),
        (dict(tool_choice="required"), "tool_choice"),
        (dict(response_format={"type": "json_object"}), "response_format"),
        (dict(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}), "response_format"),
        (dict(audio={"voice": "alloy", "format": "wav"}), "audio"),
        (dict(modalities=["text", "audio"]), "modalities"),
        (dict(reasoning_effort="high"), "reasoning_effort"),
    ],
)
def test_unknown_and_unsupported_fields_are_bad_requests_naming_them(url, kw, param):
    with pytest.raises(openai.BadRequestError) as info:
        sync(url).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2, **kw)
    assert info.value.body["param"] == param and info.value.body["type"] == "invalid_request_error"
    if "extra_body" in kw:
        assert info.value.body["message"] == f"Unrecognized request argument supplied: {param}"


def test_every_field_the_official_client_sends_is_known(url):
    """Defaults of unsupported features and answer-neutral hints are accepted; the answer is unchanged."""
    c = sync(url)
    plain = c.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4, temperature=0)
    hinted = c.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=4,
        temperature=0,
        tools=[],
        tool_choice="none",
        parallel_tool_calls=False,
        response_format={"type": "text"},
        modalities=["text"],
        metadata={"run": "tests"},
        store=False,
        service_tier="auto",
        prompt_cache_key="k",
        safety_identifier="user-1",
        audio=None,
    )
    assert hinted.choices[0].message.content == plain.choices[0].message.content
    done = c.completions.create(model=MODEL, prompt="ab", max_tokens=2, best_of=1, suffix="", user="u")
    assert done.choices[0].finish_reason == "length"
    for kw, param in ((dict(suffix="!"), "suffix"), (dict(best_of=3), "best_of"), (dict(extra_body={"x": 1}), "x")):
        with pytest.raises(openai.BadRequestError) as info:
            c.completions.create(model=MODEL, prompt="ab", max_tokens=2, **kw)
        assert info.value.body["param"] == param


def test_unknown_model_wrong_key_and_model_lookup(url):
    c = sync(url)
    with pytest.raises(openai.NotFoundError) as info:
        c.chat.completions.create(model="gpt-17", messages=MESSAGES)
    assert info.value.body["code"] == "model_not_found"
    with pytest.raises(openai.AuthenticationError):
        sync(url, key="sk-wrong-key-000").chat.completions.create(model=MODEL, messages=MESSAGES)
    assert c.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("gpt-17")


def test_async_client_chat_and_completions_streamed_and_not(url, backend):
    async def main():
        c = openai.AsyncOpenAI(base_url=url + "/v1", api_key=KEY, timeout=30.0, max_retries=0)
        plain = await c.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=6, temperature=0)
        parts = [
            ch.choices[0].delta.content or ""
            async for ch in await c.chat.completions.create(
                model=MODEL, messages=MESSAGES, max_tokens=6, temperature=0, stream=True
            )
        ]
        many = await asyncio.gather(
            *(c.completions.create(model=MODEL, prompt=f"p{i}", max_tokens=3, temperature=0) for i in range(4))
        )
        text = "".join(
            [
                ch.choices[0].text
                async for ch in await c.completions.create(
                    model=MODEL, prompt="p0", max_tokens=3, temperature=0, stream=True
                )
            ]
        )
        await c.close()
        return plain, "".join(parts), many, text

    plain, streamed, many, text = asyncio.run(asyncio.wait_for(main(), 120))
    assert plain.choices[0].message.content == streamed == chat_ref(backend, MESSAGES, 6)[0]
    assert [m.choices[0].text for m in many] == [backend.generate(f"p{i}", max_tokens=3).text for i in range(4)]
    assert text == many[0].choices[0].text


# ---------------------------------------------------------------- a third-party client
def test_langchain_chat_openai_invoke_and_stream(url, backend):
    langchain_openai = pytest.importorskip("langchain_openai", reason="pip install -r requirements-test.txt")
    llm = langchain_openai.ChatOpenAI(
        model=MODEL, base_url=url + "/v1", api_key=KEY, temperature=0, max_tokens=6, timeout=30, max_retries=0
    )
    msgs = [("system", MESSAGES[0]["content"]), ("human", MESSAGES[1]["content"])]
    expected = chat_ref(backend, MESSAGES, 6)[0]
    assert llm.invoke(msgs).content == expected
    assert "".join(ch.content for ch in llm.stream(msgs)) == expected


# ---------------------------------------------------------------- the trained models, as the command line serves them
def test_course_chat_answers_held_out_questions_through_chat_completions():
    from course_utils.served_models import chat_examples, wilson_interval
    from course_utils.serving import load_backend

    app = create_app({n: load_backend(n) for n in ("tiny-gpt", "course-chat")}, api_keys=[KEY])
    convs = chat_examples(40, split="eval")
    with start_server(app) as base:
        c = sync(base)
        answers = [
            c.chat.completions.create(model="course-chat", messages=m, temperature=0, max_tokens=24) for m, _ in convs
        ]
        lc = pytest.importorskip("langchain_openai").ChatOpenAI(
            model="course-chat",
            base_url=base + "/v1",
            api_key=KEY,
            temperature=0,
            max_tokens=24,
            timeout=60,
            max_retries=0,
        )
        via_langchain = lc.invoke([("system", convs[0][0][0]["content"]), ("human", convs[0][0][1]["content"])])
    right = sum(a.choices[0].message.content == want for a, (_, want) in zip(answers, convs))
    low, high = wilson_interval(right, len(convs))  # 95% interval: 40 questions are a small sample
    assert low > 0.7, (right, len(convs), low, high)  # the engine's own test measures 93.0% on 300
    assert all(a.choices[0].finish_reason == "stop" for a in answers)  # the model closes its turn
    assert via_langchain.content == answers[0].choices[0].message.content


# ---------------------------------------------------------------- issue 27: OpenAI's exact semantics
def test_developer_role_is_the_system_role(url):
    c = sync(url)
    dev = [{"role": "developer", "content": MESSAGES[0]["content"]}, MESSAGES[1]]
    a = c.chat.completions.create(model=MODEL, messages=dev, max_tokens=8, temperature=0)
    b = c.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8, temperature=0)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.usage.prompt_tokens == b.usage.prompt_tokens  # the same rendered prompt


@pytest.mark.parametrize(
    "messages,param",
    [
        ([MESSAGES[1], {"role": "tool", "content": "42", "tool_call_id": "c1"}], "messages.1.role"),
        ([MESSAGES[1], {"role": "function", "content": "42", "name": "f"}], "messages.1.role"),
        (
            [
                MESSAGES[1],
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
                },
            ],
            "messages.1.tool_calls",
        ),
    ],
)
def test_tool_messages_say_tools_are_not_supported(url, messages, param):
    with pytest.raises(openai.BadRequestError) as info:
        sync(url).chat.completions.create(model=MODEL, messages=messages, max_tokens=2)
    assert "tools are not supported" in info.value.body["message"] and info.value.body["param"] == param


def test_image_parts_say_they_are_not_supported(url):
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    msgs = [{"role": "user", "content": [{"type": "text", "text": "what is this?"}, image]}]
    with pytest.raises(openai.BadRequestError) as info:
        sync(url).chat.completions.create(model=MODEL, messages=msgs, max_tokens=2)
    assert "'image_url' content parts are not supported" in info.value.body["message"]
    assert info.value.body["param"] == "messages.0.content.1.type"


def test_null_user_content_is_a_bad_request(url):
    with pytest.raises(openai.BadRequestError) as info:
        sync(url).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": None}], max_tokens=2)
    assert info.value.body["param"] == "messages.0.content" and "null" in info.value.body["message"]


def test_stream_options_need_stream_true(url):
    c = sync(url)
    for stream in (False, None):
        kw = {} if stream is None else {"stream": stream}
        with pytest.raises(openai.BadRequestError) as info:
            c.chat.completions.create(
                model=MODEL, messages=MESSAGES, max_tokens=2, stream_options={"include_usage": True}, **kw
            )
        assert info.value.body["param"] == "stream_options"
    with pytest.raises(openai.BadRequestError) as info:
        c.completions.create(model=MODEL, prompt="ab", max_tokens=2, stream_options={"include_usage": True})
    assert info.value.body["param"] == "stream_options"


def test_error_bodies_carry_exactly_openais_keys(url):
    with httpx.Client(timeout=30) as h:
        bad = h.post(url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, json={"model": MODEL})
        unauth = h.get(url + "/v1/models")
        missing = h.get(url + "/v1/nowhere", headers={"Authorization": f"Bearer {KEY}"})
    for r in (bad, unauth, missing):
        assert set(r.json()) == {"error"} and set(r.json()["error"]) == {"message", "type", "param", "code"}, r.text


def test_model_cards_have_a_real_created_time(url):
    import time

    cards = sync(url).models.list().data
    assert cards and all(time.time() - 3600 < m.created <= time.time() for m in cards)
    assert sync(url).models.retrieve(MODEL).created == cards[0].created


@pytest.mark.parametrize(
    "kw,param,words",
    [
        (dict(stop=["a", "b", "c", "d", "e"]), "stop", "at most 4"),
        (dict(n=9), "n", "less than or equal to 8"),
        (dict(messages=[{"role": "user", "content": ""}] * 0), "messages", "at least 1"),
    ],
)
def test_limit_errors_name_the_limit(url, kw, param, words):
    body = {"messages": MESSAGES, "max_tokens": 2, **kw}
    with pytest.raises(openai.BadRequestError) as info:
        sync(url).chat.completions.create(model=MODEL, **body)
    assert info.value.body["param"] == param and words in info.value.body["message"], info.value.body


def test_a_5000_digit_max_tokens_is_a_clear_error_about_the_value(url):
    raw = f'{{"model": "{MODEL}", "prompt": "ab", "max_tokens": {"9" * 5000}}}'
    with httpx.Client(timeout=30) as h:
        r = h.post(
            url + "/v1/completions",
            headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
            content=raw,
        )
    err = r.json()["error"]
    assert r.status_code == 400 and err["param"] == "max_tokens" and "5000 digits" in err["message"]
    assert "JSON" not in err["message"]
