"""HTTP/2 as gRPC uses it (RFC 9113, RFC 7541): frame layout, the codes used, and HPACK both ways.

Header blocks are decoded here rather than by `hpack.Decoder`, which cost a gRPC call about 37 us of
the worker's one interpreter (its per-field objects and debug logging), more than the rest of the
transport together. Huffman-coded strings and the static table are hpack's. Answers' headers are
written as literals that use no dynamic table, so the encoder keeps no state.
"""

from __future__ import annotations

import struct
from collections import deque

from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_HEAD = struct.Struct(">BHBBI")  # length (24 bits, as 8 + 16), type, flags, stream
SETTING = struct.Struct(">HI")
WINDOW = struct.Struct(">I")
GOAWAY_PAYLOAD = struct.Struct(">II")  # last stream, error code
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY_FLAG = 0x4, 0x8, 0x20
MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE, MAX_HEADER_LIST_SIZE = 0x3, 0x4, 0x5, 0x6
NO_ERROR, PROTOCOL_ERROR, FRAME_SIZE_ERROR, COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 0x0, 0x1, 0x6, 0x9, 0xB
DEFAULT_WINDOW = 65535
DEFAULT_MAX_FRAME = 16384
DEFAULT_TABLE_BYTES = 4096  # SETTINGS_HEADER_TABLE_SIZE, which we do not change
STATIC_TABLE = HeaderTable.STATIC_TABLE  # entries 1..61
ENTRY_OVERHEAD = 32  # bytes RFC 7541 counts for each table entry beyond its name and value


class ProtocolViolation(Exception):
    """The peer broke HTTP/2: the connection ends with GOAWAY and this error code."""

    def __init__(self, code: int, why: str):
        super().__init__(why)
        self.code = code


def frame_head(kind: int, flags: int, stream_id: int, length: int) -> bytes:
    """The 9 bytes before a frame's payload of `length` bytes."""
    return FRAME_HEAD.pack(length >> 16, length & 0xFFFF, kind, flags, stream_id)


def frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return frame_head(kind, flags, stream_id, len(payload)) + payload


def read_frame_head(buffer: bytes, at: int = 0) -> tuple[int, int, int, int]:
    """The frame head at `at` of `buffer`: its payload's length, type, flags and stream."""
    high, low, kind, flags, stream_id = FRAME_HEAD.unpack_from(buffer, at)
    return (high << 16) | low, kind, flags, stream_id & 0x7FFFFFFF


def unpadded(flags: int, payload: bytes) -> bytes:
    """A DATA or HEADERS frame's payload without its padding."""
    if not flags & PADDED:
        return payload
    if not payload or payload[0] >= len(payload):
        raise ProtocolViolation(PROTOCOL_ERROR, "padding longer than its frame")
    return payload[1 : len(payload) - payload[0]]


class HeaderDecoder:
    """One connection's HPACK decoder: its dynamic table, as the peer's encoder left it."""

    def __init__(self, max_list_bytes: int):
        self._table: deque[tuple[bytes, bytes]] = deque()  # the newest first: index 62 is self._table[0]
        self._table_bytes = 0
        self._table_limit = DEFAULT_TABLE_BYTES
        self._max_list_bytes = max_list_bytes

    def decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        """The block's header fields in order; ProtocolViolation(COMPRESSION_ERROR) for a malformed one."""
        try:
            return self._decode(block)
        except (IndexError, ValueError) as error:
            raise ProtocolViolation(COMPRESSION_ERROR, f"a header block that does not decode: {error}") from None

    def _decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        fields: list[tuple[bytes, bytes]] = []
        list_bytes, at, end = 0, 0, len(block)
        while at < end:
            first = block[at]
            if first & 0x80:  # an indexed field
                index, at = _integer(block, at, 7)
                field = self._entry(index)
            elif first & 0x40:  # a literal, added to the table
                index, at = _integer(block, at, 6)
                field, at = self._literal(block, at, index)
                self._add(field)
            elif first & 0x20:  # a table size update
                size, at = _integer(block, at, 5)
                if size > DEFAULT_TABLE_BYTES:
                    raise ValueError(f"a table of {size} bytes, over the {DEFAULT_TABLE_BYTES} allowed")
                self._table_limit = size
                self._evict(0)
                continue
            else:  # a literal without indexing, or never indexed
                index, at = _integer(block, at, 4)
                field, at = self._literal(block, at, index)
            list_bytes += len(field[0]) + len(field[1]) + ENTRY_OVERHEAD
            if list_bytes > self._max_list_bytes:
                raise ValueError(f"headers over {self._max_list_bytes} bytes")
            fields.append(field)
        return fields

    def _entry(self, index: int) -> tuple[bytes, bytes]:
        if 0 < index <= len(STATIC_TABLE):
            return STATIC_TABLE[index - 1]
        if index == 0 or index - len(STATIC_TABLE) > len(self._table):
            raise ValueError(f"no table entry {index}")
        return self._table[index - len(STATIC_TABLE) - 1]

    def _literal(self, block: bytes, at: int, name_index: int) -> tuple[tuple[bytes, bytes], int]:
        if name_index:
            name = self._entry(name_index)[0]
        else:
            name, at = _string(block, at)
        value, at = _string(block, at)
        return (name, value), at

    def _add(self, field: tuple[bytes, bytes]) -> None:
        size = len(field[0]) + len(field[1]) + ENTRY_OVERHEAD
        if size > self._table_limit:  # an entry larger than the table empties it (RFC 7541, 4.4)
            self._table.clear()
            self._table_bytes = 0
            return
        self._evict(size)
        self._table.appendleft(field)
        self._table_bytes += size

    def _evict(self, room: int) -> None:
        while self._table and self._table_bytes + room > self._table_limit:
            name, value = self._table.pop()
            self._table_bytes -= len(name) + len(value) + ENTRY_OVERHEAD


def _integer(block: bytes, at: int, prefix_bits: int) -> tuple[int, int]:
    """An integer with an N-bit prefix at `at`, and where it ends."""
    limit = (1 << prefix_bits) - 1
    value = block[at] & limit
    at += 1
    if value < limit:
        return value, at
    shift = 0
    while True:
        byte = block[at]
        at += 1
        value += (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7
        if shift > 28:
            raise ValueError("an integer over 2^28")


def _string(block: bytes, at: int) -> tuple[bytes, int]:
    huffman = block[at] & 0x80
    length, at = _integer(block, at, 7)
    if at + length > len(block):
        raise ValueError("a string longer than its block")
    data = block[at : at + length]
    return (decode_huffman(data) if huffman else data), at + length


def encode_integer(value: int, prefix_bits: int, first: int) -> bytes:
    """HPACK's integer with an N-bit prefix, its first byte's high bits `first`."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    encoded, value = bytearray([first | limit]), value - limit
    while value >= 128:
        encoded.append((value & 0x7F) | 0x80)
        value >>= 7
    encoded.append(value)
    return bytes(encoded)


def literal_field(name: bytes, value: bytes) -> bytes:
    """A header field as an HPACK literal without indexing, of a new name, no Huffman code: no table needed."""
    return b"\x00" + encode_integer(len(name), 7, 0) + name + encode_integer(len(value), 7, 0) + value
