"""The whole answer's response: its header block is Starlette's, built the short way; it is sent
as Starlette sends a ``Response``, and its request is settled once, however sending ends."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.responses import Response
from starlette.types import Message

from quantroute.proxy.relay import WholeResponse

NAMES = st.sampled_from(
    ["x-quantroute-backend", "x-quantroute-decision", "x-quantroute-downgraded", "retry-after"]
)
VALUES = st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=40)
MEDIA = st.sampled_from(
    [
        "application/json",
        "text/event-stream",
        "text/plain",
        "text/plain; charset=latin-1",
        "text/html; Charset=UTF-8",
        "application/problem+json",
    ]
)
STATUS = st.sampled_from([100, 101, 200, 201, 204, 206, 304, 400, 404, 422, 429, 500, 502, 503])


@given(
    content=st.binary(max_size=64),
    status=STATUS,
    headers=st.dictionaries(NAMES, VALUES, max_size=4),
    media=MEDIA,
)
def test_its_headers_are_what_starlette_makes_of_the_same_answer(
    content: bytes, status: int, headers: dict[str, str], media: str
) -> None:
    ours = WholeResponse(content, status, headers=headers, media_type=media, after=lambda: None)
    theirs = Response(content, status, headers=headers, media_type=media)
    assert ours.raw_headers == theirs.raw_headers
    assert (ours.body, ours.status_code, ours.background) == (theirs.body, status, None)


def _send_all(response: Response, fail_at: int | None = None) -> list[Message]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        if len(sent) == fail_at:
            raise OSError("the client went away")
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    async def run() -> None:
        await response({"type": "http"}, receive, send)

    if fail_at is None:
        asyncio.run(run())
    else:
        with pytest.raises(OSError):
            asyncio.run(run())
    return sent


def test_it_is_sent_as_starlette_sends_a_response_then_settled_once() -> None:
    settled: list[int] = []
    headers = {"x-quantroute-backend": "a"}
    ours = WholeResponse(b"{}", 200, headers=headers, media_type="application/json",
                         after=lambda: settled.append(1))  # fmt: skip
    theirs = Response(b"{}", 200, headers=headers, media_type="application/json")
    assert _send_all(ours) == _send_all(theirs)
    assert settled == [1]
    ours.settle()  # once: a later call changes nothing
    assert settled == [1]


@pytest.mark.parametrize("fail_at", [0, 1])
def test_a_send_that_fails_still_settles_the_request(fail_at: int) -> None:
    settled: list[int] = []
    ours = WholeResponse(b"{}", 200, headers={}, media_type="application/json",
                         after=lambda: settled.append(1))  # fmt: skip
    assert len(_send_all(ours, fail_at)) == fail_at
    assert settled == [1]
