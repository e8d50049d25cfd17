"""benchmarks/run.py: one registry holds every benchmark, the suite imports nothing from tests/, rounds alternate
their order, and benchmarks/RESULTS.md is what the saved runs render to."""

from __future__ import annotations

import ast
import inspect
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from benchmarks import report, run
from benchmarks.harness import Timing, record_round

BENCHMARKS_DIR = Path(run.__file__).parent
SHARED = {"run", "harness", "stats", "report"}  # the harness, not benchmarks


def test_every_registered_benchmark_takes_a_size_and_its_options():
    for name, bench in run.BENCHMARKS.items():
        # given the function the registry names
        parameters = list(inspect.signature(bench.function(name)).parameters)
        # then its first parameter is the size and each option it is given is one of its parameters
        assert parameters[0] == "size", f"{name}: {parameters}"
        assert set(bench.options) <= set(parameters[1:]), f"{name}: options {bench.options}, takes {parameters}"
        assert bench.keys, f"{name}: RESULTS.md would show nothing of it"


def test_every_benchmark_module_is_in_the_registry():
    # given the modules under benchmarks/ other than the harness
    modules = {path.stem for path in BENCHMARKS_DIR.glob("*.py")} - SHARED
    # then each holds a registered benchmark, and each registered benchmark lives in one of them
    assert modules == {bench.module for bench in run.BENCHMARKS.values()}


def test_no_benchmark_imports_from_tests():
    for path in BENCHMARKS_DIR.glob("*.py"):
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module.split(".")[0])
        assert "tests" not in imported, f"{path.name} imports tests/: the harness has what it needs"


def test_rounds_alternate_the_order_of_the_arms():
    # given two arms that record when they run
    calls: list[str] = []

    def arm(name: str) -> Callable[[], Timing]:
        def run_arm() -> Timing:
            calls.append(name)
            return Timing(1.0, 1.0)

        return run_arm

    seconds: dict = {}
    # when four rounds run
    for index in range(4):
        record_round({"a": arm("a"), "b": arm("b")}, seconds, index)
    # then A B, B A, A B, B A, each arm's seconds in round order
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert seconds["a"] == {"wall": [1.0] * 4, "cpu": [1.0] * 4}


def test_results_md_is_rendered_from_the_saved_runs():
    # given the saved runs; when RESULTS.md is rendered again, then it is the committed file
    assert run.render_results_md() == report.RESULTS_MD.read_text(), (
        "benchmarks/RESULTS.md is out of date or hand-edited: python benchmarks/run.py --report"
    )


def test_every_saved_run_says_what_made_it():
    runs = report.saved_results()
    assert runs, "no saved runs in benchmarks/results/"
    for name, result in runs:
        assert {"commit", "is_dirty", "date", "command"} <= result["run"].keys(), name
        assert result["run"]["command"].startswith("python benchmarks/run.py"), name
        assert set(result["seconds"]) - {"total"} <= set(run.BENCHMARKS), f"{name}: unknown benchmark names"


def test_compare_table_marks_whether_intervals_overlap():
    def result(low: float, high: float) -> dict:
        row = {"goal": ">= 1", "clock": "cpu", "estimate": (low + high) / 2, "low": low, "high": high,
               "half_width": (high - low) / 2, "pairs": 5, "verdict": "met"}  # fmt: skip
        return {"goals": {"speedup": row}}

    # given two runs of one goal, when tabled, then the row says whether their intervals overlap
    assert report.compare_table([result(1.1, 1.3), result(1.2, 1.4)]).splitlines()[-1].endswith("| yes |")
    assert report.compare_table([result(1.1, 1.3), result(1.4, 1.5)]).splitlines()[-1].endswith("| no |")


def test_a_smoke_run_is_never_saved(capsys: pytest.CaptureFixture[str]):
    # when --smoke is asked to save, then the command is refused before anything runs
    with pytest.raises(SystemExit) as exit_info:
        run.main(["--smoke", "--save", "--only", "frechet"])
    assert exit_info.value.code == 2
    assert "never saved" in capsys.readouterr().err


def test_time_to_quality_reads_its_trained_seeds():
    # given the committed time-to-quality seeds; when read, then each data set has an interval over its seeds
    from benchmarks.time_to_quality import RESULTS, time_to_quality

    measured = json.loads(RESULTS.read_text())
    out = time_to_quality("smoke")["time_to_quality"]
    assert set(out) == set(measured)
    for dataset, figures in out.items():
        assert figures["seeds"] == [r["seed"] for r in measured[dataset]["runs"]], dataset
        assert figures["cpu_seconds_to_target"]["n"] == len(figures["seeds"]) - len(figures["seeds_not_reached"])
