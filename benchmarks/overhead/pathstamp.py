"""Where one request's time goes, in the gateway and the bare proxy alike (c=1).

Run the harness with ``callcount/`` leading the proxies' PYTHONPATH and ``$QR_PATHSTAMP`` set
(``callcount/stamps.py`` stamps every request), then read the stamps::

    mkdir -p /tmp/stamps
    PYTHONPATH=callcount QR_PATHSTAMP=/tmp/stamps python run.py --levels 1 --modes non-stream \\
        --reps 3 --c1-pairs 10 --no-nginx --no-vllm-router --open-streams 0 --profile 0
    python pathstamp.py /tmp/stamps

For each proxy: the read that brought the request to its first byte parsed (R -> A), request in
to the upstream call (A -> B), the upstream call to its headers (B -> C), headers in to the answer
sent (C -> D), what the app does after the answer is sent (D -> E: the gateway's accounting),
the client's turn from one answer to the next request's read (D -> the next R), and the proxy's
idle time before it (E -> the next R), with how often the next request was read within 20 µs of
the last one's task ending (it may then have arrived while that task ran: the work after the
answer can only delay the next request that way, since no read is stamped while it runs);
medians and quartiles over the requests whose six stamps came. See ``callcount/stamps.py`` for
the points.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

STAMPS = ["R", "A", "B", "C", "D", "E"]
SPANS = (("R", "A", "the read -> first byte parsed"), ("A", "B", "request in -> upstream call"),
         ("B", "C", "upstream call -> its headers"), ("C", "D", "headers in -> answer sent"),
         ("R", "D", "the read -> answer sent"), ("D", "E", "answer sent -> task over"))  # fmt: skip


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
    whole = [r for r in records if list(r) == STAMPS]
    if not whole:
        return []
    lines = [f"{path.name}: {len(whole)} requests with all six stamps (µs: p25 / median / p75)"]
    for start, end, label in SPANS:
        q1, q2, q3 = quartiles([(r[end] - r[start]) / 1000 for r in whole])
        lines.append(f"  {start} -> {end}  {label:<30} {q1:8.1f} {q2:8.1f} {q3:8.1f}")
    follows = [  # one request and the next, within 5 ms (not across a pause between windows)
        (a, b)
        for a, b in itertools.pairwise(records)
        if list(a) == STAMPS and list(b) == STAMPS and 0 < b["R"] - a["D"] < 5_000_000
    ]
    if not follows:
        return lines
    for start, label in (("D", "the client's turn"), ("E", "idle till the next read")):
        q1, q2, q3 = quartiles([(b["R"] - a[start]) / 1000 for a, b in follows])
        lines.append(f"  {start} -> next R  {label:<26} {q1:8.1f} {q2:8.1f} {q3:8.1f}")
    # The work after the answer runs in one stretch (no await between D and E), so the next read
    # is never stamped inside it; a request that arrived during it is read at once after it.
    idle = sorted(b["R"] - a["E"] for a, b in follows)
    soon = sum(gap < 20_000 for gap in idle)
    p1 = idle[len(idle) // 100] / 1000
    lines.append(
        f"  the next read within 20 µs of the task's end: {soon} of {len(idle)}; "
        f"the idle gap's 1st percentile {p1:.1f} µs"
    )
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
