"""The project stays small enough for one person to own: lines, complexity, README, bench."""

from __future__ import annotations

from pathlib import Path

from radon.complexity import cc_visit

ROOT = Path(__file__).resolve().parent.parent
CORE = [ROOT / "addons" / "cf_gateway.py", *sorted((ROOT / "addons" / "cfgw").glob("*.py"))]
AVERAGE_LIMIT = 3.5  # radon's average over both addons, as `radon cc -a` counts it
VIEW = [ROOT / "addons" / "llm_view.py", *sorted((ROOT / "addons" / "llmview").glob("*.py"))]


def lines(paths: list[Path]) -> int:
    return sum(len(p.read_text().splitlines()) for p in paths)


def blocks(paths: list[Path]) -> list:
    """Functions, methods and classes, as `radon cc` counts them."""
    return [block for p in paths for block in cc_visit(p.read_text())]


def test_the_core_and_the_view_stay_within_their_line_budgets():
    assert lines(CORE) <= 2500
    assert lines(VIEW) <= 1300


def test_no_function_is_too_complex_and_the_average_stays_low():
    found = blocks(CORE + VIEW)
    worst = max(found, key=lambda b: b.complexity)
    assert worst.complexity <= 15, f"{worst.name} has complexity {worst.complexity}"
    average = sum(b.complexity for b in found) / len(found)
    assert average <= AVERAGE_LIMIT, f"average complexity {average:.2f}"


def test_the_readme_fits_on_a_few_screens_and_bench_stays_small():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 220
    assert lines(sorted((ROOT / "bench").glob("*.py"))) <= 1300
