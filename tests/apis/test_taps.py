"""The Responses and Messages stream taps, with the stream cut at every byte boundary."""

from __future__ import annotations

from quantroute.apis.taps import MessagesTap, ResponsesTap, frame_data, frame_event
from quantroute.proxy.sse import Usage
from quantroute.sim import wire_messages as mw
from quantroute.sim import wire_responses as rw
from quantroute.sim.wire import JsonObject


def responses_stream(previous: str | None = None) -> bytes:
    request = rw.ResponsesRequest(model="m", input="hi", previous_response_id=previous)
    events = rw.EventWriter("msg_1")

    def response(output: list[JsonObject], status: str, use: JsonObject | None) -> JsonObject:
        return rw.response_object(request, "resp_1", 0, "m", 100, output=output, status=status,
                                  use=use)  # fmt: skip

    frames = [events.envelope("response.created", response([], "in_progress", None)),
              events.envelope("response.in_progress", response([], "in_progress", None)),
              *events.open_message(), events.delta("Hel"), events.delta("lo"),
              *events.close_message()]  # fmt: skip
    item = rw.output_message("msg_1", "Hello", "completed")
    frames.append(
        events.envelope("response.completed", response([item], "completed", rw.usage(7, 2)))
    )
    return "".join(frames).encode()


def messages_stream() -> bytes:
    frames = [mw.message_start("chatcmpl-1", "m", 11), mw.block_start(0), mw.text_delta(0, "Hi"),
              mw.text_delta(0, " there"), mw.block_stop(0),
              mw.message_delta("stop", mw.usage(11, 2)), mw.message_stop()]  # fmt: skip
    return "".join(frames).encode()


def feed_in_two(tap: ResponsesTap | MessagesTap, stream: bytes, cut: int) -> bytes:
    return tap.feed(stream[:cut]) + tap.feed(stream[cut:]) + tap.flush()


STREAM = responses_stream()


def test_responses_tap_passes_bytes_and_reads_the_final_response_wherever_cut() -> None:
    for cut in range(len(STREAM) + 1):
        tap = ResponsesTap()
        assert feed_in_two(tap, STREAM, cut) == STREAM, cut
        assert tap.finish() == Usage(7, 2), cut
        assert tap.final is not None and tap.final["output"][0]["content"][0]["text"] == "Hello"


def test_responses_tap_restores_previous_response_id_in_every_envelope() -> None:
    tap = ResponsesTap({"previous_response_id": "resp_0"})
    out = feed_in_two(tap, STREAM, len(STREAM) // 3)
    frames = [f for f in out.split(b"\n\n") if f]
    envelopes = [
        f for f in frames if frame_event(f).startswith(b"response.") and b'"response"' in f
    ]
    assert [frame_event(f) for f in envelopes] == [
        b"response.created", b"response.in_progress", b"response.completed"
    ]  # fmt: skip
    assert all(frame_data(f)["response"]["previous_response_id"] == "resp_0" for f in envelopes)
    others = [f for f in frames if f not in envelopes]
    assert b"\n\n".join(others) in STREAM  # deltas and item events untouched, in order
    assert tap.final is not None and tap.final["previous_response_id"] == "resp_0"


def test_responses_tap_reads_crlf_framed_streams() -> None:
    crlf = STREAM.replace(b"\n", b"\r\n")
    tap = ResponsesTap()
    assert feed_in_two(tap, crlf, 100) == crlf
    assert tap.finish() == Usage(7, 2)


def test_responses_tap_without_a_final_event_knows_no_usage() -> None:
    cut = STREAM.rfind(b"event: response.completed")
    tap = ResponsesTap()
    tap.feed(STREAM[:cut])
    assert tap.finish() is None and tap.final is None


MESSAGES = messages_stream()


def test_messages_tap_reads_input_and_output_tokens_wherever_cut() -> None:
    for cut in range(len(MESSAGES) + 1):
        tap = MessagesTap()
        assert feed_in_two(tap, MESSAGES, cut) == MESSAGES, cut
        assert tap.finish() == Usage(11, 2), cut


def test_messages_tap_without_message_delta_knows_no_usage() -> None:
    tap = MessagesTap()
    tap.feed(MESSAGES[: MESSAGES.find(b"event: message_delta")])
    assert tap.finish() is None


def test_frame_helpers() -> None:
    frame = b'event: x.y\ndata: {"a": 1}\n\n'
    assert frame_event(frame) == b"x.y"
    assert frame_data(frame) == {"a": 1}
    assert frame_event(b"data: {}\n\n") == b""
    assert frame_data(b"event: x\ndata: not json\n\n") is None
