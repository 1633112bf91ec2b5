"""`posture verify`'s automatic network targets, chosen from a host's own tables, and how rows are judged.

The choice is a pure function of the host's facts (routes, addresses, neighbours, listeners,
resolvers) and the blocked list; `confirm` keeps only what answers from the host (tried here
on this machine's loopback only). The same choice on a real namespace's tables runs in
tests/l2/test_verify.py.
"""

from __future__ import annotations

import socket
import time

import pytest

from posture.errors import UsageError
from posture.netpolicy import NetworkPolicy
from posture.verify import promises
from posture.verify import targets as t

HOME_LAN = t.HostFacts(
    gateways=["192.168.1.1"], default4=True, addresses=["127.0.0.1", "192.168.1.23", "fe80::1"],
    neighbours=["192.168.1.1", "192.168.1.50"], listeners=[("0.0.0.0", 22), ("127.0.0.1", 631), ("192.168.1.23", 9000)],
    resolvers=["127.0.0.53", "9.9.9.9"],
)


def keys(targets: list[t.Target]) -> list[str]:
    return [x.key for x in targets]


def test_a_home_lan_gives_router_neighbours_own_address_loopback_and_public() -> None:
    c = t.choose(HOME_LAN, NetworkPolicy())
    internal = keys(c.internal)
    assert {"192.168.1.23:22", "192.168.1.23:9000"} <= set(internal)  # its own LAN address, where something listens
    assert {f"192.168.1.1:{p}" for p in t.SERVICE_PORTS} <= set(internal)  # the router
    assert "192.168.1.50:22" in internal and "169.254.169.254:80" in internal
    assert not any(k.startswith(("127.", "fe80")) for k in internal)
    assert keys(c.loopback) == ["10.0.2.2:22", "127.0.0.1:22", "10.0.2.2:631", "127.0.0.1:631"]
    public = keys(c.public)
    assert public[0] == "9.9.9.9:53", public  # the public resolver first; 127.0.0.53 is loopback, never public
    assert "1.1.1.1:443" in public and not any(":" in x.addr for x in c.public)  # no v6 default route: no v6 target
    assert all(not NetworkPolicy().blocks(x.addr) for x in c.public)
    assert all(NetworkPolicy().blocks(x.addr) for x in c.internal)


def test_extra_blocks_and_a_public_gateway_move_targets() -> None:
    facts = t.HostFacts(gateways=["198.51.100.10", "2001:db8::1"], default4=True, default6=True, resolvers=["9.9.9.9"])
    c = t.choose(facts, NetworkPolicy(extra=("9.9.9.0/24",)))
    public = keys(c.public)
    assert "9.9.9.9:53" not in public  # blocked by the user's config: it is no public target any more
    assert "198.51.100.10:8080" in public and "2001:db8::1:443" in public  # a public gateway is tried on common ports
    assert "2606:4700:4700::1111:443" in public


def test_no_default_route_means_no_public_target_and_says_why() -> None:
    c = t.choose(t.HostFacts(addresses=["10.1.2.3"], listeners=[("10.1.2.3", 80)]), NetworkPolicy())
    assert c.public == [] and "no default route" in c.notes["public"]
    assert keys(c.internal)[0] == "10.1.2.3:80"


def test_confirm_keeps_what_answers_from_the_host() -> None:
    with socket.socket() as live, socket.socket() as dead:
        live.bind(("127.0.0.1", 0))
        live.listen(4)
        dead.bind(("127.0.0.1", 0))  # bound, not listening: refuses
        up, down = live.getsockname()[1], dead.getsockname()[1]
        cand = t.Targets(
            loopback=[t.Target("10.0.2.2", up, ""), t.Target("127.0.0.1", up, ""), t.Target("10.0.2.2", down, ""), t.Target("127.0.0.1", down, "")],
            public=[t.Target("127.0.0.1", down, "")],
        )
        c = t.confirm(cand)
    assert keys(c.loopback) == [f"10.0.2.2:{up}", f"127.0.0.1:{up}"]  # 10.0.2.2 counts when its port answers on loopback
    assert c.public == [] and "answered from the host itself" in c.notes["public"]
    assert c.internal == [] and "knows no internal address" in c.notes["internal"]


def test_the_environment_replaces_the_choice() -> None:
    env = {t.ENV: '{"public": ["198.51.100.10:8080", "[2001:db8:51::10]:8080"], "internal": ["100.64.0.10:8080"], "loopback": []}'}
    c = t.pick(NetworkPolicy(), env)
    assert keys(c.public) == ["198.51.100.10:8080", "2001:db8:51::10:8080"] and keys(c.internal) == ["100.64.0.10:8080"]
    assert c.given == {"public", "internal", "loopback"} and "gives no loopback" in c.notes["loopback"]
    only = t.pick(NetworkPolicy(), env, kinds=("public",))  # L4: the public target only
    assert keys(only.public) == keys(c.public) and only.internal == [] and only.loopback == [] and set(only.notes) == set()
    for bad in ("not json", '["x"]', '{"dns": []}', '{"public": "1.1.1.1:443"}', '{"public": ["1.1.1.1"]}', '{"public": ["host:443"]}', '{"public": ["1.1.1.1:0"]}'):
        with pytest.raises(UsageError) as exc:
            t.pick(NetworkPolicy(), {t.ENV: bad})
        assert t.ENV in str(exc.value) and "fix:" in str(exc.value)


def test_read_host_reads_this_machines_tables() -> None:
    facts = t.read_host()
    assert all(isinstance(port, int) and 0 < port < 65536 for _, port in facts.listeners)
    assert all(t._ip(a) is not None for a in [*facts.gateways, *facts.addresses])


def test_tailnet_peers_are_this_machine_and_the_others_not_the_l4_host() -> None:
    doc = {
        "BackendState": "Running",
        "Self": {"HostName": "laptop", "TailscaleIPs": ["100.64.0.1", "fd7a:115c:a1e0::1"]},
        "Peer": {
            "a": {"HostName": "vps", "DNSName": "vps.tail.ts.net.", "TailscaleIPs": ["100.64.0.2"], "Online": True},
            "b": {"HostName": "nas", "DNSName": "nas.tail.ts.net.", "TailscaleIPs": ["100.64.0.3"], "Online": True},
            "c": {"HostName": "old", "DNSName": "old.tail.ts.net.", "TailscaleIPs": ["100.64.0.4"], "Online": False},
        },
    }
    got = {x.addr for x in t.tailnet_peers(doc, "vps")}
    assert got == {"100.64.0.1", "100.64.0.3"}
    assert {x.port for x in t.tailnet_peers(doc, "vps")} == set(t.PEER_PORTS)


def _ctx(picked: t.Targets, peers: list[str] | None = None) -> promises.Context:
    return promises.Context(cred="C", state="S", cred_file="~/.ssh/x", targets=picked, peers=peers or [], project_visible=True)


def test_network_rows_reached_refused_and_untestable() -> None:
    picked = t.Targets(internal=[t.Target("192.168.1.1", 80, "")], public=[t.Target("1.1.1.1", 443, "")], notes={"loopback": "nothing listens"})
    report = {"net": {"192.168.1.1:80": "ok:", "1.1.1.1:443": "ok:"}}
    rows = {r.promise: r for r in promises.rows_for("l3", report, _ctx(picked))}
    assert rows[promises.INTERNAL].held is False and "192.168.1.1:80" in rows[promises.INTERNAL].evidence
    assert rows[promises.PUBLIC].held is True
    assert rows[promises.LOOPBACK].held is None and rows[promises.LOOPBACK].evidence == "nothing listens"
    report = {"net": {"192.168.1.1:80": "timeout", "1.1.1.1:443": "ECONNREFUSED"}}
    rows = {r.promise: r for r in promises.rows_for("l3", report, _ctx(picked))}
    assert rows[promises.INTERNAL].held is True and rows[promises.PUBLIC].held is False


def test_tailnet_peers_that_answer_are_a_warning_not_a_failure() -> None:
    report = {"net": {"100.64.0.1:22": "ok:SSH-2.0", "100.64.0.3:80": "ECONNREFUSED"}}
    rows = {r.promise: r for r in promises.rows_for("l4", report, _ctx(t.Targets(), ["100.64.0.1:22", "100.64.0.3:80"]))}
    assert rows[promises.PEERS].held is None and rows[promises.PEERS].evidence.startswith("WARNING") and "100.64.0.1:22" in rows[promises.PEERS].evidence


def test_a_walk_that_could_not_finish_proves_nothing_about_the_canaries() -> None:
    """The probe's walk failing (EMFILE, EIO) leaves the canary rows untested, never held; a refusal (EACCES) is fine;
    a canary found wins over an unfinished walk."""
    ctx = _ctx(t.Targets())
    clean: dict = {"creds": {"~/.ssh/id_rsa": "ENOENT"}, "canaries_found": {"C": [], "S": []},
                   "scan_errors": {"EACCES": {"count": 3, "first": ["/usr/share/polkit-1/rules.d"]}}}
    rows = {r.promise: r for r in promises.rows_for("l3", clean, ctx)}
    assert rows[promises.CREDS].held is True and rows[promises.STATE].held is True
    broken = {**clean, "scan_errors": {**clean["scan_errors"], "EMFILE": {"count": 9000, "first": ["/usr/lib/x"]}}}
    rows = {r.promise: r for r in promises.rows_for("l3", broken, ctx)}
    for promise in (promises.CREDS, promises.STATE):
        assert rows[promise].held is None and "EMFILE at 9000 paths (first /usr/lib/x)" in rows[promise].evidence, rows[promise]
    found = {**broken, "canaries_found": {"C": ["/tmp/leak"], "S": []}}
    assert {r.promise: r for r in promises.rows_for("l3", found, ctx)}[promises.CREDS].held is False


def test_the_canary_walk_reads_regular_files_only_and_a_fifo_does_not_stop_it(tmp_path) -> None:
    """A fifo in the walked tree once made the probe wait for a writer for ever (and `posture verify` with it)."""
    import json
    import os
    import subprocess
    import sys

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "key.txt").write_text("NEEDLE-123\n")
    os.mkfifo(tmp_path / "a" / "pipe")
    os.symlink(tmp_path / "a" / "key.txt", tmp_path / "link")
    code = ("import json, sys; from posture.verify.probe import find_canaries; "
            f"print(json.dumps(find_canaries(['NEEDLE-123'], [{str(tmp_path)!r}], [])))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"NEEDLE-123": [str(tmp_path / "a" / "key.txt")]}  # the link is not read twice


def test_the_probe_tries_a_listing_again_while_descriptors_are_exhausted_and_only_then(monkeypatch) -> None:
    """EMFILE for a moment (an L3 guest's file server before its reaper drops inodes) is waited out; EMFILE that
    lasts, and any other error at once, still fail (and so count as an unfinished walk)."""
    import errno

    from posture.verify import probe

    monkeypatch.setattr(probe, "EXHAUSTED_WAIT", 0.5)
    calls: list[str] = []

    def flaky(path: str) -> str:
        calls.append(path)
        if len(calls) < 3:
            raise OSError(errno.EMFILE, "Too many open files", path)
        return "listed"

    assert probe._retry(flaky, "/x") == "listed" and calls == ["/x"] * 3

    def exhausted(path: str) -> str:
        raise OSError(errno.EMFILE, "Too many open files", path)

    started = time.monotonic()
    with pytest.raises(OSError) as err:
        probe._retry(exhausted, "/y")
    assert err.value.errno == errno.EMFILE and 0.5 <= time.monotonic() - started < 2

    gone: list[str] = []

    def missing(path: str) -> str:
        gone.append(path)
        raise OSError(errno.ENOENT, "No such file or directory", path)

    with pytest.raises(FileNotFoundError):
        probe._retry(missing, "/z")
    assert gone == ["/z"]
