"""Fixtures the serving tests share: a tiny GPT behind the server's backend, and a server with two API keys
(``start_server`` shuts it down even when a test fails)."""

import pytest
from helpers import KEY, OTHER_KEY, tiny_gpt

from course_utils.serving import GPTBackend, create_app, start_server


@pytest.fixture(scope="module")
def backend():
    return GPTBackend(tiny_gpt(), name="tiny-gpt")


@pytest.fixture(scope="module")
def server(backend):
    app = create_app(
        {"tiny-gpt": backend}, api_keys={KEY: "alice", OTHER_KEY: "bob"}, max_body_bytes=4096, max_tokens_limit=48
    )
    with start_server(app) as url:
        yield url, app
