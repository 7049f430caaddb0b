#!/usr/bin/env python3
"""test_proxy_protocol.py - usherd behind a load balancer that speaks the PROXY protocol, and in
front of a backend that wants it.

A ring of three usherd ([proxy] trusted_proxies = 127.N.9.0/24, the "load balancer" addresses;
proxy_protocol_backends = b1) in front of three Dovecot 2.3 backends, b1 with haproxy = yes on
its IMAP and POP3 listeners (it refuses any connection without a PROXY header).

Checked: logins of users on b1 work at all (so usherd sent a valid PROXY v2 header) and b1 logs
the client's own address; a trusted load balancer's PROXY v1 and v2 headers (IMAP and POP3)
make the backends, b1 (PROXY v2 from usherd) and the others (IMAP ID, XCLIENT), log the client
address the header named; a PROXY header from an untrusted address is refused and counted; a
broken header from a trusted address is closed and counted; usherd keeps serving.
Exits 0 pass, 1 fail, 77 skipped.
"""

import json
import os
import socket
import struct
import subprocess
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import usherlab as ul  # noqa: E402

V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def v2_header(src, sport, dst, dport):
    block = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)
    return V2_SIG + bytes([0x21, 0x11]) + struct.pack("!H", len(block)) + block


def talk(host, port, source_ip, first, lines, read_until, timeout=10, expect_greeting=True):
    """Connects from source_ip, sends `first` (a PROXY header), then reads the greeting and sends
    `lines`; returns everything read until `read_until` (or the close)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.bind((source_ip, 0))
    s.connect((host, port))
    data = b""
    try:
        s.sendall(first)
        if expect_greeting:
            while b"\r\n" not in data:
                part = s.recv(4096)
                if not part:
                    break
                data += part
        for line in lines:
            s.sendall(line)
        while read_until not in data:
            part = s.recv(65536)
            if not part:
                break
            data += part
    except (socket.timeout, ConnectionResetError):
        pass
    finally:
        s.close()
    return data


def stats(u):
    r = subprocess.run([os.environ.get("USHERCTL", "usherctl"), "-a", u.admin_socket, "--json",
                        "stats"], capture_output=True, text=True, check=True)
    return json.loads(r.stdout)["proxy"]


def run(lab, t):
    bs = [lab.dovecot_backend(lab.backend_ip(1), haproxy=True),
          lab.dovecot_backend(lab.backend_ip(2)), lab.dovecot_backend(lab.backend_ip(3))]
    ring = [lab.director_ip(i) for i in (1, 2, 3)]
    lb_net = f"127.{lab.net}.9.0/24"
    lb = f"127.{lab.net}.9.1"
    us = [lab.usherd(ip, ring=ring, backends=bs,
                     extra_conf=f"[proxy]\nimap_listen = {ip}:{ul.IMAP_PORT}\n"
                                f"pop3_listen = {ip}:{ul.POP3_PORT}\nworkers = 2\n"
                                f"trusted_proxies = {lb_net}\n"
                                f"proxy_protocol_backends = {bs[0].ip}\n")
          for ip in ring]
    lab.start_all()
    lab.wait_ring_synced(us, timeout=45, via="admin")

    # Users on b1 (PROXY v2 from usherd) and on another backend (IMAP ID / XCLIENT).
    where = {}
    for n in range(1, 31):
        user = f"user{n}"
        where[user] = lab.imap_login(us[n % 3].ip, ul.IMAP_PORT, user).backend
    on_b1 = [u for u, b in where.items() if b == bs[0].ip]
    other = [u for u, b in where.items() if b != bs[0].ip]
    t.ok(len(on_b1) >= 2 and len(other) >= 2,
         f"IMAP logins through usherd reach b1, which accepts only PROXY-protocol connections "
         f"({len(on_b1)} of 30 users there)", str(where))

    # -- the backend with haproxy = yes logs the client's own address
    src = f"127.{lab.net}.5.9"
    s = lab.pop3_login(us[0].ip, ul.POP3_PORT, on_b1[0], source_ip=src)
    t.ok(s.backend == bs[0].ip, f"a POP3 login of {on_b1[0]} from {src} reached b1, and b1 logged "
         f"the client's address and port (PROXY v2 from usherd)")

    # -- a trusted load balancer names the client
    for user, version, proto in ((on_b1[0], 1, "imap"), (on_b1[1], 2, "imap"),
                                 (other[0], 1, "imap"), (other[1], 2, "pop3")):
        client = ("192.0.2.%d" % (10 + version), 40000 + version)
        port = ul.IMAP_PORT if proto == "imap" else ul.POP3_PORT
        if version == 1:
            hdr = f"PROXY TCP4 {client[0]} {us[1].ip} {client[1]} {port}\r\n".encode()
        else:
            hdr = v2_header(client[0], client[1], us[1].ip, port)
        offsets = {b: b.log_size() for b in bs}
        if proto == "imap":
            lines = [f"a LOGIN {user} {ul.PASSWORD}\r\n".encode(), b"b LOGOUT\r\n"]
            until = b"b OK"
        else:
            lines = [f"USER {user}\r\nPASS {ul.PASSWORD}\r\nQUIT\r\n".encode()]
            until = b"Logging out"
        out = talk(us[1].ip, port, lb, hdr, lines, until)
        try:
            seen = lab.find_login_backend(offsets, user, client, proto)
        except ul.LabError:
            seen = None
        t.ok(seen == where[user],
             f"PROXY v{version} from the load balancer, {proto} login of {user}: {seen} logged "
             f"the client {client[0]}:{client[1]}", out[-300:])

    # -- a header from an untrusted address, a broken header from a trusted one
    before = stats(us[2])
    out = talk(us[2].ip, ul.IMAP_PORT, f"127.{lab.net}.5.10",
               b"PROXY TCP4 203.0.113.1 127.0.0.1 1 143\r\n", [], b"BYE")
    after = stats(us[2])
    t.ok(b"* BYE PROXY protocol header from an untrusted address" in out and
         after["proxy_header_refused"] == before["proxy_header_refused"] + 1,
         "a PROXY header from an address not in trusted_proxies: BYE, closed, counted", out)
    out = talk(us[2].ip, ul.IMAP_PORT, f"127.{lab.net}.5.10",
               v2_header("203.0.113.1", 1, "127.0.0.1", 143), [], b"BYE")
    after = stats(us[2])
    t.ok(b"* BYE PROXY protocol header from an untrusted address" in out and
         after["proxy_header_refused"] == before["proxy_header_refused"] + 2,
         "a PROXY v2 header from an address not in trusted_proxies: BYE, closed, counted", out)
    # An empty line, or a first key typed alone, is a client's own input, not a PROXY header.
    out = talk(us[2].ip, ul.IMAP_PORT, f"127.{lab.net}.5.10", b"", [b"\r\n", b"P", b" NOOP\r\n"],
               b"P OK")
    after = stats(us[2])
    t.ok(b"* BAD" in out and b"P OK NOOP completed" in out and
         after["proxy_header_refused"] == before["proxy_header_refused"] + 2,
         "from an untrusted address, an empty first line gets BAD and a command split after its "
         "first byte is answered (prefixes of a PROXY header are not refused)", out)
    out = talk(us[2].ip, ul.IMAP_PORT, lb, b"HELLO there\r\n", [], b"\r\n",
               expect_greeting=False)
    after2 = stats(us[2])
    t.ok(out == b"" and after2["proxy_header_errors"] == before["proxy_header_errors"] + 1,
         "a trusted address that sends no valid header: closed without a greeting, counted",
         out)
    s = lab.imap_login(us[2].ip, ul.IMAP_PORT, other[2])
    t.ok(s.backend == where[other[2]], "usherd still serves logins")


def main():
    if ul.USHERD is None:
        print("1..0 # SKIP set $USHERD")
        return ul.SKIP_STATUS
    return ul.run_test(run, users=40)


if __name__ == "__main__":
    sys.exit(main())
