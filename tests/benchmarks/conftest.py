"""Make the routing benchmark's package (benchmarks/routing/routingbench) importable."""

from __future__ import annotations

import sys
from pathlib import Path

ROUTING = Path(__file__).resolve().parents[2] / "benchmarks" / "routing"
if str(ROUTING) not in sys.path:
    sys.path.insert(0, str(ROUTING))
