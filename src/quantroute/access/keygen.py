"""``quantroute gen-key`` and ``quantroute hash-key``: keys for keys.yaml, only digests stored."""

from __future__ import annotations

import hashlib
import secrets
import sys

PREFIX = "qr-"


def new_key() -> str:
    """A key with 256 bits from the OS's CSPRNG (43 URL-safe characters after the prefix)."""
    return PREFIX + secrets.token_urlsafe(32)


def sha256_hex(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def gen_key_main(name: str, *, raw: bool, admin: bool = False) -> int:
    """Print a new key's keys.yaml entry (a list item: ``>> keys.yaml`` once per key makes a
    valid keys file); the key itself goes to stderr, once. ``raw``: the key alone."""
    key = new_key()
    if raw:
        print(key)
        return 0
    print(f"# the key (give it to its user; it is not stored anywhere): {key}", file=sys.stderr)
    rights = 'models: ["*"], admin: true' if admin else "models: [auto]"
    print(f"- {{name: {name}, sha256: {sha256_hex(key)}, {rights}}}")
    return 0


def hash_key_main() -> int:
    key = sys.stdin.readline().strip()
    if not key:
        print("error: no key on stdin", file=sys.stderr)
        return 2
    print(sha256_hex(key))
    return 0
