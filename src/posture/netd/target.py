"""Which process a uid may give a network to: checked against the process and its namespaces."""

from __future__ import annotations

import fcntl
import os
import signal
import struct
from pathlib import Path

from .client import NetdError

NS_GET_USERNS = 0xB701
NS_GET_OWNER_UID = 0xB704


def status_uids(pid: int) -> list[int]:
    """The real, effective, saved and filesystem uids of `pid`."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return [int(x) for x in line.split()[1:]]
    raise ProcessLookupError(pid)


def check(uid: int, pid: int, helper_netns: int) -> tuple[int, int]:
    """A pidfd for `pid` and the inode of its network namespace, after checking that `uid` owns
    the process, that its network namespace is not the helper's and that `uid` owns the user
    namespace that namespace belongs to (NetdError `denied` otherwise)."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        raise NetdError("denied", f"there is no process {pid}") from None
    try:
        try:
            uids = status_uids(pid)
            if uid != 0 and any(u != uid for u in uids):
                raise NetdError("denied", f"process {pid} does not belong to uid {uid}")
            netfd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, ProcessLookupError):
            raise NetdError("denied", f"process {pid} has exited") from None
        except PermissionError as exc:
            raise NetdError("denied", f"process {pid}: {exc.strerror}") from None
        try:
            netns = os.fstat(netfd).st_ino
            if netns == helper_netns:
                raise NetdError("denied", f"process {pid} shares the helper's network namespace")
            usernsfd = fcntl.ioctl(netfd, NS_GET_USERNS)
            try:
                owner = struct.unpack("I", fcntl.ioctl(usernsfd, NS_GET_OWNER_UID, b"\0" * 4))[0]
            finally:
                os.close(usernsfd)
        finally:
            os.close(netfd)
        if owner != uid:
            raise NetdError("denied", f"the network namespace of {pid} is not owned by uid {uid}")
        # The pid could have been reused between pidfd_open and the checks: make sure it still is ours.
        try:
            os.stat(f"/proc/{pid}")
            signal.pidfd_send_signal(pidfd, 0)
        except (FileNotFoundError, ProcessLookupError):
            raise NetdError("denied", f"process {pid} has exited") from None
    except BaseException:
        os.close(pidfd)
        raise
    return pidfd, netns


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children of each of its threads, recursively)."""
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                kids = [int(x) for x in Path(f"/proc/{p}/task/{task}/children").read_text().split()]
                out += kids
                todo += kids
        except OSError:
            continue
    return out
