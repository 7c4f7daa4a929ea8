"""Reading the official ``anthropic`` client's replies in tests (the dev extra's client)."""

from __future__ import annotations

from collections.abc import Iterable

from anthropic.types import (
    Message,
    RawContentBlockDeltaEvent,
    RawMessageStreamEvent,
    TextBlock,
    TextDelta,
)


def text_of(message: Message) -> str:
    """The text of a message's one content block (a text block, or the test fails)."""
    (block,) = message.content
    assert isinstance(block, TextBlock), block
    return block.text


def streamed_text(events: Iterable[RawMessageStreamEvent]) -> str:
    """The text of a stream's content_block_delta events (text deltas, or the test fails)."""
    pieces = []
    for event in events:
        if isinstance(event, RawContentBlockDeltaEvent):
            assert isinstance(event.delta, TextDelta), event.delta
            pieces.append(event.delta.text)
    return "".join(pieces)
