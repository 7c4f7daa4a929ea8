"""Read Prometheus text from vLLM or the gateway and pick out samples (a test helper)."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families


def sample_sum(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called exactly ``name`` whose labels include ``labels``.

    Returns 0.0 when no sample matches (a counter that never moved may not be emitted).
    """
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def samples_by(text: str, name: str, label: str, **labels: str) -> dict[str, float]:
    """The samples called exactly ``name`` whose labels include ``labels``, by their ``label``."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                key = sample.labels.get(label, "")
                found[key] = found.get(key, 0.0) + sample.value
    return found


def has_sample(text: str, name: str) -> bool:
    return any(
        sample.name == name
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    )


def scrape(base_url: str, timeout_s: float = 20.0) -> str:
    """GET ``base_url``/metrics and return its text (raises on a non-200 answer)."""
    response = httpx.get(f"{base_url}/metrics", timeout=timeout_s)
    response.raise_for_status()
    return response.text


async def scrape_async(client: httpx.AsyncClient, base_url: str) -> str:
    response = await client.get(f"{base_url}/metrics")
    response.raise_for_status()
    return response.text
