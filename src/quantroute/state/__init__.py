"""Backend state: parsing vLLM's /metrics, the store of latest state, and the scrape loop."""
