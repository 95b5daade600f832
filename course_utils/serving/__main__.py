"""``python -m course_utils.serving``: see :mod:`course_utils.serving.cli`."""

from .cli import main

main()
