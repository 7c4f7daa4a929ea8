"""quantroute: route OpenAI-compatible traffic across a fleet of quantized vLLM backends."""

__version__ = "0.1.0"
