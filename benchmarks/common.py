"""Shared by the benchmark scripts: print a result and write it as JSON under benchmarks/results/."""

import json
from pathlib import Path


def report(name: str, result: dict) -> None:
    text = json.dumps(result, indent=2)
    print(text)
    out = Path("benchmarks/results") / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
