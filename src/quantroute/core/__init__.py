"""The routing decision: pure and synchronous. No asyncio, no HTTP, no clock, no Prometheus here."""
