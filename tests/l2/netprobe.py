"""The in-session network probe of the network-mode tests (L2 and L3), and what "closed" means.

PROBE runs inside a session (python3 -c): a direct connection to the public host and to an internal
one, a DNS query to an outside resolver, CONNECTs through the gateway's door, and curl through the
proxy variables; it prints one NET-RESULT: JSON line. HTTP_SERVER is the plain HTTP server the
probe's curl reaches on the public stand-in (port 8082).
"""

from __future__ import annotations

from posture.gateway import INSIDE_PORT
from testnet import PORT, PUBLIC, TAILNET

HOSTS = f"127.0.0.1 localhost\n{PUBLIC} public.test\n{PUBLIC} other.test\n{TAILNET} tailnet.test\n"

PROBE = r"""
import json, os, socket
r = {"session": os.environ.get("POSTURE_SESSION"), "https_proxy": os.environ.get("HTTPS_PROXY"), "no_proxy": os.environ.get("NO_PROXY")}
def direct(addr):
    try:
        with socket.create_connection((addr, %(port)d), timeout=3) as s:
            return "ok:" + s.recv(64).decode().strip()
    except OSError as e:
        return "err:%%s" %% (e.errno,)
r["public"] = direct("%(public)s")
r["tailnet"] = direct("%(tailnet)s")
query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x01\x00\x01"
try:
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.sendto(query, ("%(public)s", 53))
    r["dns_send"] = "sent"
except OSError as e:
    r["dns_send"] = "err:%%s" %% (e.errno,)
try:
    socket.getaddrinfo("example.com", 443)
    r["resolve"] = "ok"
except OSError as e:
    r["resolve"] = "err"
def tunnel(target):
    try:
        with socket.create_connection(("127.0.0.1", %(door)d), timeout=5) as s:
            s.sendall(("CONNECT %%s HTTP/1.1\r\nHost: %%s\r\n\r\n" %% (target, target)).encode())
            data = b""
            while True:
                c = s.recv(4096)
                if not c:
                    break
                data += c
            return data.decode(errors="replace")
    except OSError as e:
        return "err:%%s" %% (e.errno,)
for name in ("public.test", "other.test", "tailnet.test", "%(public)s"):
    r["via:" + name] = tunnel("%%s:%(port)d" %% name)
import subprocess
for key, url in (("curl_allowed", "http://public.test:%(http)d/"), ("curl_refused", "http://other.test:%(http)d/"),
                 ("curl_https_refused", "https://other.test/")):
    p = subprocess.run(["curl", "-sS", "-m", "10", url], capture_output=True, text=True)  # curl reads http_proxy/https_proxy itself
    r[key] = "%%d|%%s|%%s" %% (p.returncode, p.stdout.strip(), p.stderr.strip())
print("NET-RESULT:" + json.dumps(r))
""" % {"port": PORT, "public": PUBLIC, "tailnet": TAILNET, "door": INSIDE_PORT, "http": 8082}

# A plain HTTP server on the public stand-in (port 8082), for tools that use the proxy variables.
HTTP_SERVER = r"""
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"posture-egress-ok " + self.headers.get("Host", "").encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a):
        pass
s = http.server.ThreadingHTTPServer((sys.argv[1], 8082), H)
print("ready", flush=True)
s.serve_forever()
"""


def closed(r: dict) -> None:
    """No way out but the gateway: no direct connection, no DNS, no internal host."""
    assert r["public"].startswith("err:"), r
    assert r["tailnet"].startswith("err:"), r
    assert r["dns_send"].startswith("err:"), r  # nothing but loopback: the query cannot even be sent
    assert r["resolve"] == "err", r
    assert r["https_proxy"] == f"http://127.0.0.1:{INSIDE_PORT}" and "127.0.0.1" in r["no_proxy"], r
