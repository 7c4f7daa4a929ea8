"""A vLLM-faithful simulated fleet: engine model, OpenAI-compatible servers, metrics.

Modules: `profiles` (GPU and variant numbers), `roofline` (step time), `engine` (the
pure scheduler), `metrics` (vLLM's Prometheus metrics), `oracle` (answer quality),
`server` (one backend's HTTP app), `fleet` (many backends on loopback ports),
`command` (the `quantroute simulate` entry point).
"""
