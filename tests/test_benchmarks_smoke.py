"""The benchmark harness still works: ``python -m benchmarks.run --quick`` on memory and sqlite.

Only the harness is checked here (every workload runs, every figure is written, every
target gets a verdict), never a figure: times belong to ``benchmarks/``, not to tests.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPOSITORY = Path(__file__).resolve().parent.parent
SUBJECTS = ["statestore-memory", "statestore-sqlite", "floor"]


@pytest.mark.slow  # about ten seconds: every workload, small
def test_quick_run(tmp_path: Path) -> None:
    """One quick run (a single one: the workloads are what takes the time)."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--no-postgres",
         "--subjects", ",".join(SUBJECTS),
         "--workdir", str(tmp_path / "stores"), "--out", str(tmp_path / "out")],
        cwd=REPOSITORY, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    _every_workload_measures_every_subject(results)
    _targets_get_a_verdict_with_the_figure(results, done.stdout)
    _report_and_plot_are_written(tmp_path / "out")
    assert not (tmp_path / "stores" / "w1").exists(), "stores are deleted after each workload"


def _every_workload_measures_every_subject(results: dict[str, Any]) -> None:
    assert results["errors"] == {}
    w1 = results["w1"]
    assert set(w1["seconds"]["save"]) == set(SUBJECTS)
    assert all(len(times) == w1["params"]["savepoints"] for times in w1["seconds"]["save"].values())
    assert all(len(times) == w1["params"]["loads"] for times in w1["seconds"]["load"].values())
    assert [point["entities"] for point in results["w2"]] == [500, 1_000, 4_000]
    assert set(results["w2"][-1]["memory"]) == set(SUBJECTS)
    # W3 runs each backend's change-set subject beside it.
    assert set(results["w3"]["seconds"]["sparse"]) == {*SUBJECTS, "statestore-sqlite-changes"}
    assert results["w3"]["bytes_per_save"]["statestore-sqlite-changes"] > 0
    assert set(results["w5"]["seconds"]["job"]) == {
        "pickle-sqlite", "statestore-sqlite", "statestore-sqlite-changes",
        "statestore-engine", "statestore-engine-trust",
    }  # fmt: skip
    # An in-process memory store cannot be shared by W4's processes: left out there.
    assert set(results["w4"]["seconds"]["save"]) == {"statestore-sqlite", "floor"}
    assert set(results["engine"]["seconds"]) == {"statestore-memory", "statestore-sqlite"}
    assert set(results["engine"]["seconds"]["statestore-sqlite"]) == {
        "raw", "engine", "watermark", "trust-all", "trust-1%",
    }  # fmt: skip


def _targets_get_a_verdict_with_the_figure(results: dict[str, Any], stdout: str) -> None:
    targets = results["targets"]
    sqlite = [t for t in targets if t["subject"] == "statestore-sqlite"]
    measured = {t["workload"] for t in sqlite if t["passed"] is not None}
    assert measured == {"W1", "W2", "W3", "Engine", "W5"}
    for target in sqlite:
        if target["passed"] is not None:
            verdict = "PASS" if target["passed"] else "MISS"
            line = f"{verdict}  {target['workload']} statestore-sqlite: {target['what']} = "
            assert f"{line}{target['value']:.2f}" in stdout
    # No PostgreSQL here: its targets are reported as not measured, not silently dropped.
    assert all(t["passed"] is None for t in targets if t["subject"] == "statestore-postgresql")


def _report_and_plot_are_written(out: Path) -> None:
    report = (out / "results.md").read_text()
    sections = ("W1 full savepoints", "W2 large", "W3 sparse change", "W4 many runs", "W5 rich")
    for section in sections:
        assert f"### {section}" in report
    assert "| statestore-sqlite |" in report
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "benchmark.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
