"""tests/ mirrors the package: each module of course_utils has its test file at the mirrored path.

- ``course_utils/<module>.py`` → ``tests/test_<module>.py`` (a leading ``_`` dropped: ``_moved`` → ``test_moved``);
- ``course_utils/<folder>/<module>.py`` → ``tests/<folder>/test_<module>.py`` for serving/, gateway/, course/;
- a package's ``__init__.py`` that defines or re-exports names → ``test_<package>.py`` in its test folder.

A module may have more test files named ``test_<module>_<aspect>.py``; the listed exceptions carry their reason.
"""

import ast
import re
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "course_utils"
TESTS = ROOT / "tests"
MIRRORED = ("serving", "gateway", "course")  # folders whose tests sit in tests/<folder>/

#: module (relative to course_utils/) → its test file, where the rule above does not give it, and why
EXCEPTIONS = {
    # the labs import checks from one flat namespace (course_utils.checks), and docs/site/guide_chapters.py reads
    # each chapter's check tests from tests/test_checks_chNN.py: the check tests stay flat, prefixed "checks_"
    **{f"checks/{p.name}": f"tests/test_checks_{p.stem.lstrip('_')}.py" for p in (PACKAGE / "checks").glob("*.py")},
    "checks/__init__.py": "tests/test_checks_core.py",  # discovery (all_checks) is the check machinery's core
    "__init__.py": "tests/test_course_utils.py",  # `course_utils.setup` and the package's own names
    # lazy re-exports only: every file under tests/serving imports through them, tests/test_imports.py imports the
    # package alone in a fresh interpreter
    "serving/__init__.py": "tests/test_imports.py",
    "serving/__main__.py": "tests/serving/test_cli.py",  # `python -m course_utils.serving` is the CLI's test
}
#: test files under a mirrored folder that test the folder as a whole rather than one module, and why
SUITES = {
    "tests/serving/test_openai_compat.py": "the server against the clients people use (openai, langchain-openai)",
    "tests/serving/test_serving_smollm2.py": "a real LLM served end to end, against transformers' logits",
}


def _has_names(path: Path) -> bool:
    """Defines a function or class, or re-exports names (an ``__all__``): a docstring alone needs no test."""
    body = ast.parse(path.read_text()).body
    return any(
        isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        or (isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in n.targets))
        for n in body
    )


def expected_test_file(module: Path) -> str | None:
    """The test file the layout asks for ``module`` (a path under course_utils/), or None when it needs none."""
    rel = module.relative_to(PACKAGE).as_posix()
    if rel in EXCEPTIONS:
        return EXCEPTIONS[rel]
    folder = module.parent.relative_to(PACKAGE).as_posix()
    if module.name == "__init__.py":
        return f"tests/{folder}/test_{module.parent.name}.py" if _has_names(module) else None
    name = f"test_{module.stem.lstrip('_')}.py"
    return f"tests/{name}" if folder == "." else f"tests/{folder}/{name}"


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_the_rule_maps_modules_where_contributing_says():
    assert expected_test_file(PACKAGE / "moe.py") == "tests/test_moe.py"
    assert expected_test_file(PACKAGE / "_moved.py") == "tests/test_moved.py"
    assert expected_test_file(PACKAGE / "serving" / "engine.py") == "tests/serving/test_engine.py"
    assert expected_test_file(PACKAGE / "gateway" / "__init__.py") == "tests/gateway/test_gateway.py"
    assert expected_test_file(PACKAGE / "course" / "__init__.py") is None  # a docstring only
    assert expected_test_file(PACKAGE / "checks" / "ch04.py") == "tests/test_checks_ch04.py"
    assert {p.parent.name for p in modules() if p.parent != PACKAGE} <= {*MIRRORED, "checks"}, (
        "a new folder in course_utils/: mirror it under tests/ and add it to MIRRORED"
    )


def test_every_module_has_a_test_file_at_its_mirrored_path():
    missing = {
        m.relative_to(ROOT).as_posix(): want
        for m in modules()
        if (want := expected_test_file(m)) is not None and not (ROOT / want).is_file()
    }
    assert not missing, f"modules without their test file (module → expected test file): {missing}"


def test_every_test_file_in_a_mirrored_folder_tests_a_module_of_that_folder():
    for folder in MIRRORED:
        stems = {p.stem for p in (PACKAGE / folder).glob("*.py")} | {folder}
        for test in sorted((TESTS / folder).glob("test_*.py")):
            rel = test.relative_to(ROOT).as_posix()
            module = test.stem.removeprefix("test_")
            assert rel in SUITES or any(module == s or module.startswith(s + "_") for s in stems), (
                f"{rel} names no module of course_utils/{folder}/ (test_<module>[_<aspect>].py), nor is it a SUITE"
            )


def test_test_file_names_are_unique_across_folders():
    # tests/ folders have no __init__.py: pytest imports each test file by its bare name, so two test_x.py clash
    names = Counter(p.name for p in TESTS.rglob("test_*.py") if "colab_sim" not in p.parts)
    assert not [n for n, k in names.items() if k > 1], names.most_common(3)


#: files the "where does my change go" table names that other branches add (remove each once it is merged)
PENDING: set[str] = set()  # files CONTRIBUTING names before they exist (none now)


def test_every_file_and_test_contributing_names_exists():
    text = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")
    paths = set(re.findall(r"\b((?:tests|course_utils)/[\w/]+\.py)\b", text)) - PENDING
    assert not [p for p in sorted(paths) if "NN" not in p and not (ROOT / p).is_file()]
    for path, name in set(re.findall(r"\b(tests/[\w/]+\.py)::(\w+)", text)):
        source = (ROOT / path).read_text(encoding="utf-8")
        assert re.search(rf"^(?:async )?def {name}\(", source, re.M), f"CONTRIBUTING names {path}::{name}: not found"
