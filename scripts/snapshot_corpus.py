"""Freeze the corpus's CPython text into course_utils/assets/corpus_cpython.json.xz (and its .sha256).

    python scripts/snapshot_corpus.py        # run with CPython 3.11.7: the version the course's numbers come from

The prose domain is ``pydoc_data.topics`` and the code domain a fixed list of standard-library files
(``course_utils.data.STDLIB_FILES``). Both change between Python releases, patch releases included (3.11.2's topics
differ from 3.11.7's), so the course reads this snapshot instead of the learner's interpreter. The text is CPython's,
under the PSF License Agreement (https://docs.python.org/3/license.html); the file records that.
"""

from __future__ import annotations

import json
import lzma
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from course_utils.data import CPYTHON_SNAPSHOT, running_python_documents  # noqa: E402
from course_utils.model import write_sha256  # noqa: E402

PINNED = "3.11.7"


def main() -> None:
    version = platform.python_version()
    if version != PINNED and "--any-python" not in sys.argv:
        sys.exit(f"this is Python {version}; the snapshot is taken on {PINNED} (pass --any-python to override)")
    snapshot = {
        "python": version,
        "source": "CPython: Lib/pydoc_data/topics.py (prose) and the standard-library files listed (code)",
        "license": "Python Software Foundation License Version 2 (https://docs.python.org/3/license.html)",
        **running_python_documents(),
    }
    blob = json.dumps(snapshot, ensure_ascii=False, sort_keys=True, indent=0).encode("utf-8")
    CPYTHON_SNAPSHOT.write_bytes(lzma.compress(blob, preset=9 | lzma.PRESET_EXTREME))
    write_sha256(CPYTHON_SNAPSHOT)
    print(f"wrote {CPYTHON_SNAPSHOT} ({CPYTHON_SNAPSHOT.stat().st_size / 1024:.0f} KiB) from Python {version}")


if __name__ == "__main__":
    main()
