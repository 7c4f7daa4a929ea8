"""Where one request's time goes, in the gateway and the bare proxy alike (c=1).

Run the harness with ``callcount/`` leading the proxies' PYTHONPATH and ``$QR_PATHSTAMP`` set
(``callcount/stamps.py`` stamps every request), then read the stamps::

    mkdir -p /tmp/stamps
    PYTHONPATH=callcount QR_PATHSTAMP=/tmp/stamps python run.py --levels 1 --modes non-stream \\
        --reps 3 --c1-pairs 10 --no-nginx --no-vllm-router --open-streams 0 --profile 0
    python pathstamp.py /tmp/stamps

For each proxy: request in to the upstream call (A -> B), the upstream call to its headers
(B -> C), headers in to the answer sent (C -> D), and the client's turn from one answer to the
next request (D -> the next A); medians and quartiles over the requests whose four stamps came.
See ``callcount/stamps.py`` for the four points.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

SPANS = (("A", "B", "request in -> upstream call"), ("B", "C", "upstream call -> its headers"),
         ("C", "D", "headers in -> answer sent"), ("A", "D", "request in -> answer sent"))  # fmt: skip


def quartiles(values: list[float]) -> tuple[float, float, float]:
    ordered = sorted(values)
    n = len(ordered)
    return ordered[n // 4], ordered[n // 2], ordered[(3 * n) // 4]


def report(path: Path) -> list[str]:
    raw = json.loads(path.read_text())
    try:
        records = [{str(k): int(v) for k, v in r} for r in raw]
    except (TypeError, ValueError):  # not a file of stamps
        return []
    whole = [r for r in records if list(r) == ["A", "B", "C", "D"]]
    if not whole:
        return []
    lines = [f"{path.name}: {len(whole)} requests with all four stamps (µs: p25 / median / p75)"]
    for start, end, label in SPANS:
        q1, q2, q3 = quartiles([(r[end] - r[start]) / 1000 for r in whole])
        lines.append(f"  {start} -> {end}  {label:<30} {q1:8.1f} {q2:8.1f} {q3:8.1f}")
    turns = [
        (b["A"] - a["D"]) / 1000
        for a, b in itertools.pairwise(records)
        if "D" in a and "A" in b and 0 < b["A"] - a["D"] < 5_000_000
    ]
    if turns:
        q1, q2, q3 = quartiles(turns)
        lines.append(f"  D -> next A  {'the client turn':<30} {q1:8.1f} {q2:8.1f} {q3:8.1f}")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("directory", type=Path)
    a = p.parse_args()
    for path in sorted(a.directory.glob("*.json")):
        for line in report(path):
            print(line)


if __name__ == "__main__":
    main()
