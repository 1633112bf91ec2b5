"""A stand-in for the Anthropic Messages API, driven by a script of "model" turns.

It speaks the streaming shape Claude Code uses (message_start, content_block_start with a
tool_use block, content_block_delta with input_json_delta, content_block_stop, message_delta
with stop_reason tool_use, message_stop) and the plain JSON one, answers count_tokens and the
OAuth token endpoint (for refresh tests), and records every request: its path, its headers
(x-api-key, Authorization, ...) and the tool_results the "model" was sent back.

In-process:   with StandIn(script) as api: ... api.url, api.requests
In a netns:   python3 anthropic.py --host 198.51.100.10 --port 8443 --script S.json --record R.jsonl
A script is a list of turns: {"tool": "Bash", "input": {"command": "env"}} or {"text": "done"}.
The turn answered is the number of assistant messages already in the request's conversation.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

MODEL = "claude-standin-1"


def _tool_results(body: dict[str, Any]) -> list[str]:
    """The text of every tool_result block in the request's messages."""
    out: list[str] = []
    for message in body.get("messages") or []:
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for block in content:
            if isinstance(block, dict) and block.get("type") == "tool_result":
                inner = block.get("content")
                if isinstance(inner, str):
                    out.append(inner)
                elif isinstance(inner, list):
                    out.append("".join(str(b.get("text", "")) for b in inner if isinstance(b, dict)))
    return out


def _turn_index(body: dict[str, Any]) -> int:
    return sum(1 for m in body.get("messages") or [] if m.get("role") == "assistant")


def _events(turn: dict[str, Any], chunk: int = 40) -> list[tuple[str, dict[str, Any]]]:
    """The SSE events of one turn."""
    msg_id = "msg_" + uuid.uuid4().hex[:24]
    start = {"type": "message_start", "message": {
        "id": msg_id, "type": "message", "role": "assistant", "model": MODEL, "content": [],
        "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 1, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}}
    events: list[tuple[str, dict[str, Any]]] = [("message_start", start)]
    if "tool" in turn:
        tool_id = "toolu_" + uuid.uuid4().hex[:24]
        events.append(("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {
            "type": "tool_use", "id": tool_id, "name": turn["tool"], "input": {}}}))
        raw = json.dumps(turn.get("input") or {})
        for i in range(0, len(raw), chunk):
            events.append(("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                   "delta": {"type": "input_json_delta", "partial_json": raw[i:i + chunk]}}))
        stop = "tool_use"
    else:
        text = str(turn.get("text", "done"))
        events.append(("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}))
        for i in range(0, len(text), chunk):
            events.append(("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                   "delta": {"type": "text_delta", "text": text[i:i + chunk]}}))
        stop = "end_turn"
    events.append(("content_block_stop", {"type": "content_block_stop", "index": 0}))
    events.append(("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                                     "usage": {"output_tokens": 5}}))
    events.append(("message_stop", {"type": "message_stop"}))
    return events


def _message(turn: dict[str, Any]) -> dict[str, Any]:
    """The non-streaming answer of one turn."""
    if "tool" in turn:
        block = {"type": "tool_use", "id": "toolu_" + uuid.uuid4().hex[:24], "name": turn["tool"], "input": turn.get("input") or {}}
        stop = "tool_use"
    else:
        block = {"type": "text", "text": str(turn.get("text", "done"))}
        stop = "end_turn"
    return {"id": "msg_" + uuid.uuid4().hex[:24], "type": "message", "role": "assistant", "model": MODEL,
            "content": [block], "stop_reason": stop, "stop_sequence": None, "usage": {"input_tokens": 10, "output_tokens": 5}}


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hung up mid-answer is part of the tests


class StandIn:
    """The stand-in API server (a thread of this process)."""

    def __init__(self, script: list[dict[str, Any]] | None = None, host: str = "127.0.0.1", port: int = 0,
                 record: Path | None = None, event_delay: float = 0.0) -> None:
        self.script = list(script or [{"text": "done"}])
        self.requests: list[dict[str, Any]] = []
        self.record_path = record
        self.event_delay = event_delay  # seconds between SSE events (mid-stream tests)
        self.oauth: dict[str, Any] = {}  # refresh_token -> new tokens, for the token endpoint
        self.lock = threading.Lock()
        self.server = _Server((host, port), _handler(self))
        self.server.daemon_threads = True
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def note(self, entry: dict[str, Any]) -> None:
        with self.lock:
            self.requests.append(entry)
            if self.record_path is not None:
                with open(self.record_path, "a") as fh:
                    fh.write(json.dumps(entry) + "\n")

    def turn(self, body: dict[str, Any]) -> dict[str, Any]:
        if not body.get("tools"):
            return {"text": "ok"}  # a side query (a title, a quota check): not the scripted conversation
        index = _turn_index(body)
        return self.script[index] if index < len(self.script) else {"text": "done"}

    def __enter__(self) -> StandIn:
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _handler(api: StandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt: str, *args: Any) -> None:
            pass

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                data = b""
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        self.rfile.readline()
                        return data
                    data += self.rfile.read(size)
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _json(self, status: int, doc: dict[str, Any]) -> None:
            data = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _serve(self) -> None:
            raw = self._body()
            try:
                body = json.loads(raw) if raw else {}
            except ValueError:
                body = {}
            path = self.path.split("?", 1)[0]
            entry = {"method": self.command, "path": self.path, "time": time.time(),
                     "headers": {k.lower(): v for k, v in self.headers.items()},
                     "tool_results": _tool_results(body) if isinstance(body, dict) else [],
                     "body": raw.decode(errors="replace")[:200000]}
            api.note(entry)
            if path == "/v1/messages/count_tokens":
                self._json(200, {"input_tokens": 10})
            elif path == "/v1/messages" and self.command == "POST":
                turn = api.turn(body)
                if body.get("stream"):
                    self._stream(turn)
                else:
                    self._json(200, _message(turn))
            elif path == "/v1/oauth/token" and self.command == "POST":
                new = api.oauth.get(body.get("refresh_token"))
                if new is None:
                    self._json(400, {"error": "invalid_grant"})
                else:
                    self._json(200, new)
            elif self.command == "HEAD":
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif path == "/healthz":
                self._json(200, {"ok": True})
            else:
                self._json(404, {"type": "error", "error": {"type": "not_found_error", "message": f"stand-in: no {path}"}})

        def _stream(self, turn: dict[str, Any]) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                for name, data in _events(turn):
                    payload = f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(payload), payload))
                    self.wfile.flush()
                    if api.event_delay:
                        time.sleep(api.event_delay)
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        do_POST = do_GET = do_PUT = do_DELETE = do_HEAD = _serve

    return Handler


def main() -> int:
    """Serve in the foreground (for a network namespace): prints `ready URL` once listening."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--script", type=Path)
    parser.add_argument("--record", type=Path)
    args = parser.parse_args()
    script = json.loads(args.script.read_text()) if args.script else None
    api = StandIn(script, args.host, args.port, args.record)
    print("ready", api.url, flush=True)
    api.server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
