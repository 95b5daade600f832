"""Stand-in for ``google.colab.output``."""

import colab_image


def enable_custom_widget_manager() -> None:
    """In Colab this lets ipywidgets render; here it is recorded for the test to check."""
    colab_image.record("enable_custom_widget_manager", [])
