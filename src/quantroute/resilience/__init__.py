"""Fault handling: passive health, retry budget, client and upstream limits, drain and reload."""
