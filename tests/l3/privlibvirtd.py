"""A private libvirtd for the L3 tests, started inside the test network's GW namespace.

It gets its own config (no networks defined, so nothing is autostarted), its own socket
and pid file, and a private /run/libvirt, in a private mount namespace, so it neither
touches nor collides with a system libvirtd. QEMU processes it starts inherit the GW
network namespace, so a guest's traffic can only reach the test network.
"""

from __future__ import annotations

import contextlib
import grp
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

LIBVIRTD_CONF = """unix_sock_dir = "{sock}"
unix_sock_group = "libvirt"
unix_sock_ro_perms = "0770"
unix_sock_rw_perms = "0770"
auth_unix_ro = "none"
auth_unix_rw = "none"
log_outputs = "{level}:file:{base}/libvirtd.log"
log_filters = "{filters}"
"""
QEMU_CONF = """stdio_handler = "file"
"""
# libvirtd daemonizes each QEMU, which then belongs to the nearest subreaper above it, normally PID 1.
# This machine's PID 1 (a VM's minimal init) reaps orphans about every 2 s, and libvirt's destroy polls
# until the QEMU process is gone, so every VM's teardown took about 2 s here where systemd takes
# milliseconds. This reaper above libvirtd plays a normal PID 1's part for the tests.
REAPER = """
import ctypes, os, signal, sys
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
main = os.fork()
if main == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
signal.signal(signal.SIGTERM, lambda *_: os.kill(main, signal.SIGTERM))
code = 0
while True:
    try:
        pid, status = os.wait()
    except ChildProcessError:
        break
    except InterruptedError:
        continue
    if pid == main:
        code = os.waitstatus_to_exitcode(status)
sys.exit(code)
"""


@contextlib.contextmanager
def private_libvirtd(netns: str | None, base: Path, timeout: float = 60.0) -> Iterator[str]:
    """Start libvirtd (in `netns` when given) under `base`; yield its `qemu+unix` URI; stop it."""
    if shutil.which("libvirtd") is None:
        raise RuntimeError("libvirtd is not installed (apt-get install libvirt-daemon-system)")
    etc, sock = base / "etc", base / "sock"
    for d in (etc / "qemu", sock):
        d.mkdir(parents=True, exist_ok=True)
    os.chmod(base, 0o755)
    os.chmod(sock, 0o755)  # the socket itself is for the libvirt group (as Debian's system socket is)
    (etc / "libvirtd.conf").write_text(LIBVIRTD_CONF.format(sock=sock, base=base, level=os.environ.get("POSTURE_TEST_LIBVIRTD_LOG_LEVEL", "3"), filters=os.environ.get("POSTURE_TEST_LIBVIRTD_LOG_FILTERS", "")))
    (etc / "qemu.conf").write_text(QEMU_CONF)
    # Debian's udev makes /dev/kvm 0660 root:kvm; hosts without udev leave it 0600, and then
    # libvirt 9.0 re-probes QEMU on every lookup (about 4 s each, dozens per domain start).
    # Give this libvirtd's mount namespace the usual node without touching the host's.
    kvm_node = ""
    if Path("/dev/kvm").exists():
        node = base / "kvm"
        node.unlink(missing_ok=True)
        os.mknod(node, 0o660 | stat.S_IFCHR, os.makedev(10, 232))
        os.chown(node, 0, grp.getgrnam("kvm").gr_gid)
        os.chmod(node, 0o660)
        kvm_node = f"mount --bind {node} /dev/kvm && "
    script = (
        kvm_node +
        "mount -t tmpfs -o mode=0755 tmpfs /run/libvirt && "
        f"mount --bind {etc} /etc/libvirt && "
        f"exec libvirtd -f {etc / 'libvirtd.conf'} -p {base / 'libvirtd.pid'}"
    )
    argv = [sys.executable, "-c", REAPER, "unshare", "-m", "--propagation", "private", "sh", "-c", script]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    log = open(base / "libvirtd.out", "wb")
    Path("/run/libvirt").mkdir(exist_ok=True)
    proc = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
    log.close()
    uri = f"qemu+unix:///system?socket={sock}/libvirt-sock"
    try:
        deadline = time.monotonic() + timeout
        while not (sock / "libvirt-sock").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"private libvirtd did not start: {(base / 'libvirtd.out').read_text()[-500:]}")
            time.sleep(0.05)
        _wait_answers(uri, deadline)
        yield uri
    finally:
        _destroy_all(uri)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _wait_answers(uri: str, deadline: float) -> None:
    import libvirt

    libvirt.registerErrorHandler(lambda *_: None, None)
    while True:
        try:
            libvirt.open(uri).close()
            return
        except libvirt.libvirtError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _destroy_all(uri: str) -> None:
    import libvirt

    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError:
        return
    try:
        for dom in conn.listAllDomains():
            with contextlib.suppress(libvirt.libvirtError):
                dom.destroy()
    finally:
        conn.close()
