"""course_utils.validate: one copy of the argument checks, with errors that name the argument."""

import math

import numpy as np
import pytest

from course_utils.validate import (
    ArgumentTypeError,
    check_int,
    check_number,
    finite_float,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
    probability,
)


def test_ints_in_range_pass_through():
    assert positive_int("n", 3) == 3 and nonnegative_int("n", 0) == 0 and check_int("k", 5, 1, 5) == 5
    assert type(positive_int("n", np.int64(2))) is int  # numpy ints count, returned as Python ints


@pytest.mark.parametrize("value", [True, 2.0, "3", None])
def test_wrong_type_is_both_type_and_value_error(value):
    with pytest.raises(ArgumentTypeError, match=r"top_k must be a positive int, got"):
        positive_int("top_k", value)
    with pytest.raises(TypeError):
        positive_int("top_k", value)
    with pytest.raises(ValueError):  # callers written when this was a ValueError keep working
        positive_int("top_k", value)


def test_out_of_range_names_the_argument_and_the_range():
    with pytest.raises(ValueError, match=r"n must be a positive int, got 0"):
        positive_int("n", 0)
    with pytest.raises(ValueError, match=r"chapter must be a non-negative int, got -1"):
        nonnegative_int("chapter", -1)
    with pytest.raises(ValueError, match=r"top_k must be an int in 1\.\.4, got 5"):
        check_int("top_k", 5, 1, 4)
    with pytest.raises(ValueError, match=r"i must be an int <= 3"):
        check_int("i", 4, None, 3)
    try:
        positive_int("n", 0)
    except ValueError as err:
        assert not isinstance(err, TypeError)  # a right-typed value out of range is only a ValueError


def test_numbers():
    assert positive_float("rate", 2) == 2.0 and nonnegative_float("t", 0) == 0.0 and finite_float("x", -1.5) == -1.5
    assert probability("p", 1) == 1.0 and check_number("p", 0.5, 0, 1, low_open=True) == 0.5
    for bad, fn, match in [
        (0, positive_float, r"rate must be a finite number > 0, got 0"),
        (-1e-9, nonnegative_float, r"rate must be a finite number >= 0"),
        (math.nan, finite_float, r"rate must be a finite number, got nan"),
        (math.inf, positive_float, r"rate must be a finite number > 0, got inf"),
        (1.5, probability, r"rate must be a finite number in \[0, 1\], got 1\.5"),
    ]:
        with pytest.raises(ValueError, match=match):
            fn("rate", bad)
    with pytest.raises(ValueError, match=r"p must be a finite number in \(0, 1\], got 0"):
        check_number("p", 0, 0, 1, low_open=True)
    with pytest.raises(ValueError, match=r"p must be a finite number < 1"):
        check_number("p", 1, high=1, high_open=True)
    with pytest.raises(TypeError, match="rate"):
        positive_float("rate", "fast")
    with pytest.raises(TypeError, match="rate"):
        positive_float("rate", False)
