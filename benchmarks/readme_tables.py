"""Print the README's evaluation tables (markdown) from `python -m core evaluate --json` files.

python benchmarks/readme_tables.py benchmarks/baselines_eval.json [benchmarks/model_eval.json]
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path


def fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main(paths: list[str]) -> None:
    rows = defaultdict(dict)
    methods: list[str] = []
    for path in paths:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        for row in data["rows"]:
            if row["status"] != "ok":
                continue
            rows[(row["cube"], row["task"])][row["method"]] = row
            if row["method"] not in methods:
                methods.append(row["method"])
    head = ["cube", "task", "frames", "pixels"]
    for m in methods:
        head += [f"{m} MAE", f"{m} NDVI MAE"]
        if m not in ("linear", "whittaker"):
            head += [f"{m} ratio", f"{m} p10-p90 cov."]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for (cube, task), by_method in rows.items():
        any_row = next(iter(by_method.values()))["scores"]
        cells = [cube, task, str(any_row["n_frames"]), str(any_row["n_pixels"])]
        for m in methods:
            r = by_method.get(m)
            s = r["scores"] if r else {}
            cells += [fmt(s.get("mae")), fmt(s.get("ndvi_mae"), 3)]
            if m not in ("linear", "whittaker"):
                cells += [fmt(r["ratio"] if r else None, 3), fmt(s.get("coverage"), 2)]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
