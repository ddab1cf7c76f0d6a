"""The ordered, never-blocking socket writer behind direct websocket delivery (app/wsout.py)."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest
import websocket  # websocket-client: an independent frame parser

from app.wsout import FrameWriter, OrderedSocket, text_frame


def parse_frames(data: bytes) -> list[str]:
    frames, offset = [], 0
    while offset < len(data):
        assert data[offset] == 0x81, f"not a final text frame at byte {offset}"
        length, offset = data[offset + 1] & 0x7F, offset + 2
        if length == 126:
            length, offset = struct.unpack_from("!H", data, offset)[0], offset + 2
        elif length == 127:
            length, offset = struct.unpack_from("!Q", data, offset)[0], offset + 8
        frames.append(data[offset : offset + length].decode())
        offset += length
    return frames


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    server, client = socket.socketpair()
    for sock, option in ((server, socket.SO_SNDBUF), (client, socket.SO_RCVBUF)):
        sock.setsockopt(socket.SOL_SOCKET, option, 4096)  # small: fills quickly
    yield server, client
    server.close()
    client.close()


def read_all(sock: socket.socket, expected: int, timeout: float = 5.0) -> bytes:
    data = b""
    sock.settimeout(timeout)
    while len(data) < expected:
        data += sock.recv(65536)
    return data


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 70000])
def test_text_frame_lengths(size: int) -> None:
    text = "x" * size
    unmasked = websocket.ABNF(1, 0, 0, 0, websocket.ABNF.OPCODE_TEXT, 0, text)
    assert text_frame(text) == unmasked.format()
    assert parse_frames(text_frame(text)) == [text]


def test_offer_never_blocks_and_a_stalled_reader_fails(pair: tuple) -> None:
    server, _client = pair  # the client never reads
    writer = FrameWriter(server, max_pending=20_000)
    frame = text_frame("y" * 200)
    started = time.monotonic()
    results = [writer.offer(frame) for _ in range(2000)]
    assert time.monotonic() - started < 1.0  # 2000 writes to a dead-slow peer: no waiting
    assert results[0] is True and results[-1] is False
    assert writer.failed and writer.wake.is_set() and not writer.pending
    with pytest.raises(BrokenPipeError):
        writer.send(frame)


def test_backlog_is_flushed_in_order_by_the_owner(pair: tuple) -> None:
    server, client = pair
    writer = FrameWriter(server)
    texts = [f"event {i} " + "z" * 300 for i in range(200)]
    for text in texts:
        assert writer.offer(text_frame(text))
    assert writer.pending and writer.wake.is_set()  # the kernel took only part of it
    expected = sum(len(text_frame(t)) for t in texts)
    reader = threading.Thread(target=lambda: received.append(read_all(client, expected)))
    received: list[bytes] = []
    reader.start()
    writer.flush()
    reader.join(timeout=10)
    assert parse_frames(received[0]) == texts and not writer.pending and not writer.failed


def test_concurrent_writers_never_interleave_bytes(pair: tuple) -> None:
    server, client = pair
    writer = FrameWriter(server)
    ordered = OrderedSocket(server, writer)  # what simple-websocket writes through
    relay_texts = [f"relay {i} " + "r" * 150 for i in range(300)]
    owner_texts = [f"owner {i} " + "o" * 150 for i in range(300)]
    expected = sum(len(text_frame(t)) for t in relay_texts + owner_texts)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(read_all(client, expected)))
    reader.start()

    def relay() -> None:
        for text in relay_texts:
            assert writer.offer(text_frame(text))

    def owner() -> None:
        for text in owner_texts:
            ordered.send(text_frame(text))

    threads = [threading.Thread(target=relay), threading.Thread(target=owner)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    writer.flush()
    reader.join(timeout=10)
    frames = parse_frames(received[0])  # every frame intact
    assert [f for f in frames if f.startswith("relay")] == relay_texts
    assert [f for f in frames if f.startswith("owner")] == owner_texts
    assert ordered.fileno() == server.fileno()  # everything else is the raw socket's


def test_a_broken_socket_fails_the_writer(pair: tuple) -> None:
    server, client = pair
    client.close()
    writer = FrameWriter(server)
    frame = text_frame("after the peer left")
    outcomes = [writer.offer(frame) for _ in range(3)]
    assert outcomes[-1] is False and writer.failed
