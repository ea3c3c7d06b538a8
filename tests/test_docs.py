"""The README's commands are the ones CI runs, and its links point at files that exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _fenced_commands() -> list[str]:
    return [line.strip() for line in re.findall(r"```\n(python3 -m venv[^\n]*)\n```", README)]


def test_ci_runs_exactly_the_readme_test_command() -> None:
    test_command = next(c for c in _fenced_commands() if "pytest" in c)
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines


def test_the_readme_main_job_command_runs_the_demo() -> None:
    assert any(c.endswith("statestore demo") for c in _fenced_commands())


def test_readme_links_to_existing_files() -> None:
    for target in re.findall(r"\]\(((?:docs|benchmarks)/[^)#]+)\)", README):
        assert (ROOT / target).exists(), target


def test_the_backend_guide_quotes_the_example_backend_as_it_is() -> None:
    guide = (ROOT / "docs" / "backends.md").read_text()
    quoted = re.findall(r"```python\n(.*?)```", guide, re.S)
    sources = [
        (ROOT / "examples" / "dirstore.py").read_text(),
        (ROOT / "tests" / "test_example_backend.py").read_text(),
    ]
    assert quoted
    for block in quoted:
        assert any(block in source for source in sources), block
