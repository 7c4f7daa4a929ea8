"""Forwarding to backends: the upstream client seam, retries, and the streaming relay."""
