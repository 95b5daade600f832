"""What every lab check shares: run the learner's function, compare with the reference, explain a difference.

A check prints one ✅ line on success. On failure it raises :class:`CheckFailed` (an ``AssertionError``) whose
message names the check and its exercise, the input that exposed the problem, what differed (type, shape, dtype,
the first mismatching value) and a hint. In a notebook the failure renders as that short box only
(:meth:`CheckFailed._render_traceback_`, IPython's hook), not as a traceback through the checking code.

Each check declares the exercise it grades with ``@exercise("N.M")``; the number then appears in its messages,
as it does in the lab's heading, stub and hints.
"""

from __future__ import annotations

import math
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["CheckFailed", "fail", "call", "compare", "passed", "describe", "exercise", "EXERCISE_OF"]

EXERCISE_OF: dict[str, str] = {}  # check name -> "N.M", filled by @exercise
_CHECKS_DIR = str(Path(__file__).resolve().parent)


def exercise(number: str):
    """Declare which lab exercise a check grades: ``@exercise("1.3")`` above ``def check_train_bpe``."""
    if not isinstance(number, str) or not number.replace(".", "", 1).isdigit() or "." not in number:
        raise ValueError(f"number must be 'N.M' (chapter.exercise), got {number!r}")

    def register(check: Callable) -> Callable:
        EXERCISE_OF[check.__name__] = number
        check.exercise = number
        return check

    return register


class CheckFailed(AssertionError):
    """A lab check found a difference; the message says what differed and how to fix it."""

    def _where(self) -> str | None:
        """The learner's line that raised, when the check failed because their function crashed."""
        cause = self.__cause__ or self.__context__
        if cause is None or isinstance(cause, (NotImplementedError, CheckFailed)):
            return None
        frames = [
            f
            for f in traceback.extract_tb(cause.__traceback__)
            if not str(Path(f.filename).resolve()).startswith(_CHECKS_DIR)
        ]
        if not frames:
            return None
        f = frames[-1]
        place = f"line {f.lineno}" + (
            ""
            if f.filename.startswith("<ipython-input") or "ipykernel" in f.filename
            else f" of {Path(f.filename).name}"
        )
        return f"  where: {place}, in {f.name}: {(f.line or '').strip()}"

    def _render_traceback_(self) -> list[str]:
        """IPython's hook: show the learner the failure box, not the checking code's traceback."""
        lines = str(self).splitlines()
        where = self._where()
        if where:
            lines.insert(1, where)
        width = min(100, max(len(ln) for ln in lines) + 2)
        red, reset = "\x1b[31m", "\x1b[0m"
        return [f"{red}❌ {lines[0]}{reset}", *lines[1:], "─" * width]


def _num(x: float) -> str:
    """4 significant digits, still visibly a float (``2.0``, not ``2``)."""
    text = f"{x:.4g}"
    return text + ".0" if text.lstrip("-").isdigit() else text


def _short(value: Any, limit: int) -> str:
    """repr with floats at 4 significant digits, nested lists/tuples/dicts cut to a few items."""
    if isinstance(value, float):
        return _num(value)
    if isinstance(value, (list, tuple)):
        items = [_short(v, limit) for v in value[:8]]
        more = ", ..." if len(value) > 8 else ""
        body = ", ".join(items) + more
        return f"[{body}]" if isinstance(value, list) else f"({body}{',' if len(value) == 1 else ''})"
    if isinstance(value, dict):
        items = [f"{_short(k, limit)}: {_short(v, limit)}" for k, v in list(value.items())[:6]]
        return "{" + ", ".join(items) + (", ..." if len(value) > 6 else "") + "}"
    return repr(value)


def describe(value: Any, limit: int = 120) -> str:
    """A short, readable description of an input or output for a failure message: shapes and a few values."""
    try:
        if isinstance(value, torch.Tensor):
            flat = value.detach().flatten()[:6].tolist()
            body = "[" + ", ".join(_num(v) if isinstance(v, float) else repr(v) for v in flat)
            body += ", ...]" if value.numel() > 6 else "]"
            return f"tensor(shape={tuple(value.shape)}, dtype={value.dtype}, values={body})"
    except ImportError:  # pragma: no cover - torch is a hard requirement of the course
        pass
    try:
        if isinstance(value, np.ndarray):
            return f"array(shape={value.shape}, dtype={value.dtype})"
    except ImportError:  # pragma: no cover
        pass
    text = _short(value, limit)
    if len(text) <= limit:
        return text
    return text[: limit - 5] + " ...]" if text[:1] in "[(" else text[: limit - 4] + " ..."


def fail(check: str, problem: str, *, inputs: dict | None = None, hint: str | None = None) -> None:
    """Raise :class:`CheckFailed` with a message in the course's standard layout."""
    number = EXERCISE_OF.get(check)
    lines = [f"{check} (Exercise {number}): {problem}" if number else f"{check}: {problem}"]
    if inputs:
        shown = ", ".join(f"{k}={describe(v)}" for k, v in inputs.items())
        lines.append(f"  input: {shown}")
    if hint:
        lines.append(f"  hint: {hint}")
    raise CheckFailed("\n".join(lines))


def call(check: str, fn: Callable, *args, inputs: dict | None = None, **kwargs):
    """Call the learner's ``fn``; turn 'not done yet' and crashes into a clear check failure."""
    if not callable(fn):
        fail(
            check, f"expected a function, got {type(fn).__name__}", hint="pass the function itself, without calling it"
        )
    try:
        return fn(*args, **kwargs)
    except NotImplementedError as err:
        fail(
            check,
            f"your function still raises NotImplementedError({err})",
            hint="replace the `raise NotImplementedError(...)` line with your code",
        )
    except CheckFailed:
        raise
    except Exception as err:  # the learner's bug: say where it happened, keep the original as the cause
        fail(check, f"your function raised {type(err).__name__}: {err}", inputs=inputs)


def _is_tensor(x) -> bool:
    try:
        return isinstance(x, torch.Tensor)
    except ImportError:  # pragma: no cover
        return False


def _is_array(x) -> bool:
    try:
        return isinstance(x, np.ndarray)
    except ImportError:  # pragma: no cover
        return False


def _compare_arrays(got, expected, what, atol, rtol, check_dtype):
    """Return a description of the first difference between two tensors/arrays, or None."""

    if _is_tensor(expected) and not _is_tensor(got):
        return f"{what}: expected a torch.Tensor, got {type(got).__name__}"
    if _is_array(expected) and not (_is_array(got) or _is_tensor(got)):
        return f"{what}: expected a numpy array, got {type(got).__name__}"
    if tuple(got.shape) != tuple(expected.shape):
        return f"{what}: expected shape {tuple(expected.shape)}, got {tuple(got.shape)}"
    if check_dtype and got.dtype != expected.dtype:
        return f"{what}: expected dtype {expected.dtype}, got {got.dtype}"
    g = got.detach().cpu().double().numpy() if _is_tensor(got) else np.asarray(got, dtype=float)
    e = expected.detach().cpu().double().numpy() if _is_tensor(expected) else np.asarray(expected, dtype=float)
    bad = ~np.isclose(g, e, atol=atol, rtol=rtol, equal_nan=True)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        n_bad = int(bad.sum())
        return (
            f"{what}: {n_bad} of {bad.size} values differ; first at index {idx}: "
            f"expected {e[idx]:.6g}, got {g[idx]:.6g} (max abs diff {np.nanmax(np.abs(g - e)):.3g})"
        )
    return None


def _difference(got, expected, what, atol, rtol, check_dtype):
    if _is_tensor(expected) or _is_array(expected):
        if not (_is_tensor(got) or _is_array(got)):
            return f"{what}: expected an array/tensor of shape {tuple(expected.shape)}, got {type(got).__name__}"
        return _compare_arrays(got, expected, what, atol, rtol, check_dtype)
    if isinstance(expected, dict):
        if not isinstance(got, dict):
            return f"{what}: expected a dict, got {type(got).__name__}"
        missing = [k for k in expected if k not in got]
        extra = [k for k in got if k not in expected]
        if missing:
            return f"{what}: missing key {missing[0]!r} (expected {len(expected)} keys, got {len(got)})"
        if extra:
            return f"{what}: unexpected key {extra[0]!r} (expected {len(expected)} keys, got {len(got)})"
        for k in expected:
            d = _difference(got[k], expected[k], f"{what}[{k!r}]", atol, rtol, check_dtype)
            if d:
                return d
        return None
    if isinstance(expected, (list, tuple)):
        if not isinstance(got, (list, tuple)):
            return f"{what}: expected a {type(expected).__name__}, got {type(got).__name__}"
        if len(got) != len(expected):
            return f"{what}: expected length {len(expected)}, got {len(got)}"
        for i, (g, e) in enumerate(zip(got, expected)):
            d = _difference(g, e, f"{what}[{i}]", atol, rtol, check_dtype)
            if d:
                return d
        return None
    if isinstance(expected, float) and not isinstance(got, bool) and isinstance(got, (int, float)):
        if not math.isclose(got, expected, rel_tol=rtol, abs_tol=atol) and not (
            math.isnan(got) and math.isnan(expected)
        ):
            return f"{what}: expected {expected:.6g}, got {got:.6g}"
        return None
    if _is_tensor(got) and got.numel() == 1 and isinstance(expected, (int, float)):
        return _difference(float(got), float(expected), what, atol, rtol, check_dtype)
    if got != expected:
        return f"{what}: expected {describe(expected)}, got {describe(got)}"
    return None


def compare(
    check: str,
    got,
    expected,
    *,
    inputs: dict | None = None,
    hint: str | None = None,
    what: str = "result",
    atol: float = 1e-5,
    rtol: float = 1e-4,
    check_dtype: bool = False,
) -> None:
    """Fail with the first difference between ``got`` and ``expected`` (nested lists/dicts/tensors allowed)."""
    diff = _difference(got, expected, what, atol, rtol, check_dtype)
    if diff:
        fail(check, diff, inputs=inputs, hint=hint)


def passed(check: str, n_cases: int, note: str = "") -> None:
    """Print the one-line success message."""
    extra = f" — {note}" if note else ""
    number = EXERCISE_OF.get(check)
    print(f"✅ {check} passed ({f'Exercise {number}, ' if number else ''}{n_cases} cases){extra}")


# shared by chapters 3 and 5's open training exercises
class CountingData:
    """The corpus, counting the tokens drawn through ``get_batch`` per split (everything else passes through)."""

    def __init__(self, data):
        self._data, self.train_tokens, self.other_tokens = data, 0, {}

    def get_batch(self, split, batch_size, block_size, generator=None, **kwargs):
        if split == "train":
            self.train_tokens += batch_size * block_size
        else:  # counted, not refused: the check then says what it saw instead of the learner's code crashing
            self.other_tokens[split] = self.other_tokens.get(split, 0) + batch_size * block_size
        return self._data.get_batch(split, batch_size, block_size, generator, **kwargs)

    def __getattr__(self, name):
        if name == "ids":  # the raw token tensors would bypass the count
            raise AttributeError("draw training tokens with data.get_batch(...): the budget counts them there")
        return getattr(self._data, name)


def fail_if_not_train_only(name: str, data: CountingData) -> None:
    """An open exercise is scored on the validation split: drawing from any other split than 'train' fails."""
    if data.other_tokens:
        split, n = next(iter(data.other_tokens.items()))
        fail(
            name,
            f"your function drew {n:,} tokens from the {split!r} split (only 'train' may be used): a model that has "
            f"seen (or was chosen on) the validation text is scored on data it knows",
            hint="draw every batch with data.get_batch('train', ...); to watch progress, look at the training loss "
            "or hold out part of the training batches yourself",
        )
