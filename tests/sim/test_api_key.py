"""The simulator's --api-key, as vLLM's: /v1 needs the Bearer key, /health and /metrics do not."""

from __future__ import annotations

import httpx

from quantroute.sim.fleet import SimFleet, SimFleetConfig

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


async def test_v1_needs_the_key_and_every_authorization_is_recorded() -> None:
    config = SimFleetConfig.model_validate(
        {
            "time_scale": 50,
            "backends": [
                {
                    "id": "a",
                    "profile": "llama3-8b-awq",
                    "served_model_name": "m",
                    "api_key": "s3cret",
                }
            ],
        }
    )
    async with SimFleet(config) as fleet, httpx.AsyncClient(base_url=fleet.urls["a"]) as client:
        assert (await client.get("/health")).status_code == 200
        assert (await client.get("/metrics")).status_code == 200
        refused = await client.post("/v1/chat/completions", json=BODY)
        assert (refused.status_code, refused.json()) == (401, {"error": "Unauthorized"})
        wrong = await client.get("/v1/models", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        ok = await client.post(
            "/v1/chat/completions", json=BODY, headers={"Authorization": "Bearer s3cret"}
        )
        assert ok.status_code == 200, ok.text
        assert list(fleet.backends["a"].authorizations) == [None, "Bearer nope", "Bearer s3cret"]
