"""The table every benchmark here prints: measure, result, target."""
from __future__ import annotations


def print_table(rows: list[tuple[str, str, str]]) -> None:
    width = [max(len(row[i]) for row in rows) for i in range(3)]
    print(f"{'measure':<{width[0]}}  {'result':<{width[1]}}  target")
    for name, result, target in rows:
        print(f"{name:<{width[0]}}  {result:<{width[1]}}  {target}")
