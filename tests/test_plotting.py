"""course_utils.plotting: every plot titled and labelled, one style, the figure size `make outputs` stores."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend
import pytest  # noqa: E402

from course_utils import plotting  # noqa: E402


def test_plot_label_requires_title_and_units():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plotting.use_course_style()
    fig, ax = plt.subplots()
    plotting.label(ax, "Loss", "step", "loss [nats]")
    assert (ax.get_title(), ax.get_xlabel(), ax.get_ylabel()) == ("Loss", "step", "loss [nats]")
    with pytest.raises(ValueError, match="ylabel"):
        plotting.label(ax, "Loss", "step", " ")
    plt.close(fig)


@pytest.mark.parametrize("title,xlabel,ylabel,bad", [("", "x", "y", "title"), ("t", None, "y", "xlabel")])
def test_label_names_the_missing_part_and_leaves_the_axes_alone(title, xlabel, ylabel, bad):
    fig, ax = plt.subplots()
    with pytest.raises(ValueError, match=bad):
        plotting.label(ax, title, xlabel, ylabel)
    assert (ax.get_title(), ax.get_xlabel(), ax.get_ylabel()) == ("", "", "")
    plt.close(fig)


@pytest.mark.parametrize("env,dpi", [(None, 100), ("72", 72), ("0", 100), ("-5", 100), ("big", 100), ("", 100)])
def test_figure_dpi_reads_course_figure_dpi(monkeypatch, env, dpi):
    if env is None:
        monkeypatch.delenv("COURSE_FIGURE_DPI", raising=False)
    else:
        monkeypatch.setenv("COURSE_FIGURE_DPI", env)
    assert plotting.figure_dpi() == dpi


def test_course_style_sets_the_dpi_and_the_colour_blind_safe_palette(monkeypatch):
    monkeypatch.setenv("COURSE_FIGURE_DPI", "72")
    with matplotlib.rc_context():
        plotting.use_course_style()
        assert matplotlib.rcParams["figure.dpi"] == 72
        assert matplotlib.rcParams["axes.prop_cycle"].by_key()["color"] == plotting.COLORS
    assert len(set(plotting.COLORS)) == len(plotting.COLORS) == 8
