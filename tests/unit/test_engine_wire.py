"""The engine processes' messages and payload layout: what goes in comes out, and what cannot be is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app.engine import payloads, wire
from app.engine.arena import Arena
from app.errors import InvalidImage, Overloaded, Unavailable
from app.inference.payload import DecodedImage, EncodedImage, ImageHeader

MESSAGES = [
    wire.Hello(worker=3, pid=1234, arena_bytes=1 << 20),
    wire.Ready(3, 99, {"model": "clip-tiny", "dim": 64}, "clip-tiny", None, "pil", "pool", 32),
    wire.Refused("protocol version 2"),
    wire.Submit("clip-tiny", [wire.Item(1, "images", 7, 123.5, wire.Form.JPEG, 64, 100, (640, 480, 6))]),
    wire.Results(2, [wire.Outcome(1), wire.Outcome(2, "invalid_image", "corrupt")], b"\x00" * 8),
    wire.Cancel([4, 5]),
    wire.Expect(3, 0),
]


def test_wire_message_comes_out_of_a_byte_stream_as_it_went_in_split_anywhere():
    stream = b"".join(wire.encode(m) for m in MESSAGES)
    reader = wire.FrameReader()
    received = [m for i in range(0, len(stream), 7) for m in reader.feed(stream[i : i + 7])]
    assert received == MESSAGES


@pytest.mark.parametrize(
    "frame",
    [
        wire.HEAD.pack(99, 2, 0) + b"{}",  # no such kind
        wire.HEAD.pack(wire.Kind.SUBMIT, 2, 0) + b"{}",  # not a submit's body
        wire.HEAD.pack(wire.Kind.SUBMIT, 38, 0) + b'["m",[[1,"other",1,1.0,0,0,0,[]]]]'.ljust(38),
        wire.HEAD.pack(wire.Kind.HELLO, wire.MAX_FRAME_BYTES, 0),  # too large to be one
    ],
    ids=["kind", "body", "queue", "size"],
)
def test_wire_frame_that_cannot_be_a_message_is_a_protocol_error(frame):
    with pytest.raises(wire.ProtocolError):
        list(wire.FrameReader().feed(frame))


@pytest.mark.parametrize(
    ("error", "code"),
    [(InvalidImage("corrupt"), "invalid_image"), (Overloaded("full"), "overloaded"), (Unavailable("x"), "unavailable")],
)
def test_wire_item_error_is_the_same_domain_error_on_the_other_side(error, code):
    outcome = wire.error_outcome(5, error)
    again = wire.outcome_error(outcome.code, outcome.message)
    assert (outcome.code, type(again), again.message) == (code, type(error), error.message)


def test_wire_engine_bug_is_no_domain_error_on_the_worker():
    outcome = wire.error_outcome(5, KeyError("boom"))
    assert outcome.code == "internal_error"
    assert isinstance(wire.outcome_error(outcome.code, outcome.message), wire.EngineFailure)


PAYLOADS = [
    torch.randn(3, 8, 8),
    torch.tensor([49406, 320, 1125, 49407, 0, 0], dtype=torch.int64),
    torch.randn(2, 3).to(torch.bfloat16),
    DecodedImage(np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)),
    EncodedImage(b"\xff\xd8\xff" + bytes(range(200)) + b"\xff\xd9", ImageHeader(640, 480, 6)),
]


@pytest.mark.parametrize("payload", PAYLOADS, ids=["f32", "tokens", "bf16", "rgb", "jpeg"])
def test_payload_read_from_the_arena_equals_what_was_written(payload):
    arena = Arena(1 << 16)
    form, meta, data = payloads.layout(payload)
    offset = arena.try_take(payloads.nbytes(data))
    arena.write(offset, data)
    item = wire.Item(1, "images", 1, 0.0, form, offset, payloads.nbytes(data), meta)
    (sent,) = wire.FrameReader().feed(wire.encode(wire.Submit("m", [item])))
    got = payloads.read(sent.items[0], arena.bytes)
    if isinstance(payload, torch.Tensor):
        assert got.dtype == payload.dtype and torch.equal(got, payload)
    elif isinstance(payload, DecodedImage):
        assert np.array_equal(got.pixels, payload.pixels)
    else:
        assert (got.encoded(), got.header) == (payload.data, payload.header)
    arena.close()


@pytest.mark.parametrize(
    ("offset", "length", "meta"),
    [(0, 1 << 17, ("float32", 1 << 15)), (-64, 64, ("float32", 16)), (0, 64, ("float32", 17)), (0, 8, ("object", 1))],
    ids=["past-the-end", "negative", "shape", "dtype"],
)
def test_payload_naming_bytes_it_cannot_have_is_a_protocol_error(offset, length, meta):
    arena = np.zeros(1 << 16, dtype=np.uint8)
    with pytest.raises(wire.ProtocolError):
        payloads.read(wire.Item(1, "images", 1, 0.0, wire.Form.TENSOR, offset, length, meta), arena)
