"""course_utils.serving.generation: the text stream's stop strings and split UTF-8 characters."""

from __future__ import annotations

import pytest

from course_utils.serving import ByteTokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # fixture in conftest.py


def test_text_stream_holds_back_possible_stop_prefixes_and_waits_for_whole_characters():
    from course_utils.serving.generation import TextStream

    tok = ByteTokenizer()
    ts = TextStream(tok, ["END", "\n\n"])
    released = [d.text if d else None for d in (ts.push(t) for t in tok.encode("ab EN"))]
    assert "".join(r or "" for r in released) == "ab "  # "EN" could start "END": held back
    assert ts.push(ord("X")).text == "ENX"  # it did not: released with the next character
    out = [ts.push(t) for t in tok.encode("é")]  # two bytes: nothing until the character is whole
    assert out[0] is None and out[1].text == "é"
    last = [ts.push(t) for t in tok.encode("yEND tail")]
    assert ts.stopped and "".join(d.text for d in last if d) == "y"  # the stop text is never returned
    assert ts.finish("stop").text == "" and ts.finish("stop").finish_reason == "stop"
    rest = TextStream(tok, ["zz"])
    rest.push(ord("a")), rest.push(ord("z"))
    assert rest.finish("length").text == "z"  # held back for a stop that never came: released at the end
