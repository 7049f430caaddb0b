#!/usr/bin/env python3
"""test_pop3_proxy.py - real POP3 clients through usherd's proxy to real Dovecot backends.

A ring of three usherd, each proxying POP3 and IMAP on its own address, in front of three Dovecot
2.3 backends. Python's poplib is the client where it can be (USER/PASS), raw sockets elsewhere
(AUTH, pipelining, bad input).

Checked: USER/PASS, AUTH PLAIN with and without an initial response, AUTH LOGIN, the bare AUTH
list and CAPA; a user's POP3 logins through any of the three usherd reach one backend, the one
its IMAP logins reach and `doveadm director status` shows; the backend logs the real client
address (XCLIENT); a wrong password is refused as the backend said; commands pipelined behind
PASS reach the backend; a slow client gets all of a big RETR and QUIT's answer although the backend
closed before it had read them; a kick from the admin ends the session with an -ERR; a stopped backend
gives -ERR [SYS/TEMP]; bad input (an overlong line, too many bad commands, STLS without TLS) is
answered and usherd keeps serving. Exits 0 pass, 1 fail, 77 skipped.
"""

import base64
import os
import subprocess
import socket
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import usherlab as ul  # noqa: E402


def raw(host, lines, read_until=b"\r\n", timeout=10):
    return ul.raw_talk(host, ul.POP3_PORT, lines, read_until, timeout)


def b64(text):
    return base64.b64encode(text.encode()).decode()


def run(lab, t):
    bs = [lab.dovecot_backend(lab.backend_ip(i)) for i in (1, 2, 3)]
    ring = [lab.director_ip(i) for i in (1, 2, 3)]
    us = [lab.usherd(ip, ring=ring, backends=bs,
                     extra_conf=f"[proxy]\nimap_listen = {ip}:{ul.IMAP_PORT}\n"
                                f"pop3_listen = {ip}:{ul.POP3_PORT}\nworkers = 2\n"
                                f"max_bad_commands = 3\nauth_mechanisms = plain login xoauth2\n")
          for ip in ring]
    lab.start_all()
    lab.wait_ring_synced(us, timeout=45, via="admin")

    # -- one backend per user, through any usherd, the same for POP3 and IMAP
    where = {}
    bad = []
    for n in range(1, 21):
        user = f"user{n}"
        seen = {lab.pop3_login(u.ip, ul.POP3_PORT, user).backend for u in us}
        imap = lab.imap_login(us[n % 3].ip, ul.IMAP_PORT, user).backend
        cur = us[(n + 1) % 3].status_user(user)[0]
        if len(seen) != 1 or None in seen or cur not in seen or imap not in seen:
            bad.append(f"{user}: POP3 {seen}, IMAP {imap}, doveadm says {cur}")
        where[user] = seen.pop() if len(seen) == 1 else None
    t.ok(not bad, "20 users logged in over POP3 through each of three usherd: each reaches one "
         "backend, the one its IMAP login reaches and doveadm director status shows "
         "(the backend logged the client's own address: XCLIENT)", "\n".join(bad))

    # -- the login forms
    g, out = raw(us[0].ip, [b"CAPA\r\n"], b"\r\n.\r\n")
    t.ok(g.startswith(b"+OK") and b"SASL PLAIN LOGIN XOAUTH2\r\n" in out and b"USER" in out,
         "greeting and CAPA (USER, SASL PLAIN LOGIN ...)", out)
    g, out = raw(us[0].ip, [b"AUTH\r\n"], b"\r\n.\r\n")
    t.ok(out.endswith(b"+OK\r\nPLAIN\r\nLOGIN\r\nXOAUTH2\r\n.\r\n"),
         "a bare AUTH lists the mechanisms of auth_mechanisms", out)
    g, out = raw(us[0].ip, [b"AUTH OAUTHBEARER bixhPXVzZXI3LAEBAQ==\r\n"])
    t.ok(out.startswith(b"-ERR Unsupported authentication mechanism"),
         "a mechanism auth_mechanisms does not list is refused", out)
    c = socket.create_connection((us[1].ip, ul.POP3_PORT), timeout=10)
    c.recv(4096)
    c.sendall(b"USER user7\r\nPASS " + ul.PASSWORD.encode() + b"\r\nSTAT\r\nQUIT\r\n")
    c.shutdown(socket.SHUT_WR)
    out = ul.read_until_closed(c, timeout=10)
    c.close()
    t.ok(out.count(b"+OK") == 4 and b"Logging out" in out,
         "the client's end right behind USER, PASS, STAT and QUIT: every answer reaches it", out)
    ir = b64("\0user7\0" + ul.PASSWORD)
    g, out = raw(us[1].ip, [f"AUTH PLAIN {ir}\r\n".encode()], b"Logged in")
    t.ok(b"+OK Logged in" in out, "AUTH PLAIN with an initial response", out)
    g, out = raw(us[2].ip, [b"AUTH PLAIN\r\n", f"{ir}\r\n".encode()], b"Logged in")
    t.ok(out.startswith(b"+ ") and b"+OK Logged in" in out, "AUTH PLAIN with a continuation", out)
    g, out = raw(us[0].ip, [b"AUTH LOGIN\r\n", f"{b64('user7')}\r\n".encode(),
                            f"{b64(ul.PASSWORD)}\r\n".encode()], b"Logged in")
    t.ok(b"+ VXNlcm5hbWU6" in out and b"+OK Logged in" in out, "AUTH LOGIN", out)
    g, out = raw(us[0].ip, [b"AUTH PLAIN\r\n", b"*\r\n", b"QUIT\r\n"], b"Logging out")
    t.ok(b"-ERR Authentication aborted" in out and b"+OK Logging out" in out,
         "an AUTH cancelled with *, then QUIT", out)
    g, out = raw(us[0].ip, [b"USER user7\r\n", b"PASS wrong\r\n"], b"-ERR")
    t.ok(b"-ERR [AUTH]" in out, "a wrong password: -ERR [AUTH] as the backend said it", out)
    g, out = raw(us[0].ip, [f"USER user7\r\nPASS {ul.PASSWORD}\r\nSTAT\r\nQUIT\r\n".encode()],
                 b"Logging out")
    t.ok(b"+OK Logged in" in out and out.count(b"+OK") >= 4,
         "USER/PASS with STAT and QUIT pipelined behind: they reach the backend", out)

    # -- a kick from the admin ends the session
    held = lab.pop3_login(us[2].ip, ul.POP3_PORT, "user11", keep=True)
    r = subprocess.run([os.environ.get("USHERCTL", "usherctl"), "-a", us[0].admin_socket, "kick",
                        "user11"], capture_output=True, text=True)
    t.ok(r.returncode == 0, "usherctl kick user11 on another usherd", r.stderr)
    bye = ul.read_until_closed(held.client.sock)
    t.ok(b"-ERR" in bye and b"moving" in bye, "the kicked session got an -ERR before the close",
         bye)

    # -- a slow client gets every byte the backend sent before it closed
    got, size = lab.slow_pop3_retr(us[1].ip, ul.POP3_PORT, "user13")
    t.ok(got.endswith(b"\r\n.\r\n+OK Logging out.\r\n") and len(got) > size,
         f"a slow client, RETR of a {size >> 20} MiB message and QUIT pipelined: the backend "
         f"closed first, the client still got all of it ({len(got)} bytes) and QUIT's answer",
         got[-300:])

    # -- a stopped backend: a temporary failure, no other backend
    victim = next(u for u, b in where.items() if b == bs[2].ip)
    bs[2].stop()
    g, out = raw(us[0].ip, [f"USER {victim}\r\nPASS {ul.PASSWORD}\r\n".encode()], b"-ERR",
                 timeout=15)
    t.ok(b"-ERR [SYS/TEMP]" in out, f"{victim}'s backend stopped: -ERR [SYS/TEMP]", out)
    bs[2].start()

    # -- bad input
    g, out = raw(us[0].ip, [b"USER " + b"x" * 5000 + b"\r\n"], b"-ERR")
    t.ok(b"-ERR" in out, "an overlong line: -ERR and close", out[:100])
    g, out = raw(us[0].ip, [b"STLS\r\n"], b"-ERR")
    t.ok(b"-ERR TLS is not configured" in out, "STLS on a listener without TLS: -ERR", out)
    g, out = raw(us[0].ip, [b"FOO\r\n", b"NOOP\r\n", b"PASS x\r\n"], b"Too many")
    t.ok(b"-ERR Unknown command" in out and b"-ERR Too many invalid commands" in out,
         "too many bad commands: -ERR and close", out)
    s = lab.pop3_login(us[0].ip, ul.POP3_PORT, "user12")
    t.ok(s.backend == where["user12"], "usherd still serves logins after the bad input")


def main():
    if ul.USHERD is None:
        print("1..0 # SKIP set $USHERD")
        return ul.SKIP_STATUS
    return ul.run_test(run, users=40)


if __name__ == "__main__":
    sys.exit(main())
