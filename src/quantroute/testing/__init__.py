"""Test and benchmark helpers that ship with the package: a fast, controllable vLLM-like server."""
