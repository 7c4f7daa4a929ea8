"""The Redis client is the `redis` extra, not a core dependency: a config that names a Redis
without the client installed is refused at load with the extra to install, never a traceback at
the first request. (Whether the client is installed is replaced here; that is the unit.)"""

from __future__ import annotations

from typing import Any

import pytest

import quantroute.access.config
import quantroute.config
from quantroute.config import parse_config
from quantroute.errors import ConfigError

ROW = {"id": "a", "url": "http://127.0.0.1:9", "served_model_name": "m", "variant": "m",
       "max_seq_len": 4096, "capacity": 8}  # fmt: skip


def _config(**sections: Any) -> dict[str, Any]:
    return {"backends": [ROW], "groups": [{"name": "g", "variants": ["m"]}], **sections}


@pytest.mark.parametrize(
    ("sections", "field"),
    [
        ({"access": {"quotas": {"redis_url": "redis://127.0.0.1:6379/0"}}}, "access.quotas"),
        ({"conversations": {"redis_url": "redis://127.0.0.1:6379/0"}}, "conversations"),
    ],
)
def test_a_redis_url_without_the_client_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, sections: dict[str, Any], field: str
) -> None:
    parse_config(_config(**sections))  # installed here (dev extras): accepted
    monkeypatch.setattr(quantroute.access.config, "installed", lambda module: module != "redis")
    monkeypatch.setattr(quantroute.config, "installed", lambda module: module != "redis")
    with pytest.raises(ConfigError) as caught:
        parse_config(_config(**sections))
    message = str(caught.value)
    assert field in message and "pip install 'quantroute[redis]'" in message
    parse_config(_config())  # without a Redis the client is not needed
