"""The gateway's forward proxy: HTTP (absolute-form requests) and CONNECT, for `allowlist` and `none`.

In those modes the session's network namespace has only loopback; its HTTP(S)_PROXY points at
the gateway's door, and this is what answers there. A request names its destination; the name
(or address literal) is checked against the session's rules (allowlist.Rules), resolved here,
outside, and each resolved address checked against the blocked ranges; a CONNECT tunnel that
starts a TLS handshake must name the same host in its SNI. A refusal is an HTTP 403 whose body
names posture, the mode, the destination and the config key to change. Every decision goes to
the session's egress log (egresslog).

Hosting: `Egress.handle(line, headers, reader, writer)` serves one request whose head another
server already read (the gateway's own dispatch: origin-form requests go to the credential
broker, absolute-form and CONNECT come here); `Egress.serve` reads the head itself; `serve_on`
serves a listening socket. `python -m posture.gateway.egress` is a stand-alone process with the
gateway's calling convention (plan as one JSON line on stdin, listening fd inherited, exits when
stdin closes) until the one gateway process hosts both.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from typing import Any, Callable
from urllib.parse import urlsplit

from . import holder, sni
from .allowlist import CONFIG_KEY, Rules, Verdict
from .egresslog import EgressLog

MAX_HEAD = 64 * 1024
CHUNK = 256 * 1024
CONNECT_TIMEOUT = 15.0
HELLO_TIMEOUT = 15.0
HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authorization", "proxy-authenticate", "te", "trailer", "upgrade"}
Resolver = Callable[[str, int], list[str]]


def system_resolve(host: str, port: int) -> list[str]:
    """Addresses of `host` from this (outside) machine's resolver, in its order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class Egress:
    """One session's forward proxy: its rules, its log, its resolver."""

    def __init__(self, rules: Rules, log: EgressLog | None, resolve: Resolver = system_resolve) -> None:
        self.rules, self.log, self.resolve = rules, log, resolve

    @classmethod
    def from_plan(cls, plan: dict[str, Any]) -> Egress:
        """Built from the gateway plan's "egress" part: rules, log path, session, level."""
        rules = Rules(plan["mode"], list(plan.get("allow", [])), list(plan.get("api_hosts", [])), list(plan.get("blocked", [])))
        log = EgressLog(plan["log"], plan.get("session", ""), plan.get("level", "")) if plan.get("log") else None
        return cls(rules, log)

    # ------------------------------------------------------------ entry points
    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one client connection: read its request head, then handle it."""
        try:
            try:
                raw = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                return
            lines = raw[:-4].decode("latin-1").split("\r\n")
            headers = [(k.strip(), v.strip()) for k, _, v in (h.partition(":") for h in lines[1:]) if k.strip()]
            await self.handle(lines[0], headers, reader, writer)
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def handle(self, line: str, headers: list[tuple[str, str]], reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> bool:
        """Handle one proxy request (its head already read). Returns False: the connection is done after it."""
        method, _, rest = line.partition(" ")
        target, _, version = rest.partition(" ")
        if method.upper() == "CONNECT":
            host, port = _split_hostport(target, None)
            if host and port:
                await self._connect(host, port, reader, writer)
            else:
                await self._answer(writer, 400, f"posture: CONNECT needs host:port, got {target!r}")
            return False
        url = urlsplit(target)
        if url.scheme != "http" or not url.hostname or not version.startswith("HTTP/1."):
            hint = " (for https, a client sends CONNECT: set HTTPS_PROXY)" if url.scheme == "https" else ""
            await self._answer(writer, 400, f"posture: the gateway proxies http://... and CONNECT only, got {target[:80]!r}{hint}")
            return False
        await self._forward(method, url, version, headers, reader, writer)
        return False

    # ------------------------------------------------------------ decisions
    def _record(self, host: str, port: int, address: str | None, verdict: Verdict) -> None:
        if self.log is not None:
            self.log.write(host, port, address, "allowed" if verdict.allowed else "refused", verdict.rule, reason=verdict.reason)

    def _refusal(self, host: str, port: int, verdict: Verdict) -> str:
        """The refusal's text: posture, the mode, the destination, the rule, and the key to change."""
        mode = self.rules.mode
        head = f"posture: refused {host}:{port} (network mode {mode}, rule {verdict.rule}"
        head += f": {verdict.reason})" if verdict.reason else ")"
        if not verdict.rule.startswith("mode "):
            return f"{head}; posture never lets a session reach it\n"
        fix = f'add "{host}" to {CONFIG_KEY} in your posture config (~/.config/posture/config.toml)'
        if mode == "none":
            fix = f'set [network] mode = "allowlist" and {fix}, or start the session with --network allowlist'
        return f"{head}; to allow it, {fix}\n"

    async def _dial(self, host: str, port: int, writer: asyncio.StreamWriter) -> tuple[Any, Any, str] | None:
        """Check, resolve, check each address, connect; answer and log a refusal. (reader, writer, address) or None."""
        verdict = self.rules.check_name(host, port)
        if not verdict.allowed:
            self._record(host, port, None, verdict)
            await self._answer(writer, 403, self._refusal(host, port, verdict))
            return None
        bare = host.strip("[]")
        try:
            addresses = [bare] if _is_address(bare) else await asyncio.get_running_loop().run_in_executor(None, self.resolve, bare, port)
        except OSError as exc:
            self._record(host, port, None, Verdict(False, verdict.rule, f"does not resolve: {exc}"))
            await self._answer(writer, 502, f"posture: {host} does not resolve ({exc})\n")
            return None
        refused: Verdict | None = None
        for address in addresses:
            check = self.rules.check_address(address)
            if not check.allowed:
                refused = refused or check
                continue
            try:
                ur, uw = await asyncio.wait_for(asyncio.open_connection(address, port, limit=CHUNK), CONNECT_TIMEOUT)
            except (OSError, asyncio.TimeoutError) as exc:
                refused = refused or Verdict(False, verdict.rule, f"cannot connect: {exc or 'timed out'}")
                continue
            self._record(host, port, address, verdict)
            return ur, uw, address
        final = refused or Verdict(False, verdict.rule, "no address")
        self._record(host, port, None, final)
        status = 403 if final.rule != verdict.rule else 502
        await self._answer(writer, status, self._refusal(host, port, final) if status == 403 else f"posture: {host}:{port}: {final.reason}\n")
        return None

    # ------------------------------------------------------------ CONNECT
    async def _connect(self, host: str, port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        dialled = await self._dial(host, port, writer)
        if dialled is None:
            return
        ur, uw, address = dialled
        try:
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            down = asyncio.ensure_future(_one_way(ur, writer))  # a server that speaks first is answered at once
            try:
                if await self._client_first(host, port, address, reader, writer, uw):
                    await _one_way(reader, uw)
                    await down
            finally:
                down.cancel()
        except (ConnectionError, OSError, asyncio.TimeoutError):
            pass
        finally:
            uw.close()

    async def _client_first(self, host: str, port: int, address: str, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter, uw: asyncio.StreamWriter) -> bool:
        """Check what the client sends first (a TLS ClientHello's SNI must name `host`) and pass it on."""
        first = await reader.read(1)
        if not first:
            if uw.can_write_eof():
                uw.write_eof()
            return True
        if sni.looks_like_tls(first):
            try:
                hello, name = await asyncio.wait_for(sni.read_client_hello(reader, first), HELLO_TIMEOUT)
            except (sni.NotTLS, asyncio.IncompleteReadError, asyncio.TimeoutError) as exc:
                self._sni_refused(host, port, address, f"no readable ClientHello ({exc})", writer)
                return False
            if not _sni_ok(host, name):
                self._sni_refused(host, port, address, f"TLS names {name or 'no server'} but CONNECT named {host}", writer)
                return False
            first = hello
        elif port == 443:
            self._sni_refused(host, port, address, "port 443 without a TLS ClientHello", writer)
            return False
        uw.write(first)
        await uw.drain()
        return True

    def _sni_refused(self, host: str, port: int, address: str, why: str, writer: asyncio.StreamWriter) -> None:
        self._record(host, port, address, Verdict(False, "sni", why))
        try:
            writer.write(sni.ALERT_ACCESS_DENIED)
        except (ConnectionError, OSError):
            pass
        print(f"posture gateway: refused tunnel to {host}:{port}: {why}", file=sys.stderr, flush=True)

    # ------------------------------------------------------------ plain HTTP
    async def _forward(self, method: str, url: Any, version: str, headers: list[tuple[str, str]],
                       reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = url.hostname, url.port or 80
        dialled = await self._dial(host, port, writer)
        if dialled is None:
            return
        ur, uw, _ = dialled
        try:
            drop = HOP | {t.strip().lower() for k, v in headers if k.lower() == "connection" for t in v.split(",")}
            path = url.path or "/"
            path += f"?{url.query}" if url.query else ""
            netloc = url.netloc.rsplit("@", 1)[-1]
            out = [f"{method} {path} {version}", f"Host: {netloc}",
                   *(f"{k}: {v}" for k, v in headers if k.lower() not in drop and k.lower() != "host"), "Connection: close"]
            uw.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1"))
            up = asyncio.ensure_future(_one_way(reader, uw))  # the request's body, if any
            try:
                await _one_way(ur, writer)  # the answer, up to the upstream's close (Connection: close)
            finally:
                up.cancel()
        except (ConnectionError, OSError):
            pass
        finally:
            uw.close()

    async def _answer(self, writer: asyncio.StreamWriter, status: int, message: str) -> None:
        reason = {400: "Bad Request", 403: "Forbidden", 502: "Bad Gateway"}.get(status, "Error")
        body = message.encode()
        head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {len(body)}\r\n"
                "X-Posture-Refused: 1\r\nConnection: close\r\n\r\n")
        try:
            writer.write(head.encode() + body)
            await writer.drain()
        except (ConnectionError, OSError):
            pass


def _sni_ok(host: str, name: str | None) -> bool:
    """A tunnel to a name must carry that name as its SNI; one to an address may carry none."""
    wanted = host.strip("[]").lower().rstrip(".")
    if name is None:
        return _is_address(wanted)
    return name == wanted


def _is_address(text: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def _split_hostport(text: str, default: int | None) -> tuple[str, int | None]:
    host, sep, port = text.rpartition(":")
    if not sep or "]" in port:
        return text, default
    if not port.isdigit() or not 0 < int(port) < 65536:
        return "", None
    return host.strip("[]"), int(port)


async def _one_way(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    """Copy `src` to `dst` until EOF, then pass the half-close on."""
    try:
        while True:
            data = await src.read(CHUNK)
            if not data:
                break
            dst.write(data)
            await dst.drain()
        if dst.can_write_eof():
            dst.write_eof()
    except (ConnectionError, OSError):
        dst.close()


async def serve_on(sock: socket.socket, egress: Egress, stop: asyncio.Future | None = None) -> None:
    """Serve `egress` on a listening socket (unix or TCP) until `stop` completes (forever when None)."""
    sock.setblocking(False)
    if sock.family == socket.AF_UNIX:
        server = await asyncio.start_unix_server(egress.serve, sock=sock, limit=MAX_HEAD)
    else:
        server = await asyncio.start_server(egress.serve, sock=sock, limit=MAX_HEAD)
    async with server:
        if stop is None:
            await server.serve_forever()
        else:
            await stop


async def _main_async(plan: dict[str, Any], listen_fd: int) -> None:
    done = holder.until_gone(asyncio.get_running_loop())
    sock = socket.socket(fileno=listen_fd)
    await serve_on(sock, Egress.from_plan(plan["egress"]), done)


def main() -> int:
    """`python -m posture.gateway.egress`: the plan on stdin, the listening socket inherited."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    plan_fd = int(sys.argv[2]) if sys.argv[1:2] == ["--plan-fd"] else 0  # egressdoor's waiter hands the plan on a pipe
    line = b""
    while not line.endswith(b"\n"):
        chunk = os.read(plan_fd, 65536)
        if not chunk:
            raise SystemExit("posture gateway: no plan")
        line += chunk
    if plan_fd:
        os.close(plan_fd)
    plan = json.loads(line)
    asyncio.run(_main_async(plan, int(plan["listen_fd"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
