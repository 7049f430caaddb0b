#!/usr/bin/env python3
"""test_imap_proxy.py - real IMAP clients through usherd's proxy to real Dovecot backends.

A ring of three usherd, each proxying IMAP on its own address, in front of three Dovecot 2.3
backends (which name themselves in their ID reply). Python's imaplib is the client.

Checked: pre-login capabilities follow what all backends offer; LOGIN (atoms, quoted strings, synchronising and LITERAL+ literals), AUTHENTICATE PLAIN
with and without SASL-IR, AUTHENTICATE LOGIN; a user's logins through any of the three usherd
reach one backend, the one `doveadm director status` (usherd's admin socket) shows; a wrong
password is refused as the backend said; the backend sees the real client address (IMAP ID, in
its log); commands pipelined behind LOGIN reach the backend; a kick from the admin ends the
session with a BYE; a 3 MiB APPEND and FETCH arrive intact through splice(2), and a kick after
them still gets its BYE; a stopped backend gives a temporary failure (NO [UNAVAILABLE]); a client reset while its login
waits for a hung backend costs no CPU (it is closed at once); SIGTERM drains, a second one
stops at once; bad input:
an overlong line and too many bad commands close the connection with a BYE, and usherd keeps
serving. Exits 0 pass, 1 fail, 77 skipped.
"""

import base64
import imaplib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import usherlab as ul  # noqa: E402


def raw(host, lines, read_until=b"\r\n", timeout=10, source_ip=None):
    return ul.raw_talk(host, ul.IMAP_PORT, lines, read_until, timeout, source_ip)


class FakeOAuthBackend(ul.FakeServer):
    """An IMAP and POP3 backend (not Dovecot: the lab has no OAuth server) that refuses every
    token as RFC 7628 3.2.2 says and Dovecot does: a challenge holding the error, then, after
    the client's dummy answer, NO (IMAP) or -ERR (POP3). Records the dummy answers."""

    CHALLENGE = b"+ eyJzdGF0dXMiOiJpbnZhbGlkX3Rva2VuIiwic2NvcGUiOiJtYWlsIn0=\r\n"

    def __init__(self, ip):
        self.dummies = []
        super().__init__(ip, [ul.IMAP_PORT, ul.POP3_PORT])

    def serve(self, c, port):
        pop3 = port == ul.POP3_PORT
        f = c.makefile("rb")
        c.sendall(b"+OK fake ready\r\n" if pop3 else
                  b"* OK [CAPABILITY IMAP4rev1 SASL-IR ID LITERAL+ AUTH=OAUTHBEARER "
                  b"AUTH=XOAUTH2] fake ready\r\n")
        for line in iter(f.readline, b""):
            words = line.split()
            if pop3 and words[:1] == [b"AUTH"]:
                c.sendall(self.CHALLENGE)
                self.dummies.append(f.readline())
                c.sendall(b"-ERR [AUTH] Authentication failed.\r\n")
            elif pop3:
                c.sendall(b"-ERR no\r\n")
            elif words[1:2] == [b"ID"]:
                c.sendall(b"* ID NIL\r\n" + words[0] + b" OK ID completed.\r\n")
            elif words[1:2] == [b"AUTHENTICATE"]:
                c.sendall(self.CHALLENGE)
                self.dummies.append(f.readline())
                c.sendall(words[0] + b" NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")
            else:
                c.sendall(words[0] + b" BAD no\r\n")


def fake_backend_checks(lab, t):
    """A one-member ring in front of a fake backend: OAuth refusals, and what a client pipelined
    behind a login that found no backend."""
    ip, fake_ip = lab.director_ip(8), lab.backend_ip(8)
    fake = FakeOAuthBackend(fake_ip)
    try:
        lone = lab.usherd(ip, ring=[ip], backends=[fake_ip],
                          extra_conf=f"[proxy]\nimap_listen = {ip}:{ul.IMAP_PORT}\n"
                                     f"pop3_listen = {ip}:{ul.POP3_PORT}\n"
                                     f"auth_mechanisms = plain oauthbearer xoauth2\n")
        lone.start()
        lab.wait_ring_synced([lone], timeout=45, via="admin")
        bearer = base64.b64encode(b"n,a=user1,\x01auth=Bearer expired\x01\x01").decode()
        xoauth = base64.b64encode(b"user=user1\x01auth=Bearer expired\x01\x01").decode()
        _, imap_b = ul.raw_talk(ip, ul.IMAP_PORT,
                                [f"a AUTHENTICATE OAUTHBEARER {bearer}\r\n".encode()], b"a ")
        _, imap_x = ul.raw_talk(ip, ul.IMAP_PORT,
                                [f"b AUTHENTICATE XOAUTH2 {xoauth}\r\n".encode()], b"b ")
        _, pop3_b = ul.raw_talk(ip, ul.POP3_PORT,
                                [f"AUTH OAUTHBEARER {bearer}\r\n".encode()], b"-ERR")
        t.ok(b"a NO [AUTHENTICATIONFAILED]" in imap_b and b"b NO [AUTHENTICATIONFAILED]" in imap_x
             and b"-ERR [AUTH]" in pop3_b and
             fake.dummies == [b"AQ==\r\n", b"\r\n", b"AQ==\r\n"],
             "an expired OAuth token (OAUTHBEARER and XOAUTH2 over IMAP, OAUTHBEARER over POP3): "
             "usherd answers the backend's error challenge with the mechanism's dummy response "
             "and relays its refusal, not 'unavailable'",
             f"{imap_b!r} {imap_x!r} {pop3_b!r} dummies {fake.dummies!r}")
    finally:
        fake.close()
    # The backend is gone now: the login gets its temporary failure, and the command the client
    # pipelined behind it is answered (it waited unread for the login timeout).
    _, out = ul.raw_talk(ip, ul.IMAP_PORT,
                         [b"a LOGIN user1 pass\r\nb NOOP\r\n"], b"b ", timeout=15)
    t.ok(b"a NO [UNAVAILABLE]" in out and b"b OK" in out,
         "a login whose backend cannot be reached: NO [UNAVAILABLE], and the NOOP pipelined "
         "behind it is answered at once", out)
    lone.stop()


def run(lab, t):
    # Every backend offers XLAB-ALL after its defaults; only the first one XLAB-ONE. A master
    # user logs in as anyone with "user*master" and its own password.
    master_path = os.path.join(lab.root, "master.passwd")
    with open(master_path, "w") as f:
        f.write("master:{PLAIN}masterpass\n")
    os.chmod(master_path, 0o644)
    master_conf = ("auth_master_user_separator = *\npassdb {\n  driver = passwd-file\n"
                   f"  master = yes\n  args = scheme=PLAIN {master_path}\n}}\n")
    bs = [lab.dovecot_backend(lab.backend_ip(i),
                              extra_conf="imap_capability = +XLAB-ALL" +
                                         (" XLAB-ONE" if i == 1 else "") + "\n" + master_conf)
          for i in (1, 2, 3)]
    ring = [lab.director_ip(i) for i in (1, 2, 3)]
    us = [lab.usherd(ip, ring=ring, backends=bs,
                     extra_conf=f"[director]\nmaster_user_separator = *\n"
                                f"[proxy]\nimap_listen = {ip}:{ul.IMAP_PORT}\nworkers = 2\n"
                                f"max_bad_commands = 3\nshutdown_timeout = 3s\n")
          for ip in ring]
    lab.start_all()
    lab.wait_ring_synced(us, timeout=45, via="admin")

    # -- one backend per user, through any usherd
    where = {}
    bad = []
    for n in range(1, 31):
        user = f"user{n}"
        seen = {lab.imap_login(u.ip, ul.IMAP_PORT, user).backend for u in us}
        cur = us[(n + 1) % 3].status_user(user)[0]
        if len(seen) != 1 or None in seen or cur not in seen:
            bad.append(f"{user}: {seen}, doveadm says {cur}")
        where[user] = seen.pop() if len(seen) == 1 else None
    t.ok(not bad, "30 users logged in through each of three usherd: each reaches one backend, "
         "the one doveadm director status shows", "\n".join(bad))
    t.ok(len(set(where.values())) == 3, f"users spread over the three backends")

    # -- the login forms
    c = imaplib.IMAP4(us[0].ip, ul.IMAP_PORT)
    t.ok("SASL-IR" in c.capabilities and "AUTH=PLAIN" in c.capabilities and
         "AUTH=LOGIN" in c.capabilities and "AUTH=OAUTHBEARER" not in c.capabilities,
         "pre-login capabilities offer SASL-IR and the default auth_mechanisms (PLAIN, LOGIN: "
         "not OAUTHBEARER, which the backends do not offer)", str(c.capabilities))
    t.ok("XLAB-ALL" in c.capabilities and "IDLE" in c.capabilities and
         "XLAB-ONE" not in c.capabilities,
         "pre-login capabilities: what every backend's greeting offers (XLAB-ALL), not what "
         "one backend alone does (XLAB-ONE)", str(c.capabilities))
    c.authenticate("PLAIN", lambda _: b"\0user7\0" + ul.PASSWORD.encode())
    typ, data = c.select("INBOX")
    t.ok(typ == "OK", "AUTHENTICATE PLAIN with a continuation, then SELECT on the backend")
    c.logout()
    g, out = raw(us[1].ip, [b"a AUTHENTICATE PLAIN AHVzZXI3AHBhc3M=\r\n"], b"a OK")
    t.ok(b"a OK" in out and b"Logged in" in out, "AUTHENTICATE PLAIN with SASL-IR", out[-200:])
    g, out = raw(us[2].ip, [b"a AUTHENTICATE LOGIN\r\n", b"dXNlcjc=\r\n", b"cGFzcw==\r\n"], b"a OK")
    t.ok(b"+ VXNlcm5hbWU6" in out and b"a OK" in out, "AUTHENTICATE LOGIN (Outlook's)", out[-200:])
    g, out = raw(us[0].ip, [b"a LOGIN {5}\r\n"], b"+ OK")
    t.ok(b"+ OK" in out, "a synchronising literal gets its continuation")
    g, out = raw(us[0].ip, [b"a LOGIN {5}\r\n", b"user7 {4}\r\n", b"pass\r\n"], b"a OK")
    t.ok(out.count(b"+ OK") == 2 and b"a OK" in out, "LOGIN with two synchronising literals",
         out[-200:])
    g, out = raw(us[0].ip, [b"a LOGIN {5+}\r\nuser7 {4+}\r\npass\r\nb ID NIL\r\nc LOGOUT\r\n"],
                 b"c OK")
    t.ok(b"a OK" in out and b"x-lab-backend" in out and b"c OK" in out,
         "LITERAL+ login with commands pipelined behind it: they reach the backend", out[-300:])
    # `printf 'a LOGIN ...\r\nb LOGOUT\r\n' | nc`: the client's end (a FIN) comes right behind
    # its commands; the backend's answers still reach it (a half-close, as a TCP relay does).
    def half_close(host, port, data):
        c = socket.create_connection((host, port), timeout=10)
        c.recv(4096)
        c.sendall(data)
        c.shutdown(socket.SHUT_WR)
        out = ul.read_until_closed(c, timeout=10)
        c.close()
        return out
    out = half_close(us[2].ip, ul.IMAP_PORT, b"a LOGIN user7 pass\r\nb NOOP\r\nc LOGOUT\r\n")
    t.ok(b"a OK" in out and b"b OK NOOP" in out and b"* BYE" in out and b"c OK" in out,
         "the client ends its side right behind LOGIN, NOOP and LOGOUT: every answer reaches it, "
         "then the connection closes", out[-200:])

    # A master user, unquoted (as Dovecot reads it) and as PLAIN's authorization identity:
    # placed as the user it logs in as (master_user_separator), on that user's backend.
    bad = []
    for n in range(14, 20):
        user = f"user{n}"
        login = (f"m LOGIN {user}*master masterpass\r\n".encode() if n % 2 else
                 b"m AUTHENTICATE PLAIN " +
                 base64.b64encode(f"{user}\0master\0masterpass".encode()) + b"\r\n")
        g, out = raw(us[n % 3].ip, [login, b"n ID NIL\r\n"], b"n OK")
        if b"m OK" not in out or f'"x-lab-backend" "{where[user]}"'.encode() not in out:
            bad.append(f"{user}: {out[-300:]!r}")
    t.ok(not bad, "master-user logins (LOGIN user*master unquoted, AUTHENTICATE PLAIN with the "
         "user as authzid) reach the user's own backend", "\n".join(bad))
    g, out = raw(us[0].ip, [b'a LOGIN "user7" "wrong"\r\n'], b"a NO")
    t.ok(b"a NO [AUTHENTICATIONFAILED]" in out, "a wrong password: NO as the backend said it",
         out)

    # -- the backend sees the client's own address
    off = [b.log_size() for b in bs]
    s = lab.imap_login(us[1].ip, ul.IMAP_PORT, "user9", source_ip=f"127.{lab.net}.5.7")
    # Dovecot's log process writes the lines a moment after the login answered.
    for _ in range(50):
        logs = "".join(b.log_since(o) for b, o in zip(bs, off))
        if f"x-originating-ip=127.{lab.net}.5.7" in logs and f"rip=127.{lab.net}.5.7" in logs:
            break
        time.sleep(0.1)
    t.ok(f"x-originating-ip=127.{lab.net}.5.7" in logs and f"rip=127.{lab.net}.5.7" in logs,
         "the backend logs the client's address (IMAP ID x-originating-ip), not usherd's",
         logs[-600:])

    # -- a kick from the admin ends the session with BYE
    held = lab.imap_login(us[2].ip, ul.IMAP_PORT, "user11", keep=True)
    ctl = os.environ.get("USHERCTL", "usherctl")
    r = subprocess.run([ctl, "-a", us[2].admin_socket, "--json", "sessions", "user11"],
                       capture_output=True, text=True)
    listed = json.loads(r.stdout)["sessions"] if r.returncode == 0 else []
    r2 = subprocess.run([ctl, "-a", us[2].admin_socket, "sessions", where["user11"]],
                        capture_output=True, text=True)
    t.ok(len(listed) == 1 and listed[0]["backend"] == where["user11"] and
         listed[0]["client"].endswith(f":{held.local[1]}") and "user11" in r2.stdout,
         "usherctl sessions shows the live session (by user, and by backend)", r.stdout + r2.stdout)
    r = subprocess.run([os.environ.get("USHERCTL", "usherctl"), "-a", us[0].admin_socket, "kick",
                        "user11"], capture_output=True, text=True)
    t.ok(r.returncode == 0, "usherctl kick user11 on another usherd", r.stderr)
    bye = ul.read_until_closed(held.client.sock)
    t.ok(b"* BYE" in bye, "the kicked session got an IMAP BYE before the close", bye)

    # -- big messages both ways (spliced after login), then a kick still ends with a BYE
    held = lab.imap_login(us[0].ip, ul.IMAP_PORT, "user14", keep=True)
    c = held.client
    body = b"".join(b"line %07d " % i + os.urandom(30).hex().encode() + b"\r\n"
                    for i in range(40000))  # about 3 MiB
    msg = b"From: a@example.org\r\nSubject: big\r\n\r\n" + body
    typ, _ = c.append("INBOX", None, None, msg)
    c.select("INBOX")
    typ2, data = c.fetch(b"*", "(BODY.PEEK[])")
    got = data[0][1] if typ2 == "OK" and data and isinstance(data[0], tuple) else b""
    t.ok(typ == "OK" and got == msg,
         f"a {len(msg) / 1048576:.1f} MiB APPEND and FETCH through usherd arrive byte for byte",
         f"{typ} {typ2} {len(got)} of {len(msg)} bytes")
    stats = json.loads(subprocess.run([ctl, "-a", us[0].admin_socket, "--json", "stats"],
                                      capture_output=True, text=True).stdout or "{}")
    spliced = stats.get("proxy", {}).get("spliced_bytes", 0)
    # the counters reach the stats at the workers' next tick (500 ms)
    for _ in range(20):
        if spliced >= len(msg):
            break
        time.sleep(0.1)
        stats = json.loads(subprocess.run([ctl, "-a", us[0].admin_socket, "--json", "stats"],
                                          capture_output=True, text=True).stdout or "{}")
        spliced = stats.get("proxy", {}).get("spliced_bytes", 0)
    t.ok(spliced >= len(msg), f"the message moved by splice(2) ({spliced} bytes spliced)")
    subprocess.run([ctl, "-a", us[1].admin_socket, "kick", "user14"], capture_output=True)
    bye = ul.read_until_closed(c.sock)
    t.ok(b"* BYE" in bye, "after a spliced FETCH, a kick still gets a BYE", bye[-200:])

    # -- a stopped backend: a temporary failure, no other backend
    victim_user = next(u for u, b in where.items() if b == bs[2].ip)
    bs[2].stop()
    g, out = raw(us[0].ip, [f"a LOGIN {victim_user} pass\r\n".encode()], b"a ", timeout=15)
    t.ok(b"a NO [UNAVAILABLE]" in out, f"{victim_user}'s backend stopped: NO [UNAVAILABLE]", out)
    bs[2].start()

    # -- a backend that accepts connections and never greets (hung): a login waiting for its
    # greeting is routed again once the backend is down and its users placed elsewhere (here
    # the admin's down and flush; a health check's decision does both), instead of waiting out
    # the 30 s backend timeout.
    def rerouted():
        return json.loads(us[0].usherctl("--json", "stats")[1])["proxy"]["logins_rerouted"]
    hung_user = next(u for u, b in where.items() if b == bs[1].ip)
    before = rerouted()
    bs[1].stop()
    silent = ul.SilentListener(bs[1].ip, ul.IMAP_PORT)
    got = {}

    def hung_login():
        t0 = time.monotonic()
        try:
            got["backend"] = lab.imap_login(us[0].ip, ul.IMAP_PORT, hung_user, timeout=25).backend
        except Exception as e:  # noqa: BLE001 - reported below
            got["error"] = repr(e)
        got["secs"] = time.monotonic() - t0
    th = threading.Thread(target=hung_login)
    try:
        th.start()
        time.sleep(1.5)  # it waits for the greeting by now
        down = us[2].usherctl("down", bs[1].ip)
        flush = us[2].usherctl("flush", bs[1].ip)
        th.join(30)
    finally:
        silent.close()
    us[2].usherctl("up", bs[1].ip)
    bs[1].start()
    t.ok(down[0] == 0 and flush[0] == 0 and
         got.get("backend") not in (None, bs[1].ip) and got["secs"] < 10 and
         rerouted() > before,
         f"a login waiting for a hung backend's greeting: routed again when the backend is taken "
         f"down, logged in on {got.get('backend')} after {got.get('secs', 0):.1f} s",
         f"{got} {down[2]} {flush[2]}")

    # -- a client reset while its login waits for a hung backend's greeting: closed at once (a
    # reset socket is ready for epoll whatever it is asked; waiting out the backend's 30 s
    # would spin a worker meanwhile)
    # a user nobody logged in yet, whose hash says bs[1] (the flush moved the others away)
    on_b1 = next(f"user{n}" for n in range(31, 41)
                 if us[0].status_user(f"user{n}")[:2] == (None, bs[1].ip))
    bs[1].stop()
    silent = ul.SilentListener(bs[1].ip, ul.IMAP_PORT)
    try:
        c = socket.create_connection((us[0].ip, ul.IMAP_PORT), timeout=10)
        c.recv(4096)
        c.sendall(f"a LOGIN {on_b1} {ul.PASSWORD}\r\n".encode())
        time.sleep(0.5)  # waiting for the greeting by now
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()  # a reset
        time.sleep(0.2)
        cpu0 = ul.cpu_seconds(us[0].pid)
        time.sleep(2)
        cpu = ul.cpu_seconds(us[0].pid) - cpu0
    finally:
        silent.close()
        bs[1].start()
    t.ok(cpu < 0.3, f"a client reset while its login waits for a hung backend: usherd used "
         f"{cpu:.2f} s of CPU in the 2 s after (bound 0.3 s)")

    # -- bad input
    g, out = raw(us[0].ip, [b"a LOGIN " + b"x" * 20000 + b"\r\n"], b"BYE")
    t.ok(b"* BYE Line too long" in out, "an overlong line: BYE and close", out[:100])
    g, out = raw(us[0].ip, [b"a FOO\r\n", b"b BAR\r\n", b"c BAZ\r\n"], b"* BYE")
    t.ok(b"Please log in first" in out and b"* BYE Too many invalid commands" in out,
         "too many bad commands: BYE and close", out)
    g, out = raw(us[0].ip, [b"e ENABLE UTF8=ACCEPT\r\n", b"f ENABLE CONDSTORE\r\n",
                            b"g ENABLE QRESYNC\r\n", b"h NOOP\r\n"], b"h OK")
    t.ok(out.count(b"OK ENABLE ignored in non-authenticated state") == 3 and b"h OK" in out,
         "ENABLE before login: ignored with OK, as Dovecot does (not a bad command)", out)
    g, out = raw(us[0].ip, [b"\x00\xff\r\n"], b"BAD")
    t.ok(b"BAD" in out, "binary garbage: BAD, the connection stays", out)
    s = lab.imap_login(us[0].ip, ul.IMAP_PORT, "user12")
    t.ok(s.backend == where["user12"], "usherd still serves logins after the bad input")

    # -- the open-files limit bounds the connections: past it, a BYE rather than a failing
    # accept(). 1000 descriptors, one worker: 256 pipes of two and 256 others kept free, two per
    # connection: room for 116.
    lim_ip = lab.director_ip(4)
    lim = lab.usherd(lim_ip, ring=[lim_ip], backends=bs, nofile=1000,
                     extra_conf=f"[proxy]\nimap_listen = {lim_ip}:{ul.IMAP_PORT}\nworkers = 1\n"
                                f"max_connections_per_ip = 1000\n")
    lim.start()
    with open(lim.log_path, errors="replace") as f:
        log = f.read()
    t.ok("open-files limit (1000) leaves room for 116 proxied connections" in log and
         "raise LimitNOFILE to 200768" in log,
         "a low open-files limit is said at start, with the connections it leaves room for",
         log[-600:])
    socks, greetings = [], []
    try:
        for _ in range(120):
            sk = socket.create_connection((lim_ip, ul.IMAP_PORT), timeout=10)
            socks.append(sk)
            data = b""
            while b"\r\n" not in data:
                part = sk.recv(4096)
                if not part:
                    break
                data += part
            greetings.append(data)
        ok = sum(1 for g in greetings if g.startswith(b"* OK"))
        busy = sum(1 for g in greetings if g.startswith(b"* BYE Too many connections"))
        t.ok(ok == 116 and busy == 4,
             f"120 clients under that limit: 116 greeted, 4 told 'Too many connections' "
             f"({ok} greeted, {busy} refused)")
    finally:
        for sk in socks:
            sk.close()
    time.sleep(0.5)
    s = lab.imap_login(lim_ip, ul.IMAP_PORT, "user12")
    t.ok(s.backend in [b.ip for b in bs], "once they leave, logins go through again")
    lim.stop()

    # -- a graceful stop: no new clients, sessions go on, then a BYE at shutdown_timeout
    held = lab.imap_login(us[1].ip, ul.IMAP_PORT, "user13", keep=True)
    t0 = time.monotonic()
    os.kill(us[1].pid, signal.SIGTERM)
    refused = False
    for _ in range(50):
        try:
            socket.create_connection((us[1].ip, ul.IMAP_PORT), timeout=2).close()
            time.sleep(0.05)
        except (ConnectionRefusedError, ConnectionResetError):
            # Reset: the connect reached the listen queue just as the listener closed (seen
            # under ASan, where the daemon is slower); the client was not served either way.
            refused = True
            break
    typ, _ = held.client.noop()
    t.ok(refused and typ == "OK", "SIGTERM: new clients are refused at once; a session goes on")
    bye = ul.read_until_closed(held.client.sock)
    waited = time.monotonic() - t0
    us[1].proc.wait(timeout=10)
    t.ok(b"* BYE Server shutting down" in bye and 2.5 <= waited <= 8,
         f"after shutdown_timeout (3 s) the session gets a BYE ({waited:.1f} s) and usherd exits",
         bye)

    # -- a second SIGTERM while draining: usherd stops at once, cleanly
    held = lab.imap_login(us[2].ip, ul.IMAP_PORT, "user14", keep=True)
    log_from = os.path.getsize(us[2].log_path)
    t0 = time.monotonic()
    os.kill(us[2].pid, signal.SIGTERM)
    time.sleep(0.5)
    os.kill(us[2].pid, signal.SIGTERM)
    bye = ul.read_until_closed(held.client.sock)
    rc = us[2].proc.wait(timeout=10)
    waited = time.monotonic() - t0
    with open(us[2].log_path, errors="replace") as f:
        f.seek(log_from)
        log = f.read()
    t.ok(rc == 0 and waited < 2.5 and b"* BYE Server shutting down" in bye and
         "stopping now" in log and "CRITICAL" not in log and "WARNING" not in log,
         f"a second SIGTERM while draining: the session gets its BYE and usherd exits 0 at once "
         f"({waited:.1f} s)", f"exit {rc}\n{log[-1500:]}")

    fake_backend_checks(lab, t)


def main():
    if ul.USHERD is None:
        print("1..0 # SKIP set $USHERD")
        return ul.SKIP_STATUS
    return ul.run_test(run, users=40)


if __name__ == "__main__":
    sys.exit(main())
