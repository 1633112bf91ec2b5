"""Configure a network namespace over rtnetlink (no `ip` or `nsenter` processes): what
`posture netd` does to a sandbox's network right after slirp4netns comes up."""

from __future__ import annotations

import errno
import os
import socket
import struct
import threading

RTM_NEWADDR, RTM_NEWROUTE, NLMSG_ERROR = 20, 24, 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x100, 0x200, 0x400
IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS, IFA_F_NODAD = 1, 2, 8, 0x02
RTA_OIF, RTA_GATEWAY, RT_TABLE_MAIN, RTPROT_BOOT, RTN_UNICAST = 4, 5, 254, 3, 1
CLONE_NEWNET = 0x40000000


def _attr(kind: int, payload: bytes) -> bytes:
    attr = struct.pack("=HH", 4 + len(payload), kind) + payload
    return attr + b"\0" * (-len(attr) % 4)


def _call(sock: socket.socket, seq: int, kind: int, flags: int, body: bytes) -> None:
    sock.send(struct.pack("=IHHII", 16 + len(body), kind, flags | NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body)
    while True:
        data = sock.recv(65536)
        offset = 0
        while offset + 16 <= len(data):
            length, mtype, _flags, mseq, _pid = struct.unpack_from("=IHHII", data, offset)
            if mtype == NLMSG_ERROR and mseq == seq:
                error = -struct.unpack_from("=i", data, offset + 16)[0]
                if error:
                    raise OSError(error, os.strerror(error))
                return
            offset += max(16, (length + 3) & ~3)


def configure_ipv6(pid: int, address: str, prefix: int, gateway: str, dev: str = "tap0") -> None:
    """In the network namespace of `pid`: `ip -6 addr add ADDRESS/PREFIX dev DEV nodad` and
    `ip -6 route replace default via GATEWAY dev DEV`, over rtnetlink from a thread that enters
    the namespace (setns is per thread), so no nsenter and ip processes on the attach path."""
    import ctypes

    done: list[BaseException | tuple[socket.socket, int]] = []

    def enter() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        try:
            own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            try:
                target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
                try:
                    if libc.setns(target, CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), f"setns into the network namespace of {pid}")
                    try:
                        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)  # NETLINK_ROUTE
                        try:
                            index = socket.if_nametoindex(dev)
                        except OSError:
                            sock.close()
                            raise
                    finally:
                        libc.setns(own, CLONE_NEWNET)  # this thread ends next anyway
                finally:
                    os.close(target)
            finally:
                os.close(own)
            done.append((sock, index))
        except BaseException as exc:  # noqa: BLE001 - re-raised by the caller
            done.append(exc)

    thread = threading.Thread(target=enter, daemon=True)
    thread.start()
    thread.join()
    if not done:
        raise OSError(errno.EIO, "could not enter the sandbox's network namespace")
    if isinstance(done[0], BaseException):
        raise done[0]
    sock, index = done[0]
    addr, via = socket.inet_pton(socket.AF_INET6, address), socket.inet_pton(socket.AF_INET6, gateway)
    with sock:
        sock.settimeout(5)
        _call(sock, 1, RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL,
                      struct.pack("=BBBBI", socket.AF_INET6, prefix, IFA_F_NODAD, 0, index)
                      + _attr(IFA_LOCAL, addr) + _attr(IFA_ADDRESS, addr) + _attr(IFA_FLAGS, struct.pack("=I", IFA_F_NODAD)))
        _call(sock, 2, RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE,
                      struct.pack("=BBBBBBBBI", socket.AF_INET6, 0, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, 0, RTN_UNICAST, 0)
                      + _attr(RTA_GATEWAY, via) + _attr(RTA_OIF, struct.pack("=I", index)))
