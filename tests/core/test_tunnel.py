"""The L3 gateway door's tunnel (guest/tunnel.py), both ends in this process over a socketpair
standing in for the virtio-serial port: many connections at once, large transfers both ways with
half-close, a stalled reader that does not stall the others, and the one socket the host end reaches."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

from posture.guest import tunnel


def _echo_server(path: Path) -> socket.socket:
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(64)

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=_echo, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return srv


def _echo(conn: socket.socket) -> None:
    with conn:
        first = conn.recv(5)
        if first == b"BULK ":  # send 8 MiB, then echo until EOF
            conn.sendall(os.urandom(1) * (8 << 20))
        else:
            conn.sendall(first)
        while True:
            data = conn.recv(65536)
            if not data:
                break
            conn.sendall(data)


def _pair(tmp_path: Path):
    a, b = socket.socketpair()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    target = tmp_path / "gw.sock"
    srv = _echo_server(target)
    guest = tunnel.Tunnel(a.fileno(), listener=listener)
    host = tunnel.Tunnel(b.fileno(), connect=str(target))
    stops = [os.pipe(), os.pipe()]
    threads = [threading.Thread(target=guest.run, args=(stops[0][0],), daemon=True),
               threading.Thread(target=host.run, args=(stops[1][0],), daemon=True)]
    for t in threads:
        t.start()

    def close() -> None:
        for _r, w in stops:
            os.write(w, b"x")
        for t in threads:
            t.join(5)
        srv.close()
        a.close()
        b.close()

    return listener.getsockname()[1], close, threads


def _roundtrip(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        got = bytearray()
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return bytes(got)
            got += chunk


def test_many_connections_and_big_transfers(tmp_path: Path) -> None:
    port, close, _ = _pair(tmp_path)
    try:
        results: dict[int, bool] = {}
        payloads = {i: os.urandom(1 << 20) + bytes([i]) for i in range(8)}

        def one(i: int) -> None:
            results[i] = _roundtrip(port, payloads[i]) == payloads[i]

        workers = [threading.Thread(target=one, args=(i,)) for i in range(8)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(60)
        assert results == dict.fromkeys(range(8), True)
    finally:
        close()


def test_a_stalled_reader_does_not_stall_the_others(tmp_path: Path) -> None:
    port, close, _ = _pair(tmp_path)
    try:
        stalled = socket.create_connection(("127.0.0.1", port), timeout=20)
        stalled.sendall(b"BULK ")  # 8 MiB comes back, and nobody reads it
        for i in range(5):
            assert _roundtrip(port, b"hello %d" % i) == b"hello %d" % i
        got = 0
        while got < (8 << 20):  # the stalled stream's bytes were held by its window, not lost
            got += len(stalled.recv(1 << 20))
        assert got == 8 << 20
        stalled.close()
    finally:
        close()


def test_host_end_reaches_only_its_socket(tmp_path: Path) -> None:
    """Whatever a connection sends, the host end joins it to its one socket: an echo here."""
    port, close, _ = _pair(tmp_path)
    try:
        request = b"CONNECT 10.0.0.1:22 HTTP/1.1\r\nHost: 10.0.0.1\r\n\r\n"
        assert _roundtrip(port, request) == request
    finally:
        close()


def test_unreachable_gateway_closes_the_connection(tmp_path: Path) -> None:
    a, b = socket.socketpair()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    guest = tunnel.Tunnel(a.fileno(), listener=listener)
    host = tunnel.Tunnel(b.fileno(), connect=str(tmp_path / "absent.sock"))
    r1, w1 = os.pipe()
    r2, w2 = os.pipe()
    ts = [threading.Thread(target=guest.run, args=(r1,), daemon=True), threading.Thread(target=host.run, args=(r2,), daemon=True)]
    for t in ts:
        t.start()
    try:
        with socket.create_connection(listener.getsockname(), timeout=10) as s:
            s.sendall(b"x")
            assert s.recv(10) == b""  # closed, not hung
    finally:
        os.write(w1, b"x")
        os.write(w2, b"x")
        for t in ts:
            t.join(5)


def test_channel_end_ends_every_connection(tmp_path: Path) -> None:
    port, close, threads = _pair(tmp_path)
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"hi")
    assert s.recv(2) == b"hi"
    close()
    assert not any(t.is_alive() for t in threads)
    s.settimeout(5)
    try:
        assert s.recv(10) == b""
    except ConnectionResetError:
        pass
