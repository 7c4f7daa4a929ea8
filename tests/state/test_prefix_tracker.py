"""The gateway's per-replica prefix index: lookups before a decision, records per attempt."""

from __future__ import annotations

import pytest

from quantroute.config import PrefixConfig
from quantroute.core.model import RequestFeatures
from quantroute.core.prefix import PrefixSettings, PromptBlocks, chat_prefix_text
from quantroute.state.prefix import PrefixTracker

CONFIG = PrefixConfig(block_chars=16, ttl_s=60.0, session_ttl_s=30.0)
SETTINGS = PrefixSettings(CONFIG.block_chars, CONFIG.max_blocks_per_backend, CONFIG.ttl_s)
SYSTEM = ("system", "Shared instructions for the whole help desk. " * 4)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def request(question: str, session: str | None = None) -> RequestFeatures:
    text = chat_prefix_text([SYSTEM, ("user", question)])
    prompt = PromptBlocks.of(text, SETTINGS)
    return RequestFeatures("auto", len(text) // 4, 64, prompt=prompt, session_id=session)


def test_a_prompt_sent_once_is_expected_on_that_backend_only() -> None:
    clock = Clock()
    tracker = PrefixTracker(CONFIG, 4.0, clock)
    first = tracker.annotate(request("Where is my parcel?"), ["a", "b"])
    assert first.prefix is not None and first.prefix.shares == {"a": 0.0, "b": 0.0}
    assert tracker.sent("a", first) == 0.0
    clock.now = 10.0
    second = tracker.annotate(request("Can I change my address?"), ["a", "b"])
    assert second.prefix is not None
    assert second.prefix.share("a") > 0.7  # the shared system prompt
    assert second.prefix.share("b") == 0.0
    assert second.prefix.entries["a"] == tracker.index.entries("a") > 0
    assert tracker.sent("a", second) == pytest.approx(second.prefix.share("a"))
    assert tracker.expected_hit_rate("a") == pytest.approx(
        tracker.expected_tokens["a"] / tracker.prompt_tokens["a"]
    )
    assert tracker.expected_hit_rate("b") is None
    clock.now = 71.0  # past the horizon since the last refresh at 10
    third = tracker.annotate(request("Anything else?"), ["a", "b"])
    assert third.prefix is not None and third.prefix.share("a") == 0.0


def test_sessions_are_remembered_per_backend_and_expire() -> None:
    clock = Clock()
    tracker = PrefixTracker(CONFIG, 4.0, clock)
    turn = tracker.annotate(request("Hello", session="conv-1"), ["a", "b"])
    assert turn.prefix is not None and turn.prefix.session_backend is None
    tracker.sent("b", turn)
    clock.now = 20.0
    later = tracker.annotate(request("And then?", session="conv-1"), ["a", "b"])
    assert later.prefix is not None and later.prefix.session_backend == "b"
    clock.now = 51.0
    expired = tracker.annotate(request("Still there?", session="conv-1"), ["a", "b"])
    assert expired.prefix is not None and expired.prefix.session_backend is None


def test_capacity_from_scrapes_bounds_the_index_and_departed_backends_are_forgotten() -> None:
    tracker = PrefixTracker(CONFIG, 4.0, Clock())
    tracker.set_capacity("a", 24)  # 24 tokens = 96 characters = 6 blocks of 16
    tracker.set_capacity("b", None)  # unknown: the configured bound only
    long = request("x" * 400)
    tracker.sent("a", long)
    tracker.sent("b", long)
    assert tracker.index.entries("a") == 6
    assert long.prompt is not None
    assert tracker.index.entries("b") == len(long.prompt.keys) > 6
    assert tracker.admin("a")["index_capacity_blocks"] == 6
    tracker.retain(["b"])
    assert tracker.index.entries("a") == 0


def test_requests_without_prompt_blocks_are_left_alone() -> None:
    tracker = PrefixTracker(CONFIG, 4.0, Clock())
    plain = RequestFeatures("auto", 10, 10)
    assert tracker.annotate(plain, ["a"]) is plain
    assert tracker.sent("a", plain) == 0.0
    assert tracker.index.entries() == 0
