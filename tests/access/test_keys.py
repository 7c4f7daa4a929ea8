"""Keys from the config, env, files and a keys file; kept as digests; revoked; reloaded."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path

import pytest

from quantroute.access.config import AccessConfig
from quantroute.access.errors import InvalidApiKey, MissingApiKey, RevokedApiKey
from quantroute.access.keys import OPEN, KeyStore, bearer
from quantroute.errors import ConfigError

KEY_A = "qr-team-a-0123456789abcdefghijklmnop"
KEY_B = "qr-team-b-0123456789abcdefghijklmnop"


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def auth(store: KeyStore, key: str | None) -> str:
    headers = {} if key is None else {"authorization": f"Bearer {key}"}
    return store.authenticate(headers).name


def test_without_keys_every_request_is_the_open_principal() -> None:
    store = KeyStore(AccessConfig())
    assert not store.enabled
    assert store.authenticate({}) is OPEN


def test_keys_from_sha256_env_and_file(tmp_path: Path) -> None:
    secret = tmp_path / "key-c"
    secret.write_text(KEY_B.replace("b", "c") + "\n")
    config = AccessConfig.model_validate(
        {
            "keys": [
                {"name": "a", "sha256": sha(KEY_A), "models": ["auto"]},
                {"name": "b", "key_env": "TEAM_B_KEY", "models": ["auto"]},
                {"name": "c", "key_file": str(secret), "models": ["*"]},
            ]
        }
    )
    store = KeyStore(config, environ={"TEAM_B_KEY": KEY_B})
    assert auth(store, KEY_A) == "a"
    assert auth(store, KEY_B) == "b"
    assert auth(store, KEY_B.replace("b", "c")) == "c"


@pytest.mark.parametrize(
    ("headers", "error"),
    [
        ({}, MissingApiKey),
        ({"authorization": "Basic " + KEY_A}, MissingApiKey),
        ({"authorization": "Bearer "}, MissingApiKey),
        ({"authorization": "Bearer " + KEY_A[:-1]}, InvalidApiKey),
        ({"authorization": "Bearer " + KEY_A + "x"}, InvalidApiKey),
        ({"authorization": "Bearer " + sha(KEY_A)}, InvalidApiKey),
        ({"authorization": "Bearer " + KEY_B}, RevokedApiKey),
    ],
)
def test_refusals(headers: dict[str, str], error: type[Exception]) -> None:
    config = AccessConfig.model_validate(
        {
            "keys": [
                {"name": "a", "sha256": sha(KEY_A), "models": ["auto"]},
                {"name": "b", "sha256": sha(KEY_B), "models": ["auto"], "revoked": True},
            ]
        }
    )
    with pytest.raises(error):
        KeyStore(config).authenticate(headers)


def test_bearer_scheme_is_case_insensitive_and_x_api_key_is_accepted() -> None:
    assert bearer({"authorization": "bearer  abc "}) == "abc"
    assert bearer({"x-api-key": "abc"}) == "abc"
    assert bearer({"authorization": "Token abc"}) is None


def test_the_store_keeps_no_raw_key(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    secret = tmp_path / "k"
    secret.write_text(KEY_B)
    config = AccessConfig.model_validate(
        {
            "keys": [
                {"name": "a", "key_env": "K_A", "models": ["auto"]},
                {"name": "b", "key_file": str(secret), "models": ["auto"]},
            ]
        }
    )
    with caplog.at_level(logging.DEBUG):
        store = KeyStore(config, environ={"K_A": KEY_A})
    kept = {k: v for k, v in vars(store).items() if k != "_environ"}  # the process environment
    dumped = repr(kept) + repr(store.names())
    assert KEY_A not in dumped and KEY_B not in dumped
    assert KEY_A not in caplog.text and KEY_B not in caplog.text


@pytest.mark.parametrize(
    ("spec", "environ", "needle"),
    [
        ({"key_env": "MISSING"}, {}, "MISSING is unset"),
        ({"key_file": "/nonexistent/key"}, {}, "cannot read /nonexistent/key"),
    ],
)
def test_unreadable_key_sources_are_config_errors(
    spec: dict[str, str], environ: dict[str, str], needle: str
) -> None:
    config = AccessConfig.model_validate({"keys": [{"name": "a", "models": ["*"], **spec}]})
    with pytest.raises(ConfigError, match=needle):
        KeyStore(config, environ=environ)


@pytest.mark.parametrize(
    "spec",
    [
        {"name": "a", "models": ["*"]},
        {"name": "a", "models": ["*"], "sha256": sha(KEY_A), "key_env": "X"},
        {"name": "a b", "models": ["*"], "sha256": sha(KEY_A)},
        {"name": "a", "models": [], "sha256": sha(KEY_A)},
        {"name": "a", "models": ["*"], "sha256": "abc"},
    ],
)
def test_bad_key_specs_are_rejected(spec: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        AccessConfig.model_validate({"keys": [spec]})


def test_the_same_key_twice_is_an_error() -> None:
    config = AccessConfig.model_validate(
        {
            "keys": [
                {"name": "a", "sha256": sha(KEY_A), "models": ["*"]},
                {"name": "b", "key_env": "K", "models": ["*"]},
            ]
        }
    )
    with pytest.raises(ConfigError, match="are the same key"):
        KeyStore(config, environ={"K": KEY_A})


def _write_keys(path: Path, *rows: str) -> None:
    path.write_text("keys:\n" + "".join(rows))
    stamp = time.time() + len(rows)  # a new mtime even within the filesystem's resolution
    os.utime(path, (stamp, stamp))


def test_keys_file_is_reloaded_and_a_bad_one_keeps_the_old_keys(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    row_a = f"  - {{name: a, sha256: {sha(KEY_A)}, models: ['*']}}\n"
    row_b = f"  - {{name: b, sha256: {sha(KEY_B)}, models: ['*']}}\n"
    _write_keys(path, row_a)
    store = KeyStore(AccessConfig(keys_file=path))
    assert auth(store, KEY_A) == "a"
    with pytest.raises(InvalidApiKey):
        auth(store, KEY_B)
    assert not store.maybe_reload()

    _write_keys(path, row_a, row_b)
    assert store.maybe_reload()
    assert auth(store, KEY_B) == "b"

    _write_keys(path, row_a.replace("'*'", "'*'") + "  - {name: broken}\n", row_b, row_b)
    assert not store.maybe_reload()
    assert auth(store, KEY_B) == "b"  # kept

    _write_keys(path, row_a.replace("models", "revoked: true, models"))
    assert store.maybe_reload()
    with pytest.raises(RevokedApiKey):
        auth(store, KEY_A)
    with pytest.raises(InvalidApiKey):
        auth(store, KEY_B)


def test_an_empty_keys_file_refuses_everyone(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text("keys: []\n")
    store = KeyStore(AccessConfig(keys_file=path))
    assert store.enabled
    with pytest.raises(InvalidApiKey):
        auth(store, KEY_A)
