"""The L3 backend: what this host can do for L3 (`availability`, `doctor`), `posture setup --l3-kernel`,
and `posture l3 probe-accel`."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
from pathlib import Path
from typing import Any

from ..errors import Unavailable
from ..lazy import lazy
from ..session import Availability, Backend, Check, Session, SessionRecord
from .session import _l3, _libvirt, connect, exposed_root, qemu_ids, uri_of

accelmod = lazy("posture.l3.accel")
initramfs = lazy("posture.l3.initramfs")
kernel = lazy("posture.l3.kernel")
l3net = lazy("posture.l3.l3net")
virtiofs = lazy("posture.l3.virtiofs")
guestagent = lazy("posture.l3.guestagent")


def _kvm_node_check(qemu_gid: int | None) -> Check:
    """/dev/kvm must be usable by libvirt's QEMU group, or libvirt 9 re-probes QEMU on every lookup (minutes per VM)."""
    name = "l3 /dev/kvm"
    try:
        st = os.stat("/dev/kvm")
    except OSError:
        return Check(name, True, "absent (TCG only)")
    usable = bool(st.st_mode & 0o006) or (qemu_gid is not None and st.st_gid == qemu_gid and st.st_mode & 0o060 == 0o060)
    if usable:
        return Check(name, True, "usable by libvirt's QEMU user")
    return Check(name, False, f"mode {st.st_mode & 0o777:o}, group {st.st_gid}: libvirt's QEMU user cannot open it, so libvirt re-probes QEMU on every start (slow)",
                 "chgrp kvm /dev/kvm && chmod 0660 /dev/kvm (what Debian's udev rule does)")


def _user_kvm_check() -> Check:
    """For an ordinary user QEMU runs as the user: /dev/kvm must open for the user, else TCG (slower, still whole)."""
    name = "l3 /dev/kvm"
    try:
        st = os.stat("/dev/kvm")
    except OSError:
        return Check(name, True, "absent (TCG only)")
    if os.access("/dev/kvm", os.R_OK | os.W_OK):
        return Check(name, True, "usable by you (QEMU runs as you)")
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    if st.st_mode & 0o060 != 0o060 or group == "root":
        fix = "sudo chgrp kvm /dev/kvm && sudo chmod 0660 /dev/kvm (what Debian's udev rule does), and be in the kvm group"
    else:
        fix = f"sudo adduser {_me()} {group}, then log in again"
    return Check(name, True, f"mode {st.st_mode & 0o777:o}, group {group}: you cannot open it, so your guests run under TCG", fix)


def _me() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def _user_checks() -> list[Check]:
    """What an ordinary user needs beyond root's set-up: the libvirt group and user namespaces."""
    checks = []
    try:
        libvirt_gid = grp.getgrnam("libvirt").gr_gid
        member = libvirt_gid in os.getgroups() or os.getgid() == libvirt_gid
    except KeyError:
        member = False
    checks.append(Check("l3 user", True, f"running as {_me()} (QEMU and virtiofsd run as you)"))
    checks.append(Check("l3 libvirt group", member, "you are in the libvirt group" if member else "you are not in the libvirt group (libvirt's system socket is for that group)",
                        "" if member else f"sudo adduser {_me()} libvirt, then log in again"))
    try:
        clone = Path("/proc/sys/kernel/unprivileged_userns_clone")
        allowed = (not clone.exists() or clone.read_text().strip() == "1") and int(Path("/proc/sys/user/max_user_namespaces").read_text()) > 0
    except (OSError, ValueError):
        allowed = False
    checks.append(Check("l3 user namespaces", allowed, "available (virtiofsd runs in one that maps only you)" if allowed else "unprivileged user namespaces are off",
                        "" if allowed else "sudo sysctl -w kernel.unprivileged_userns_clone=1 user.max_user_namespaces=15000"))
    return checks


class LibvirtBackend(Backend):
    name = "libvirt"
    level = "l3"
    description = "a libvirt/QEMU VM with its own kernel, the view over virtio-fs"

    def availability(self, settings: Any) -> Availability:
        for check in self._checks(settings, probe=False):
            if not check.ok:
                return Availability(False, f"{check.name}: {check.detail}", check.fix)
        return Availability(True)

    def doctor(self, settings: Any) -> list[Check]:
        return self._checks(settings, probe=True)

    def _checks(self, settings: Any, probe: bool) -> list[Check]:
        checks: list[Check] = []
        if os.geteuid() == 0:
            checks.append(Check("l3 user", True, "running as root"))
        else:
            checks.extend(_user_checks())
        try:
            _libvirt()
            checks.append(Check("l3 libvirt-python", True, "importable"))
        except Unavailable as exc:
            checks.append(Check("l3 libvirt-python", False, exc.message, exc.fix or ""))
            return checks
        uri = uri_of(settings)
        try:
            conn = connect(uri)
            try:
                caps = conn.getDomainCapabilities(None, "x86_64", "q35", "qemu")
                memfd = "memfd" in caps
                ver = conn.getLibVersion()
                _qemu_uid, qemu_gid = qemu_ids(conn)
            finally:
                conn.close()
            checks.append(Check("l3 libvirtd", True, f"{uri} answers (libvirt {ver // 1000000}.{ver // 1000 % 1000})"))
            if probe:
                if os.geteuid() == 0:
                    checks.append(_kvm_node_check(qemu_gid))
            checks.append(Check("l3 shared memory", memfd, "memfd memory backing supported" if memfd else "memfd memory backing not offered", "" if memfd else "use libvirt >= 6.0 and QEMU >= 4.0"))
        except Unavailable as exc:
            checks.append(Check("l3 libvirtd", False, exc.message, exc.fix or ""))
        except Exception as exc:  # noqa: BLE001 - any libvirt failure is a failed check
            checks.append(Check("l3 libvirtd", False, str(exc), "check libvirtd's log"))
        if probe and os.geteuid() != 0:
            checks.append(_user_kvm_check())
        try:
            checks.append(Check("l3 virtiofsd", True, virtiofs.find_virtiofsd()))
        except Unavailable as exc:
            checks.append(Check("l3 virtiofsd", False, exc.message, exc.fix or ""))
        k = None
        try:
            k = kernel.find_kernel(_l3(settings))
            initramfs.resolve_modules(k.modules, ("virtio_pci", "virtiofs", "virtio_console")) if probe else None
            checks.append(Check("l3 kernel", True, f"{k.image} ({k.source}), modules {k.modules}"))
        except Unavailable as exc:
            hidden = kernel.fetched_but_unreadable() if os.geteuid() != 0 else None
            if hidden is not None:
                checks.append(Check("l3 kernel", False, f"a kernel was fetched into {hidden}, which you cannot read",
                                    f"sudo posture setup --l3-kernel (it now goes to {kernel.SYSTEM_ASSETS}, readable by every user)"))
            else:
                checks.append(Check("l3 kernel", False, exc.message, exc.fix or ""))
        try:
            checks.append(Check("l3 busybox", True, str(kernel.find_busybox())))
        except Unavailable as exc:
            checks.append(Check("l3 busybox", False, exc.message, exc.fix or ""))
        if probe:
            checks.append(_agent_check(_l3(settings).get("agent", "auto")))
            wanted = _l3(settings).get("accel", "auto")
            if k is None:
                checks.append(Check("l3 accelerator", False, "unknown (no kernel to probe with)", kernel.SETUP_FIX))
            elif wanted != "auto" or not accelmod.kvm_present():
                acc, why = accelmod.choose(k, wanted)
                checks.append(Check("l3 accelerator", True, f"{acc}: {why}"))
            else:
                known = accelmod.remembered(k)
                if known is None:
                    checks.append(Check("l3 accelerator", True, "KVM not probed yet (the first L3 session probes it, or `posture setup --l3-kernel`)"))
                else:
                    acc, why = accelmod.choose(k, wanted)
                    checks.append(Check("l3 accelerator", True, f"{acc}: {why}"))
        checks.extend(l3net.doctor(settings))
        return checks

    def setup(self, settings: Any, options: dict[str, Any]) -> list[str]:
        done: list[str] = []
        if options.get("l3_kernel"):
            if os.geteuid() != 0:
                raise Unavailable("fetching the L3 kernel needs root (apt-get download)", fix="run `sudo posture setup --l3-kernel`")
            done += kernel.fetch_kernel()
            k = kernel.find_kernel(_l3(settings))
            if accelmod.kvm_present() and _l3(settings).get("accel", "auto") == "auto":
                accelmod.cache_file().unlink(missing_ok=True)
                acc, why = accelmod.choose(k)
                done.append(f"L3 accelerator: {acc} ({why})")
        return done

    def teardown(self, settings: Any, purge: bool = False) -> list[str]:
        """Fetched assets (the kernel in /var/lib/posture/l3) are kept unless `purge`; root's boot cache goes."""
        done = []
        if os.geteuid() == 0 and exposed_root().exists():
            shutil.rmtree(exposed_root() / "boot", ignore_errors=True)
        if purge:
            for d in kernel.fetched_dirs():
                shutil.rmtree(d, ignore_errors=True)
                done.append(f"removed {d}")
            accelmod.cache_file().unlink(missing_ok=True)
        elif kernel.fetched_dirs():
            done.append(f"kept the fetched L3 kernel in {', '.join(map(str, kernel.fetched_dirs()))} (`posture setup --remove --purge` deletes it)")
        return done

    def session(self, record: SessionRecord, settings: Any) -> Session:
        """A LibvirtSession for `record`."""
        from .session import LibvirtSession

        return LibvirtSession(record, settings)


def add_commands(app: Any) -> None:
    """`posture l3 probe-accel`: forget and re-probe whether KVM works here."""
    import typer

    l3app = typer.Typer(help="L3 (libvirt VM) helpers.")

    @l3app.command("probe-accel")
    def probe_accel() -> None:
        """Re-probe whether KVM boots guests here (else TCG) and remember the answer."""
        from ..plugins import load_settings

        settings = load_settings(Path.cwd())
        k = kernel.find_kernel(_l3(settings))
        accelmod.cache_file().unlink(missing_ok=True)
        acc, why = accelmod.choose(k)
        typer.echo(f"{acc}: {why}")

    app.add_typer(l3app, name="l3")




def _agent_check(wanted: str) -> Check:
    """Which exec agent the guest will run, and why; the Python fallback works but starts about two seconds later under TCG."""
    try:
        agent = guestagent.choose(wanted, exposed_root() / "boot", virtiofs.GUEST, virtiofs.GUEST_PYTHON, virtiofs.agent_pycs)
    except Unavailable as exc:
        return Check("l3 exec agent", False, exc.message, exc.fix or "")
    return Check("l3 exec agent", True, agent.why, guestagent.COMPILER_FIX if wanted == "auto" and agent.kind == "python" else "")
