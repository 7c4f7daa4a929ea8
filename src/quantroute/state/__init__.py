"""Backend state: parsing vLLM's /metrics, the store of latest state, the scrape loop and the
capability matrix file (loaded, validated, reloaded when it changes)."""
