"""Markdown table of the goals of benchmarks/run.py results, run beside run, and whether their intervals overlap.

python -m benchmarks.compare full-1.json full-2.json > table.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def overlaps(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two intervals ({"low", "high"}) share a point."""
    return a["low"] <= b["high"] and b["low"] <= a["high"]


def _cell(row: dict[str, Any]) -> str:
    bound = ""
    if "bound" in row:
        bound = f" (bound {row['bound']}{'' if row['is_bound_met'] else ', **not reached**: ' + row['stopped']})"
    return (
        f"{row['estimate']:.4g} [{row['low']:.4g}, {row['high']:.4g}], ±{row['half_width']:.3g}{bound}, "
        f"n = {row['pairs']}: **{row['verdict']}**"
    )


def table(results: list[dict[str, Any]]) -> str:
    names = [name for name in results[0]["goals"] if all(name in r["goals"] for r in results)]
    head = ["goal", "target", "clock", *(f"run {i + 1}" for i in range(len(results))), "overlap"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in names:
        rows = [r["goals"][name] for r in results]
        is_overlap = all(overlaps(rows[0], row) for row in rows[1:])
        cells = [f"`{name}`", rows[0]["goal"], str(rows[0]["clock"]), *map(_cell, rows), "yes" if is_overlap else "no"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    sys.stdout.write(table([json.loads(Path(path).read_text()) for path in argv]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
