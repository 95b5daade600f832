"""One plot style for the whole course, and a helper that refuses an unlabelled plot."""

from __future__ import annotations

import os

from cycler import cycler

__all__ = ["use_course_style", "label", "COLORS", "figure_dpi", "apply_figure_dpi"]

# Colour-blind-safe palette (Okabe & Ito, 2008), used in this order by every chapter.
COLORS = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]


def figure_dpi() -> int:
    """100, or ``$COURSE_FIGURE_DPI`` when set: `make outputs` stores smaller figures in the committed notebooks."""
    env = os.environ.get("COURSE_FIGURE_DPI", "")
    return int(env) if env.isdigit() and int(env) > 0 else 100


def _rc_params():
    """matplotlib's settings. tokenization and train import this module for COLORS and ``label``, so matplotlib
    (~0.8 s) is imported only once a plot is styled."""
    import matplotlib  # noqa: PLC0415 — matplotlib costs ~0.8 s; plot-free chapter code imports this module

    return matplotlib.rcParams


def apply_figure_dpi() -> None:
    """Set matplotlib's figure dpi to :func:`figure_dpi` (``course_utils.setup`` under `make outputs`)."""
    _rc_params()["figure.dpi"] = figure_dpi()


def use_course_style() -> None:
    """Apply the course's matplotlib style (readable sizes, light grid, the palette above)."""
    _rc_params().update(
        {
            "figure.figsize": (7.0, 4.0),
            "figure.dpi": figure_dpi(),
            "axes.grid": True,
            "grid.alpha": 0.3,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.titlesize": 12,
            "axes.labelsize": 11,
            "legend.frameon": False,
            "axes.prop_cycle": cycler(color=COLORS),
        }
    )


def label(ax, title: str, xlabel: str, ylabel: str):
    """Set title and axis labels; every plot in the course has all three (units in brackets)."""
    for name, value in (("title", title), ("xlabel", xlabel), ("ylabel", ylabel)):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{name} must be a non-empty string: every course plot is titled and labelled")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return ax
