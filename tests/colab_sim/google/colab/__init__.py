"""Stand-in for Colab's ``google.colab`` package: only what the course's bootstrap cell calls."""

from . import output

__all__ = ["output"]
