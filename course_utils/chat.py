"""Chapter 8: the course's chat template — how a list of chat messages becomes the one string a model reads.

A chat model is a plain next-token model that was tuned on conversations written in one fixed layout; serving
must render a request's ``messages`` in exactly that layout, or the model sees text it never learned from.
The course template (every marker is plain ASCII, so the course's character tokenizer and the byte tokenizer
both encode it)::

    <|system|>
    You answer from the facts you are given.
    <|user|>
    What is the capital of Veltria?
    <|assistant|>
    Quessa\\x04
    <|user|>
    ...
    <|assistant|>
                                  ← add_generation_prompt=True ends here: the model writes the answer

- each message is ``"<|role|>\\n" + content + "\\n"``; an assistant turn that was already answered ends with
  :data:`END_OF_TURN` then ``"\\n"`` (the model learned to write ``END_OF_TURN`` when it is done);
- :data:`END_OF_TURN` is the single character ``"\\x04"`` (ASCII "end of transmission"): **one** token in the
  course's character-level tokenizer (id :data:`END_OF_TURN_ID` = 4) and in the byte tokenizer, which never occurs
  in the training text. A server passes it as a stop token (``SamplingParams(stop_token_ids=[END_OF_TURN_ID])``),
  so generation ends with ``finish_reason="stop"`` as soon as the model closes its turn. A multi-character
  marker such as ``"<|end|>"`` would need several tokens and a stop *string* instead.

:func:`render_chat` validates the messages (OpenAI's roles ``system``, ``user``, ``assistant``; ``content`` a
string) and raises ``ValueError`` naming the offending field, e.g. ``messages[2].role``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["ROLES", "END_OF_TURN", "END_OF_TURN_ID", "GENERATION_PROMPT", "render_chat", "render_turn", "chat_example"]

ROLES = ("system", "user", "assistant")
END_OF_TURN = "\x04"
END_OF_TURN_ID = ord(END_OF_TURN)  # the token id in the course's ASCII and byte tokenizers
GENERATION_PROMPT = "<|assistant|>\n"


def render_turn(role: str, content: str, *, closed: bool = True) -> str:
    """One message in the template; a ``closed`` assistant turn ends with :data:`END_OF_TURN`."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    if not isinstance(content, str):
        raise TypeError(f"content must be a str, got {type(content).__name__}")
    end = END_OF_TURN if role == "assistant" and closed else ""
    return f"<|{role}|>\n{content}{end}\n"


def _content_of(i: int, message: Any) -> tuple[str, str]:
    if not isinstance(message, dict):
        raise ValueError(f"messages[{i}] must be an object with 'role' and 'content', got {type(message).__name__}")
    role = message.get("role")
    if role not in ROLES:
        raise ValueError(f"messages[{i}].role must be one of {list(ROLES)}, got {role!r}")
    content = message.get("content")
    if isinstance(content, list):  # OpenAI's content parts: only text parts carry anything a text model can read
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ValueError(f"messages[{i}].content[{j}] must be a text part {{'type': 'text', 'text': ...}}")
            texts.append(part["text"])
        content = "".join(texts)
    if not isinstance(content, str):
        raise ValueError(f"messages[{i}].content must be a string, got {type(content).__name__}")
    if END_OF_TURN in content or any(f"<|{r}|>" in content for r in ROLES):
        # a message that writes the markers itself could end or forge a turn (prompt injection via the template)
        raise ValueError(f"messages[{i}].content must not contain the template's markers (<|role|>, \\x04)")
    return role, content


def render_chat(messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
    """The prompt text for ``messages`` (a list of ``{"role": ..., "content": ...}``) in the course template.

    ``add_generation_prompt=True`` ends with ``"<|assistant|>\\n"``, where the model starts its answer. Raises
    ``ValueError`` naming the field (``messages``, ``messages[i].role``, ``messages[i].content``) on bad input.
    """
    if isinstance(messages, (str, bytes, dict)) or not isinstance(messages, Sequence):
        raise ValueError(f"messages must be a list of message objects, got {type(messages).__name__}")
    if not messages:
        raise ValueError("messages must hold at least one message")
    if not isinstance(add_generation_prompt, bool):
        raise TypeError(f"add_generation_prompt must be a bool, got {type(add_generation_prompt).__name__}")
    text = "".join(render_turn(*_content_of(i, m)) for i, m in enumerate(messages))
    return text + (GENERATION_PROMPT if add_generation_prompt else "")


def chat_example(messages: Sequence[dict], answer: str) -> tuple[str, str]:
    """``(prompt, completion)`` for tuning: the rendered prompt and the answer the model must learn to write.

    ``prompt + completion + "\\n"`` is what :func:`render_chat` gives once the answer is appended as an assistant
    message (the final ``"\\n"`` is left out: generation stops at :data:`END_OF_TURN`).
    """
    if not isinstance(answer, str):
        raise TypeError(f"answer must be a str, got {type(answer).__name__}")
    return render_chat(messages), answer + END_OF_TURN
