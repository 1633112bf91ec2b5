"""The L3 backend: what this host can do for L3 (`availability`, `doctor`), `posture setup --l3-kernel`,
and `posture l3 probe-accel`."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from ..errors import Unavailable
from ..lazy import lazy
from ..session import Availability, Backend, Check, Session, SessionRecord
from .session import EXPOSED_ROOT, ROOT_FIX, _l3, _libvirt, connect, qemu_ids, uri_of

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
        checks.append(Check("l3 root", os.geteuid() == 0, "running as root" if os.geteuid() == 0 else "not root", "" if os.geteuid() == 0 else ROOT_FIX))
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
                checks.append(_kvm_node_check(qemu_gid))
            checks.append(Check("l3 shared memory", memfd, "memfd memory backing supported" if memfd else "memfd memory backing not offered", "" if memfd else "use libvirt >= 6.0 and QEMU >= 4.0"))
        except Unavailable as exc:
            checks.append(Check("l3 libvirtd", False, exc.message, exc.fix or ""))
        except Exception as exc:  # noqa: BLE001 - any libvirt failure is a failed check
            checks.append(Check("l3 libvirtd", False, str(exc), "check libvirtd's log"))
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
        """Fetched assets (the kernel) are kept unless `purge`."""
        done = []
        if purge and kernel.assets_dir().exists():
            shutil.rmtree(kernel.assets_dir(), ignore_errors=True)
            done.append(f"removed {kernel.assets_dir()}")
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
        agent = guestagent.choose(wanted, EXPOSED_ROOT / "boot", virtiofs.GUEST, virtiofs.GUEST_PYTHON, virtiofs.agent_pycs)
    except Unavailable as exc:
        return Check("l3 exec agent", False, exc.message, exc.fix or "")
    return Check("l3 exec agent", True, agent.why, guestagent.COMPILER_FIX if wanted == "auto" and agent.kind == "python" else "")
