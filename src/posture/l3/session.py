"""L3 backend: a transient libvirt/QEMU VM per session, with its own kernel.

The guest boots the host's (or a fetched Debian cloud) kernel directly with an initramfs
posture builds; its root is the session's View exported read-only over virtio-fs, the
project read-write over a second share (protected paths read-only on the host side); the
exec agent runs as the guest's first process on a virtio-serial port. The domain is created
with the autodestroy flag from the process that holds the session (keeper or `posture
exec`), so a dying posture takes its VM along. Network: QEMU's user-mode stack, from a QEMU
process placed in the network helper's cgroup, so the same nftables rule as L2 governs it.

Root and ordinary users (in the `libvirt` group, for libvirt's system socket) take the same
path with three differences for the user: virtiofsd runs as the user in a user namespace
mapping only the user's ids (l3/virtiofs.py), QEMU runs as the user (a static DAC label,
l3/domain.py), and the session's files live in the user's runtime dir instead of
/run/posture-l3. The agent's commands run as the view's uid (the user's) in the guest,
unless `[l3] guest_root = true`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid as uuidmod
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import channel, paths
from ..errors import InternalError, Unavailable
from ..lazy import lazy
from ..session import Session, SessionRecord, StartSpec, release_placeholders, session_runtime_dir

if TYPE_CHECKING:
    from ..l3.kernel import Kernel
    from ..l3.l3net import Attachment
    from ..gateway.door import Door
    from ..l3.door import HostDoor
    from ..l3.mux import Mux
    from ..l3.virtiofs import Watch
    from ..view import View

# Imported on first use: loading this plugin must stay cheap for sessions at other levels.
accelmod = lazy("posture.l3.accel")
domain = lazy("posture.l3.domain")
initramfs = lazy("posture.l3.initramfs")
kernel = lazy("posture.l3.kernel")
l3net = lazy("posture.l3.l3net")
virtiofs = lazy("posture.l3.virtiofs")
guestagent = lazy("posture.l3.guestagent")
mux = lazy("posture.l3.mux")
guestuser = lazy("posture.l3.guestuser")
l3door = lazy("posture.l3.door")
gwdoor = lazy("posture.gateway.door")
pvh = lazy("posture.l3.pvh")

DEFAULT_URI = "qemu:///system"
DEFAULT_MEMORY_MIB = 512
DEFAULT_CPUS = 2 if (os.cpu_count() or 1) >= 2 else 1  # the agent's builds and tests run in parallel (TCG is multi-threaded too)
DEFAULT_BOOT_TIMEOUT = 60
EXPOSED_ROOT = Path("/run/posture-l3")  # files QEMU (libvirt's qemu user) must open: kernel, initrd, sockets
LIBVIRT_GROUP_FIX = "add yourself to the libvirt group (`sudo adduser $USER libvirt`, then log in again), or set [l3] uri"


def exposed_root() -> Path:
    """Where a session's VM files live (kernel, initrd, sockets): /run/posture-l3 for root, else the user's runtime dir."""
    if os.geteuid() == 0:
        return EXPOSED_ROOT
    return paths.runtime_dir() / "l3"


class _BootTimeout(Unavailable):
    """The guest did not answer within [l3] boot_timeout (the VM was still running)."""


_T0 = time.monotonic()


def _t(what: str) -> None:
    if os.environ.get("POSTURE_DEBUG_TIMING"):
        print(f"[l3 {time.monotonic() - _T0:.3f} @{time.time():.3f}] {what}", file=__import__("sys").stderr, flush=True)


def _libvirt():
    try:
        import libvirt
    except ImportError:
        raise Unavailable("the libvirt Python binding is not installed", fix="pip install 'posture[l3]' (libvirt-python)") from None
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt


def _l3(settings: Any) -> dict[str, Any]:
    return dict(settings.backend.get("l3") or {})


def uri_of(settings: Any) -> str:
    """The libvirt connection URI: `[l3] uri`, else qemu:///system."""
    return _l3(settings).get("uri") or DEFAULT_URI


def connect(uri: str):
    """Open a libvirt connection; Unavailable with the fix when libvirtd does not answer."""
    libvirt = _libvirt()
    try:
        return libvirt.open(uri)
    except libvirt.libvirtError as exc:
        msg = exc.get_error_message()
        if os.geteuid() != 0 and ("ermission denied" in msg or "authentication" in msg.lower()):
            raise Unavailable(f"cannot reach libvirtd at {uri}: {msg}", fix=LIBVIRT_GROUP_FIX) from None
        raise Unavailable(f"cannot reach libvirtd at {uri}: {msg}", fix="start libvirtd (`libvirtd -d` or `systemctl start libvirtd`), or set [l3] uri") from None


def qemu_ids(conn) -> tuple[int | None, int | None]:
    """The uid and gid libvirt runs QEMU as (from the DAC security model), if it says."""
    caps = conn.getCapabilities()
    m = re.search(r"<model>dac</model>.*?<baselabel type='kvm'>\+?(\d+):\+?(\d+)</baselabel>", caps, re.S)
    if not m:
        m = re.search(r"<model>dac</model>.*?<baselabel[^>]*>\+?(\d+):\+?(\d+)</baselabel>", caps, re.S)
    return (int(m.group(1)), int(m.group(2))) if m else (None, None)


def _exposed_boot_files(k: Kernel, native_init: Path | None) -> tuple[Path, Path]:
    """Kernel and initramfs where QEMU can read them (copied/cached under exposed_root()/boot); the initramfs
    boots with `native_init` (guest/init.c) when given, else with busybox."""
    base = exposed_root()
    boot = base / "boot"
    boot.mkdir(parents=True, exist_ok=True, mode=0o755)
    if os.geteuid() == 0:
        os.chmod(base, 0o711)
        os.chmod(boot, 0o755)
    st = k.image.stat()
    image = boot / f"kernel-{pvh.VERSION}-{k.release}-{st.st_size}-{st.st_mtime_ns}"
    if not image.exists():
        tmp = image.with_suffix(f".tmp{os.getpid()}")
        pvh.write_boot_image(k.image, tmp)  # the uncompressed PVH vmlinux when there is one (l3/pvh.py)
        tmp.chmod(0o644)
        os.replace(tmp, image)
    if native_init is not None:
        return image, initramfs.cached_native(boot, k.modules, native_init)
    return image, initramfs.cached(boot, k.modules, kernel.find_busybox())


class LibvirtSession(Session):
    """One VM."""

    def __init__(self, record: SessionRecord, settings: Any) -> None:
        super().__init__(record)
        self.view: View | None = None
        self.settings = settings
        self.conn: Any = None  # a libvirt connection
        self.dom: Any = None  # a libvirt domain
        self.mux: Mux | None = None
        self.stage: subprocess.Popen | None = None
        self.stage_watch: Watch | None = None
        self.net: Attachment | None = None
        self.door: Door | None = None  # the session's gateway process (credentials, egress proxy)
        self.host_door: HostDoor | None = None  # the guest's way to it

    # ------------------------------------------------------------ paths
    @property
    def name(self) -> str:
        return f"posture-{self.record.id}"

    def _runtime(self) -> Path:
        return session_runtime_dir(self.record.id)

    def _exposed(self) -> Path:
        return exposed_root() / self.record.id

    # ------------------------------------------------------------ lifecycle
    def start(self, spec: StartSpec) -> None:
        """Boot the session's VM; a guest that does not answer in time gets one fresh VM more."""
        self.view = spec.view
        try:
            # test hook (as in escalate.py): POSTURE_FAULT_AT=l3-boot stalls the first guest before its agent starts
            self._start_once(stall=os.environ.get("POSTURE_FAULT_AT") == "l3-boot")
        except _BootTimeout as first:
            print(f"posture: {first.message}; trying once more with a fresh VM", file=sys.stderr, flush=True)
            self.stop()
            try:
                shutil.move(str(self._runtime() / "console.log"), str(self._runtime() / "console-first-try.log"))
            except OSError:
                pass
            try:
                self._start_once()
            except _BootTimeout as second:
                raise Unavailable(f"{second.message} (twice; the first try's console is console-first-try.log)", fix=second.fix) from None

    def _start_once(self, stall: bool = False) -> None:
        if self.view is None:
            raise InternalError("an L3 session starts from a view")
        user = (os.getuid(), os.getgid()) if os.geteuid() != 0 else None  # an ordinary user: QEMU and virtiofsd run as the user
        _t("start")
        l3 = _l3(self.settings)
        k = kernel.find_kernel(l3)
        acc, why = accelmod.choose(k, l3.get("accel", "auto"))
        uri = uri_of(self.settings)
        self.conn = connect(uri)
        qemu_gid = qemu_ids(self.conn)[1]
        gid = None if user else qemu_gid
        cache = exposed_root() / "boot"
        agent = guestagent.choose(l3.get("agent", "auto"), cache, virtiofs.GUEST, virtiofs.GUEST_PYTHON, virtiofs.agent_pycs)
        # with the native agent the guest boots with the native init (guest/init.c), which also becomes the user itself
        native_init = None
        if agent.kind == "native":
            try:
                native_init = guestagent.build_init(cache)
            except Unavailable as exc:  # the busybox init boots the same steps, slower
                agent = replace(agent, why=f"{agent.why}; the guest boots with busybox ({exc.message})")
        if self.view.uid != 0 and not l3.get("guest_root"):
            agent = (replace(agent, uid=self.view.uid, why=agent.why + f"; commands run as uid {self.view.uid}") if native_init
                     else guestuser.as_user(agent, self.view.uid, self.view.gid, cache, virtiofs.GUEST))
        cached_image, cached_initrd = _exposed_boot_files(k, native_init)
        run = self._exposed()
        if run.exists():
            shutil.rmtree(run, ignore_errors=True)
        run.mkdir(parents=True, mode=0o750 if user is None else 0o700)
        # per-session links: the VM keeps its files even if the cache is cleared meanwhile
        image, initrd = run / "vmlinuz", run / "initrd"
        os.link(cached_image, image)
        os.link(cached_initrd, initrd)
        if gid is not None:
            os.chown(run, 0, gid)
            os.chmod(run, 0o750)
        network = l3net.wanted(self.view)  # modes allowlist and none: no network interface at all, the door only
        plan_net = l3net.prepare(self.settings, self.view) if network else None
        self.door = gwdoor.open_door(self.view, self._runtime(), self.record.id, self.record.data)
        self.record.data.update({
            "uri": uri, "domain": self.name, "accel": acc, "accel_why": why, "exposed": str(run),
            "exec_socket": str(self._runtime() / "exec.sock"), "cwd": self.view.cwd or self.view.project,
            "kernel": str(k.image), "network": bool(network),
        })
        env_file = self._runtime() / "env.json"
        fd = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(self.view.env.env, fh)
        _t("prepared")
        door_step = None
        if self.door is not None:
            agent.files.update(l3door.guest_files(cache, virtiofs.guest_pycs))
            door_step = l3door.guest_step(virtiofs.GUEST, virtiofs.GUEST_PYTHON)
        self.record.data.update({"agent": agent.kind, "guest_uid": agent.uid or 0, "door": self.door is not None,
                                 "init": "native" if native_init else "busybox"})
        served = virtiofs.serve(self.view, run, gid, network, agent=agent, stall=stall, user=user, door=door_step,
                                native_init=native_init is not None)
        _t("staged")
        self.stage = served.proc
        self.stage_watch = virtiofs.Watch(served.proc, self._file_server_gone)
        self.record.data.update({"stage_pid": served.proc.pid, "placeholders": served.placeholders, "placeholder_registry": served.registry})
        spec = domain.DomainSpec(
            name=self.name, kernel=str(image), initrd=str(initrd), accel=acc,
            memory_mib=int(l3.get("memory_mib", DEFAULT_MEMORY_MIB)), cpus=int(l3.get("cpus", DEFAULT_CPUS)),
            root_socket=served.sockets["root"], rw_socket=served.sockets["rw"],
            channel_socket=str(run / "exec.chan"), console_log=str(run / "console.log"), network=network,
            uuid=str(uuidmod.uuid4()), user=None if user is None else (user[0], qemu_gid if qemu_gid is not None else user[1]),
            door_socket=str(run / "door.chan") if self.door is not None else "", tcg_cpu=str(l3.get("tcg_cpu", "max")),
            firmware=domain.firmware(str(l3.get("firmware", "auto"))),
        )
        libvirt = _libvirt()
        flags = libvirt.VIR_DOMAIN_START_AUTODESTROY
        if network:
            flags |= libvirt.VIR_DOMAIN_START_PAUSED
        try:
            self.dom = self.conn.createXML(domain.xml(spec), flags)
        except libvirt.libvirtError as exc:
            raise Unavailable(f"libvirt could not start {self.name}: {exc.get_error_message()}", fix="see `posture doctor`") from None
        _t("created")
        if network:
            assert plan_net is not None
            self.net = l3net.attach(plan_net, self.dom, self.name)
            self.record.data["net"] = self.net.describe()
            self.dom.resume()
        _t("running")
        if self.door is not None:
            self.host_door = l3door.HostDoor(spec.door_socket, self.door.socket)
            self.host_door.start()
        self.mux = mux.Mux(spec.channel_socket, self.record.data["exec_socket"])
        self.mux.start()
        timeout = float(l3.get("boot_timeout", DEFAULT_BOOT_TIMEOUT))
        ok = self.mux.wait_ready(timeout)
        _t("ready")
        if not ok:
            tail = self._console_tail()
            fix = f"see {self._runtime() / 'console.log'} (kept after the VM is gone); raise [l3] boot_timeout or set [l3] accel"
            if self.mux.closed.is_set():
                raise Unavailable(f"the L3 guest stopped before its exec agent answered{': ' + tail if tail else ''}", fix=fix)
            raise _BootTimeout(f"the L3 guest did not come up within {timeout:.0f}s ({acc}){': ' + tail if tail else ''}", fix=fix)

    def _file_server_gone(self) -> None:
        """virtiofsd stopped under a running guest (it crashed, or was killed): every file access in the guest
        would hang, so the VM is ended now; what the guest wrote to the project is on the host already."""
        print(f"posture: l3: session {self.record.id}: the guest's file server (virtiofsd) stopped; its VM is ended "
              f"(see {self._runtime() / 'virtiofsd-root.log'} and the kernel's log)", file=sys.stderr, flush=True)
        try:
            self._domain().destroy()
        except Exception:  # noqa: BLE001 - already gone, or never created
            pass

    def _console_tail(self) -> str:
        """The most telling lines of the guest's console: a panic, else its last three (posture-init's own words, the boot timeline)."""
        try:
            lines = [ln.strip() for ln in (self._exposed() / "console.log").read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return ""
        panics = [ln for ln in lines if "Kernel panic" in ln]
        if panics:
            return panics[-1][-200:]
        return " | ".join(ln[-160:] for ln in lines[-3:])

    def alive(self) -> bool:
        """True while the VM runs (checked by the keeper)."""
        if self.mux is not None:
            return not self.mux.closed.is_set()
        return True

    def exec(self, argv: list[str], tty: bool) -> int:
        path = self.record.data.get("exec_socket")
        if not path:
            raise Unavailable(f"session {self.record.id} has no exec channel", fix="`posture down` it and start again")
        if self.view is not None:
            env = self.view.env.env
        else:
            try:
                env = json.loads((self._runtime() / "env.json").read_text())
            except (OSError, ValueError):
                raise Unavailable(f"session {self.record.id} lost its environment file", fix="`posture down` it and start again") from None
        sock = channel.connect_unix(path, timeout=5.0)
        try:
            return channel.run(sock, argv, env=env, cwd=self.record.data.get("cwd") or self.record.project, tty=tty)
        finally:
            sock.close()

    def freeze(self) -> None:
        self._domain().suspend()

    def thaw(self) -> None:
        self._domain().resume()

    def _domain(self):
        libvirt = _libvirt()
        if self.dom is not None:
            return self.dom
        if self.conn is None:
            self.conn = connect(self.record.data.get("uri") or uri_of(self.settings))
        try:
            self.dom = self.conn.lookupByName(self.record.data.get("domain") or self.name)
        except libvirt.libvirtError:
            raise Unavailable(f"the VM of session {self.record.id} is gone", fix="`posture down` it") from None
        return self.dom

    def stop(self) -> None:
        _t("stop")
        if self.stage_watch is not None:
            self.stage_watch.close()
            self.stage_watch = None
        libvirt = _libvirt()
        data = self.record.data
        if data.get("net"):
            gwdoor.report_kernel_drops(data["net"]["socket"], self.record.id, self.record.level, data)
        if data.get("exposed"):
            try:  # before the destroy: libvirt gives the console file back to root then (an ordinary user could not copy it)
                shutil.copyfile(Path(data["exposed"]) / "console.log", self._runtime() / "console.log")
            except OSError:
                pass
        try:
            dom = self._domain()
            try:
                dom.destroy()
            except libvirt.libvirtError:
                pass
        except Unavailable:
            pass
        _t("destroyed")
        if self.mux is not None:
            self.mux.close()
            self.mux = None
        _t("mux closed")
        if self.host_door is not None:
            self.host_door.close()
            self.host_door = None
        gwdoor.close_door(self.door, data)
        self.door = None
        virtiofs.stop(self.stage, None if self.stage else data.get("stage_pid"))
        self.stage = None
        _t("virtiofsd stopped")
        if self.net is not None:
            self.net.release()
            self.net = None
        elif data.get("net"):
            l3net.release_described(data["net"])
        data.pop("net", None)
        _t("net released")
        if data.get("placeholder_registry") and data.get("placeholders"):
            release_placeholders(data["placeholder_registry"], self.record.id)
            data["placeholders"] = []
        if data.get("exposed"):
            for log in ("console.log", "stage.log", "virtiofsd-root.log", "virtiofsd-rw.log"):
                try:  # keep the guest's console and virtiofsd's words for `posture status` / debugging
                    shutil.copyfile(Path(data["exposed"]) / log, self._runtime() / log)
                except OSError:
                    pass
            shutil.rmtree(data["exposed"], ignore_errors=True)
        for name in ("exec.sock", "env.json"):
            (self._runtime() / name).unlink(missing_ok=True)
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:  # noqa: BLE001 - closing a dead connection
                pass
            self.conn = None
            self.dom = None

    def describe(self) -> dict[str, Any]:
        out = self.record.public()
        out["vm"] = {k: self.record.data.get(k) for k in ("domain", "accel", "uri", "network")}
        return out
