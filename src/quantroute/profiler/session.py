"""One profiling run: choose the samples, profile every variant, build and write the matrix."""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from itertools import zip_longest
from pathlib import Path

from quantroute.config import GatewayConfig, TaskType
from quantroute.core.matrix import CapabilityMatrix, SuiteInfo
from quantroute.profiler.build import build_matrix
from quantroute.profiler.runner import (
    Progress,
    Target,
    VariantRecord,
    no_progress,
    profile_all,
    targets_of,
)
from quantroute.profiler.settings import ProfileSettings
from quantroute.workloads import Sample, Suite


def select_samples(
    suites: Sequence[Suite], settings: ProfileSettings
) -> tuple[list[Sample], tuple[SuiteInfo, ...]]:
    """Samples of the wanted task types (at most ``samples_per_task`` each), task types
    interleaved so an interrupted run has figures for all of them; and what was used per suite."""
    per_task: dict[TaskType, list[tuple[str, Sample]]] = {t: [] for t in settings.tasks}
    limit = settings.samples_per_task
    for suite in suites:
        for sample in suite.samples:
            chosen = per_task.get(sample.task)
            if chosen is not None and (limit is None or len(chosen) < limit):
                chosen.append((suite.name, sample))
    used = Counter((name, s.task) for chosen in per_task.values() for name, s in chosen)
    infos = tuple(
        SuiteInfo(name=name, task=task, size=size) for (name, task), size in sorted(used.items())
    )
    rows = zip_longest(*per_task.values())
    samples = [item[1] for row in rows for item in row if item is not None]
    return samples, infos


class ProfileSession:
    """Holds the records while profiling runs, so an interrupted run can still be written."""

    def __init__(
        self, config: GatewayConfig, suites: Sequence[Suite], settings: ProfileSettings
    ) -> None:
        self.settings = settings
        self.targets: list[Target] = targets_of(config, settings.variants)
        if not self.targets:
            raise ValueError("the config has no backends to profile")
        self.samples, self.suites = select_samples(suites, settings)
        if not self.samples:
            raise ValueError(f"no workload samples for task types {list(settings.tasks)}")
        self.records: dict[str, VariantRecord] = {}

    async def run(self, progress: Progress = no_progress) -> None:
        await profile_all(self.records, self.targets, self.samples, self.settings, progress)

    def matrix(self, *, partial: bool = False, now: datetime | None = None) -> CapabilityMatrix:
        return build_matrix(
            self.records,
            self.suites,
            self.settings,
            generated_at=now or datetime.now(UTC),
            partial=partial,
        )


def write_matrix(matrix: CapabilityMatrix, path: str | Path) -> Path:
    """Write atomically (temporary file + rename), so a gateway watching the file never reads
    half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(matrix.model_dump(mode="json"), indent=2) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
