"""The messages between an HTTP worker and an engine process, and how they are framed on the Unix socket.

A frame is a fixed head (message kind, JSON length, tail length), a JSON header (orjson) and a binary
tail. Payload bytes never travel in a frame: the worker writes them once into its shared-memory arena
(app.engine.arena) and a submitted item names its region. Only the vectors come back inline, as the
float32 tail of a Results frame. Every deadline is a `time.monotonic()` reading, which both processes
share: they run on one host.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import IntEnum

import orjson

from app import errors

VERSION = 1
HEAD = struct.Struct("<BII")  # kind, JSON header bytes, tail bytes
# A frame larger than this is a protocol error (a worker never sends one; results are split below it).
MAX_FRAME_BYTES = 256 << 20


class Kind(IntEnum):
    HELLO = 1  # worker → engine, with the arena's file descriptor
    READY = 2  # engine → worker: the model it serves
    REFUSED = 3  # engine → worker: why it will not serve this worker
    SUBMIT = 4
    RESULTS = 5
    CANCEL = 6
    EXPECT = 7


class Form(IntEnum):
    """How an item's bytes are laid out in the arena."""

    TENSOR = 0  # a C-contiguous tensor: dtype and shape in `meta` (float32 pixels, token ids)
    RGB = 1  # oriented uint8 pixels, height × width × 3: `meta` is [height, width]
    JPEG = 2  # a JPEG for the engine to decode: `meta` is [width, height, orientation] from its header


class ProtocolError(Exception):
    """A frame that the other side could not have sent: the connection is closed."""


@dataclass(frozen=True, slots=True)
class Hello:
    worker: int
    pid: int
    arena_bytes: int
    version: int = VERSION


@dataclass(frozen=True, slots=True)
class Ready:
    """What a worker needs from its engine: the model's info, how to preprocess and tokenise for it."""

    engine: int
    pid: int
    info: dict[str, object]  # app.inference.model.ModelInfo's fields
    tokenizer: str  # the open_clip model name whose tokenizer the engine's model uses
    preprocess_cfg: dict[str, object] | None  # open_clip's PreprocessCfg; None: send decoded RGB pixels
    image_preprocess: str  # IMAGE_PREPROCESS as the engine runs it
    jpeg_decode: str  # JPEG_DECODE as the engine runs it
    max_batch: int
    version: int = VERSION


@dataclass(frozen=True, slots=True)
class Item:
    """One payload submitted: its id (the worker's), queue, caller, deadline, and where its bytes are."""

    id: int
    queue: str  # images | texts
    caller: int  # the same for every item of one request: the engine's waves count requests
    deadline: float
    form: Form
    offset: int
    length: int
    meta: tuple[int | str, ...] = ()

    def to_wire(self) -> list[object]:
        deadline = self.deadline if math.isfinite(self.deadline) else None  # JSON has no infinity
        return [self.id, self.queue, self.caller, deadline, int(self.form), self.offset, self.length, self.meta]

    @classmethod
    def from_wire(cls, raw: list[object]) -> Item:
        try:
            ident, queue, caller, deadline, form, offset, length, meta = raw
            when = math.inf if deadline is None else float(deadline)  # type: ignore[arg-type]
            item = cls(int(ident), queue, int(caller), when, Form(form), int(offset), int(length), tuple(meta))  # type: ignore[arg-type, call-overload]
        except (TypeError, ValueError) as exc:
            raise ProtocolError(f"malformed item {raw!r:.200}: {exc}") from None
        if queue not in _QUEUES or not all(type(m) is int or type(m) is str for m in item.meta):
            raise ProtocolError(f"malformed item {raw!r:.200}")
        return item


_QUEUES = frozenset({"images", "texts"})


@dataclass(frozen=True, slots=True)
class Submit:
    model: str
    items: list[Item]


@dataclass(frozen=True, slots=True)
class Outcome:
    """One item's answer: a vector (its row of the Results tail), or an error code and message."""

    id: int
    code: str | None = None
    message: str | None = None


@dataclass(frozen=True, slots=True)
class Results:
    dim: int
    outcomes: list[Outcome]
    vectors: bytes = b""  # float32, one row of `dim` per outcome without a code, in order


@dataclass(frozen=True, slots=True)
class Cancel:
    ids: list[int]


@dataclass(frozen=True, slots=True)
class Expect:
    """Items this worker is still preparing for each queue (absolute counts, not changes)."""

    images: int
    texts: int


@dataclass(frozen=True, slots=True)
class Refused:
    reason: str


Message = Hello | Ready | Refused | Submit | Results | Cancel | Expect


def encode(message: Message) -> bytes:
    """Return one frame holding `message`."""
    tail = b""
    body: object
    match message:
        case Submit(model, items):
            kind, body = Kind.SUBMIT, [model, [i.to_wire() for i in items]]
        case Results(dim, outcomes, vectors):
            kind, body, tail = Kind.RESULTS, [dim, [[o.id, o.code, o.message] for o in outcomes]], vectors
        case Cancel(ids):
            kind, body = Kind.CANCEL, ids
        case Expect(images, texts):
            kind, body = Kind.EXPECT, [images, texts]
        case Hello() | Ready() | Refused():
            kind, body = _PLAIN[type(message)], _fields(message)
    header = orjson.dumps(body)
    return HEAD.pack(kind, len(header), len(tail)) + header + tail


def decode(kind: int, header: bytes, tail: bytes) -> Message:
    """Return the message of one frame; raise ProtocolError when it cannot be one."""
    try:
        body = orjson.loads(header)
        match Kind(kind):
            case Kind.SUBMIT:
                return Submit(str(body[0]), [Item.from_wire(raw) for raw in body[1]])
            case Kind.RESULTS:
                outcomes = [Outcome(int(i), c, m) for i, c, m in body[1]]
                return Results(int(body[0]), outcomes, tail)
            case Kind.CANCEL:
                return Cancel([int(i) for i in body])
            case Kind.EXPECT:
                return Expect(int(body[0]), int(body[1]))
            case plain:
                return _BY_KIND[plain](**body)
    except ProtocolError:
        raise
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise ProtocolError(f"malformed frame of kind {kind}: {exc}") from None


@dataclass(slots=True)
class FrameReader:
    """Split a byte stream into messages."""

    _buffer: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> Iterator[Message]:
        """Add received bytes; yield every message they complete."""
        self._buffer += data
        while len(self._buffer) >= HEAD.size:
            kind, header_len, tail_len = HEAD.unpack_from(self._buffer)
            end = HEAD.size + header_len + tail_len
            if end > MAX_FRAME_BYTES:
                raise ProtocolError(f"a frame of {end} bytes")
            if len(self._buffer) < end:
                return
            header = bytes(self._buffer[HEAD.size : HEAD.size + header_len])
            tail = bytes(self._buffer[HEAD.size + header_len : end])
            del self._buffer[:end]
            yield decode(kind, header, tail)


# The domain errors an engine reports per item, by code; any other code is a failure of the engine itself.
_ERRORS: dict[str, type[errors.ServiceError]] = {
    cls.code: cls for cls in (errors.InvalidImage, errors.ImageTooLarge, errors.Overloaded, errors.Unavailable)
}


class EngineFailure(RuntimeError):
    """The engine failed on an item for a reason of its own (a bug): answered 500, as in one process."""


def outcome_error(code: str, message: str | None) -> Exception:
    """Return the exception a worker raises for an item the engine answered with `code`."""
    cls = _ERRORS.get(code)
    return cls(message or code) if cls is not None else EngineFailure(f"{code}: {message}")


def error_outcome(ident: int, exc: BaseException) -> Outcome:
    """Return the answer for an item that failed with `exc` in the engine."""
    if isinstance(exc, errors.ServiceError) and exc.code in _ERRORS:
        return Outcome(ident, exc.code, exc.message)
    return Outcome(ident, "internal_error", f"{type(exc).__name__}: {exc}")


_PLAIN: dict[type, Kind] = {Hello: Kind.HELLO, Ready: Kind.READY, Refused: Kind.REFUSED}
_BY_KIND: dict[Kind, type] = {kind: cls for cls, kind in _PLAIN.items()}


def _fields(message: Hello | Ready | Refused) -> dict[str, object]:
    return {name: getattr(message, name) for name in message.__dataclass_fields__}
