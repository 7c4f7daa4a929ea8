"""What parsing gives the prefix index: the prompt's blocks and the session id."""

from __future__ import annotations

import json
from collections.abc import Mapping

import pytest

from quantroute.config import PolicyConfig, PrefixConfig
from quantroute.core.model import RequestFeatures
from quantroute.core.prefix import PrefixSettings, chat_prefix_text, text_blocks
from quantroute.proxy.parse import parse_request

SETTINGS = PrefixSettings(block_chars=16)
POLICY = PolicyConfig()
MESSAGES: list[dict[str, object]] = [
    {"role": "system", "content": "You are terse. " * 8},
    {"role": "user", "content": [{"type": "text", "text": "Summarise the ticket."}]},
]


def parse(
    body: Mapping[str, object],
    headers: dict[str, str] | None = None,
    *,
    policy: PolicyConfig = POLICY,
) -> RequestFeatures:
    raw = json.dumps(body).encode()
    return parse_request(None, raw, headers or {}, policy, 0, prefix=SETTINGS).features


def test_chat_blocks_cover_every_message_with_its_role() -> None:
    f = parse({"model": "auto", "messages": MESSAGES})
    text = chat_prefix_text([("system", "You are terse. " * 8), ("user", "Summarise the ticket.")])
    assert f.prompt is not None
    assert f.prompt.keys == text_blocks(text, 16)
    assert f.prompt.chars == len(text)


@pytest.mark.parametrize(
    ("prompt", "text"),
    [
        ("a plain completion prompt of some length", "a plain completion prompt of some length"),
        ([1, 2, 3, 40, 500], "1,2,3,40,500"),
        (["first part ", "second part"], "first part \x1esecond part"),
    ],
)
def test_completion_prompts(prompt: object, text: str) -> None:
    f = parse({"model": "auto", "prompt": prompt})
    assert f.prompt is not None and f.prompt.chars == len(text)


@pytest.mark.parametrize(
    ("headers", "body", "session"),
    [
        ({"x-session-id": "h"}, {"prompt_cache_key": "k", "user": "u"}, "h"),
        ({}, {"prompt_cache_key": "k", "user": "u"}, "k"),
        ({}, {"user": "u"}, "u"),
        ({}, {"user": ""}, None),
        ({}, {"user": 7}, None),
        ({}, {}, None),
    ],
)
def test_session_id_precedence(
    headers: dict[str, str], body: dict[str, object], session: str | None
) -> None:
    f = parse({"model": "auto", "messages": MESSAGES, **body}, headers)
    assert f.session_id == session


def test_session_from_body_can_be_turned_off_and_the_header_renamed() -> None:
    policy = PolicyConfig(
        prefix=PrefixConfig(session_header="x-conversation", session_from_body=False)
    )
    body = {"model": "auto", "messages": MESSAGES, "user": "u"}
    assert parse(body, {"x-session-id": "h"}, policy=policy).session_id is None
    assert parse(body, {"x-conversation": "c"}, policy=policy).session_id == "c"


def test_without_prefix_tracking_nothing_is_hashed() -> None:
    raw = json.dumps({"model": "auto", "messages": MESSAGES, "user": "u"}).encode()
    f = parse_request("chat", raw, {}, POLICY, 0).features
    assert (f.prompt, f.session_id, f.prefix) == (None, None, None)
