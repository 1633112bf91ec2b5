"""The transient libvirt domain of one L3 session, as XML.

q35 with direct kernel boot (libvirt 9.0 here has no microvm type) through qboot where QEMU has it, memfd shared memory
(vhost-user virtio-fs needs it), two virtio-fs shares whose virtiofsd posture starts itself,
a virtio-serial channel to a unix socket for the exec agent (and one for the gateway's door), optional user-mode networking,
and nothing else: no disks, no graphics, no USB, no balloon; every device sits on the root complex (no PCIe root ports). For an ordinary user the
domain carries a static DAC label: libvirt runs its QEMU as the user's uid, with libvirt's
QEMU group as primary group (libvirt's own per-domain directory, /var/lib/libvirt/qemu, is
only open to that group) and the user's groups as supplementary ones (so /dev/kvm opens
when the user is in `kvm`). The QEMU process is then the user's own, which is what the
network helper checks (netd/vm.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

from ..errors import Unavailable
from .door import CHANNEL_NAME as DOOR_NAME
from .virtiofs import CHANNEL_NAME

QBOOT_PATHS = ("/usr/share/qemu/qboot.rom", "/usr/share/qboot/bios.bin")
CMDLINE = "console=ttyS0 quiet loglevel=1 panic=-1 rdinit=/init tsc=reliable no_timer_check noreplace-smp cryptomgr.notests i8042.noaux i8042.nokbd i8042.nopnp pcie_ports=compat"


def firmware(wanted: str = "auto") -> str:
    """The BIOS image for `[l3] firmware`: qboot, a minimal firmware that only starts a kernel (about 0.15 s
    sooner than SeaBIOS under TCG), when `auto` finds QEMU's copy; "" is QEMU's own SeaBIOS."""
    if wanted == "seabios":
        return ""
    found = next((p for p in QBOOT_PATHS if os.path.isfile(p)), "")
    if wanted == "qboot" and not found:
        raise Unavailable(f"[l3] firmware = \"qboot\", but no qboot image (looked in {', '.join(QBOOT_PATHS)})",
                          fix="apt-get install qemu-system-data, or set [l3] firmware = \"auto\" or \"seabios\"")
    return found


@dataclass
class DomainSpec:
    """Everything the XML needs."""

    name: str
    kernel: str
    initrd: str
    accel: str  # "kvm" or "tcg"
    memory_mib: int
    cpus: int
    root_socket: str
    rw_socket: str
    channel_socket: str
    console_log: str
    network: bool
    cmdline: str = CMDLINE
    uuid: str = ""
    user: tuple[int, int] | None = None  # (uid, gid) QEMU runs as; None: libvirt's own QEMU user and group
    tcg_cpu: str = "max"  # under TCG: "max" (every instruction set TCG emulates) or "qemu64" (QEMU's default model)
    door_socket: str = ""  # the gateway door's virtio-serial port (l3/door.py), when the session has a gateway
    firmware: str = ""  # a BIOS image for QEMU's -bios (qboot); "" is QEMU's default, SeaBIOS


def _slot(n: int) -> str:
    """An address on the root complex itself (an integrated endpoint): libvirt then adds no PCIe root
    port per device, and the guest kernel has fewer bridges to enumerate and less ACPI to interpret."""
    return f"<address type='pci' domain='0x0000' bus='0x00' slot='{n:#04x}' function='0x0'/>"


def xml(spec: DomainSpec) -> str:
    """The domain XML for `spec`."""
    a = quoteattr
    # TCG: QEMU's `max` model by default, with every instruction set TCG emulates (AVX2 among them: agents
    # shipped as native binaries, such as Claude Code's, die of SIGILL on qemu64); `[l3] tcg_cpu = "qemu64"`
    # boots about 0.4 s faster for tools that do without
    cpu = ("<cpu mode='host-passthrough'/>" if spec.accel == "kvm" else "<cpu mode='maximum' check='none'/>" if spec.tcg_cpu == "max" else "")
    net = (
        f"<interface type='user'><model type='virtio'/><rom enabled='no'/>{_slot(5)}</interface>" if spec.network else ""
    )
    door = (f"<channel type='unix'><source mode='bind' path={a(spec.door_socket)}/><target type='virtio' name={a(DOOR_NAME)}/></channel>"
            if spec.door_socket else "")
    uuid = f"<uuid>{escape(spec.uuid)}</uuid>" if spec.uuid else ""
    loader = f"<loader type='rom' readonly='yes'>{escape(spec.firmware)}</loader>" if spec.firmware else ""
    label = (f"<seclabel type='static' model='dac' relabel='yes'><label>+{spec.user[0]}:+{spec.user[1]}</label></seclabel>"
             if spec.user is not None else "")
    return f"""<domain type={a('kvm' if spec.accel == 'kvm' else 'qemu')}>
  <name>{escape(spec.name)}</name>
  {uuid}
  <memory unit='MiB'>{spec.memory_mib}</memory>
  <vcpu>{spec.cpus}</vcpu>
  <memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    {loader}
    <kernel>{escape(spec.kernel)}</kernel>
    <initrd>{escape(spec.initrd)}</initrd>
    <cmdline>{escape(spec.cmdline)}</cmdline>
  </os>
  <features><acpi/></features>
  {cpu}
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <filesystem type='mount'>
      <driver type='virtiofs' queue='1024'/>
      <source socket={a(spec.root_socket)}/>
      <target dir='root'/>
      {_slot(2)}
    </filesystem>
    <filesystem type='mount'>
      <driver type='virtiofs' queue='1024'/>
      <source socket={a(spec.rw_socket)}/>
      <target dir='rw'/>
      {_slot(3)}
    </filesystem>
    <controller type='usb' model='none'/>
    <controller type='virtio-serial' index='0'>{_slot(4)}</controller>
    <channel type='unix'>
      <source mode='bind' path={a(spec.channel_socket)}/>
      <target type='virtio' name={a(CHANNEL_NAME)}/>
    </channel>
    {door}
    <serial type='file'>
      <source path={a(spec.console_log)}/>
      <target port='0'/>
    </serial>
    {net}
    <video><model type='none'/></video>
    <memballoon model='none'/>
  </devices>
  {label}
</domain>
"""
