#!/usr/bin/env python3
"""test_tls_proxy.py - real TLS clients through usherd's proxy to real Dovecot backends.

A ring of three usherd with imap, imaps, pop3 and pop3s listeners and a self-signed certificate
made here with the openssl command (CN usher.test), in front of three Dovecot 2.3 backends.
Python's imaplib and poplib, over Python's ssl module, and curl (libcurl) are the clients; they
verify the certificate and the name.

Checked: IMAPS and POP3S logins, STARTTLS and STLS (offered before TLS, not after), TLS 1.2 or
later; a user's logins over TLS and plaintext, IMAP and POP3, through any usherd reach its one
backend; commands pipelined in plaintext behind STARTTLS are refused (CVE-2011-0411); a client
that is not speaking TLS on imaps is dropped and counted; a kick reaches a TLS session as a BYE;
a slow POP3S client gets all of a big RETR that the backend sent before it closed; a big
APPEND over IMAPS to a stopped backend is held back (backpressure) and completes once it resumes;
SIGHUP loads a renewed certificate for new connections while a session that started before it
goes on; SNI picks the tls_sni certificate (exact name, *.domain), others get tls_cert. Exits 0 pass, 1 fail, 77 skipped.
"""

import imaplib
import json
import os
import poplib
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import usherlab as ul  # noqa: E402

IMAPS_PORT = 10993
POP3S_PORT = 10995
NAME = "usher.test"


def make_cert(directory, tag, name=NAME, base=""):
    cert = os.path.join(directory, base + "cert.pem")
    key = os.path.join(directory, base + "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-keyout", key + ".new", "-out", cert + ".new", "-subj", f"/CN={name}/O={tag}",
                    "-addext", f"subjectAltName=DNS:{name}"],
                   check=True, capture_output=True)
    os.replace(key + ".new", key)
    os.replace(cert + ".new", cert)
    return cert, key


def client_context(cafile):
    ctx = ssl.create_default_context(cafile=cafile)
    return ctx


class _IMAPS(imaplib.IMAP4_SSL):
    """IMAP4_SSL that verifies the name usher.test while connecting to a loopback address."""

    def _create_socket(self, timeout):
        sock = socket.create_connection((self.host, self.port), timeout)
        return self.ssl_context.wrap_socket(sock, server_hostname=NAME)


class _IMAP(imaplib.IMAP4):
    def starttls_named(self, ctx):
        # imaplib's starttls() passes self.host as the name; ours is a certificate for NAME.
        typ, dat = self._simple_command("STARTTLS")
        if typ != "OK":
            raise imaplib.IMAP4.error("STARTTLS failed")
        self.sock = ctx.wrap_socket(self.sock, server_hostname=NAME)
        self.file = self.sock.makefile("rb")
        self._tls_established = True
        self._get_capabilities()


class _POP3(poplib.POP3):
    def stls_named(self, ctx):
        # poplib's stls() passes self.host as the name; ours is a certificate for NAME.
        resp = self._shortcmd("STLS")
        self.sock = ctx.wrap_socket(self.sock, server_hostname=NAME)
        self.file = self.sock.makefile("rb")
        self._tls_established = True
        return resp


class _POP3S(poplib.POP3_SSL):
    def _create_socket(self, timeout):
        sock = socket.create_connection((self.host, self.port), timeout)
        return self.context.wrap_socket(sock, server_hostname=NAME)


def stats(u):
    r = subprocess.run([os.environ.get("USHERCTL", "usherctl"), "-a", u.admin_socket, "--json",
                        "stats"], capture_output=True, text=True, check=True)
    return json.loads(r.stdout)["proxy"]


def run(lab, t):
    certdir = os.path.join(lab.root, "tls")
    os.makedirs(certdir)
    cert, key = make_cert(certdir, "first")
    ctx = client_context(cert)
    other_cert, other_key = make_cert(certdir, "other", "other.test", "other-")
    wild_cert, wild_key = make_cert(certdir, "wild", "*.wild.test", "wild-")
    # a wildcard entry with the key in the certificate's file
    with open(wild_cert, "a") as f, open(wild_key) as k:
        f.write(k.read())
    bs = [lab.dovecot_backend(lab.backend_ip(i)) for i in (1, 2, 3)]
    ring = [lab.director_ip(i) for i in (1, 2, 3)]
    us = [lab.usherd(ip, ring=ring, backends=bs,
                     extra_conf=f"[proxy]\nimap_listen = {ip}:{ul.IMAP_PORT}\n"
                                f"pop3_listen = {ip}:{ul.POP3_PORT}\n"
                                f"imaps_listen = {ip}:{IMAPS_PORT}\n"
                                f"pop3s_listen = {ip}:{POP3S_PORT}\n"
                                f"tls_cert = {cert}\ntls_key = {key}\nworkers = 2\n"
                                f"tls_sni = other.test:{other_cert}:{other_key} "
                                f"*.wild.test:{wild_cert}\n")
          for ip in ring]
    lab.start_all()
    lab.wait_ring_synced(us, timeout=45, via="admin")

    # -- one backend per user over every kind of connection
    bad = []
    versions = set()
    for n in range(1, 11):
        user = f"user{n}"
        seen = {}
        c = _IMAPS(us[n % 3].ip, IMAPS_PORT, ssl_context=ctx, timeout=10)
        versions.add(c.sock.version())
        c.login(user, ul.PASSWORD)
        seen["imaps"] = ul.imap_id(c).get("x-lab-backend")
        c.logout()
        c = _IMAP(us[(n + 1) % 3].ip, ul.IMAP_PORT, timeout=10)
        pre = set(c.capabilities)
        c.starttls_named(ctx)
        post = set(c.capabilities)
        c.login(user, ul.PASSWORD)
        seen["starttls"] = ul.imap_id(c).get("x-lab-backend")
        c.logout()
        if "STARTTLS" not in pre or "STARTTLS" in post:
            bad.append(f"{user}: STARTTLS offered before TLS {pre}, after {post}")
        seen["imap"] = lab.imap_login(us[(n + 2) % 3].ip, ul.IMAP_PORT, user).backend
        offsets = {b: b.log_size() for b in bs}
        p = _POP3S(us[n % 3].ip, POP3S_PORT, context=ctx, timeout=10)
        local = p.sock.getsockname()
        p.user(user)
        p.pass_(ul.PASSWORD)
        p.quit()
        seen["pop3s"] = lab.find_login_backend(offsets, user, local, "pop3")
        offsets = {b: b.log_size() for b in bs}
        p = _POP3(us[(n + 1) % 3].ip, ul.POP3_PORT, timeout=10)
        capa = p.capa()
        p.stls_named(ctx)
        local = p.sock.getsockname()
        p.user(user)
        p.pass_(ul.PASSWORD)
        p.quit()
        seen["stls"] = lab.find_login_backend(offsets, user, local, "pop3")
        if "STLS" not in capa:
            bad.append(f"{user}: CAPA without STLS: {capa}")
        if len(set(seen.values())) != 1 or None in seen.values():
            bad.append(f"{user}: {seen}")
    t.ok(not bad, "10 users over IMAPS, IMAP STARTTLS, plain IMAP, POP3S and POP3 STLS through "
         "the three usherd: each reaches one backend; STARTTLS/STLS offered before TLS only",
         "\n".join(bad))
    t.ok(versions <= {"TLSv1.2", "TLSv1.3"} and versions,
         f"the certificate verifies for {NAME}; TLS version {sorted(versions)}")

    # -- a slow POP3S client gets every byte the backend sent before it closed (TLS is copied,
    # not spliced: the backend's end can come while a whole read of it waits in usherd)
    got, size = lab.slow_pop3_retr(us[2].ip, POP3S_PORT, "user30",
                                   wrap=lambda c: ctx.wrap_socket(c, server_hostname=NAME))
    t.ok(got.endswith(b"\r\n.\r\n+OK Logging out.\r\n") and len(got) > size,
         f"a slow POP3S client, RETR of a {size >> 20} MiB message and QUIT pipelined: the "
         f"backend closed first, the client still got all of it ({len(got)} bytes) and QUIT's "
         f"answer", got[-300:])

    # -- backpressure on a TLS leg: a 24 MiB APPEND while the user's backend is stopped. usherd
    # stops reading the client once 256 KiB wait for the backend (it used to read TLS on
    # regardless, and dropped the session at 4 MiB queued); resumed, the APPEND completes.
    user = "user31"
    c = ctx.wrap_socket(socket.create_connection((us[0].ip, IMAPS_PORT), timeout=30),
                        server_hostname=NAME)
    pending = b""
    while b"\r\n" not in pending:
        pending += c.recv(4096)
    c.sendall(f"a LOGIN {user} {ul.PASSWORD}\r\n".encode())
    pending = b""
    while b"a OK" not in pending and b"a NO" not in pending:
        pending += c.recv(4096)
    backend = next(b for b in bs if b.ip == us[0].status_user(user)[0])
    stopped = [p for p in backend.processes()
               if ul._cmdline(p).endswith("/imap") and ul.stop_process(p)]
    size = 24 << 20
    sent = {}

    def append():
        try:
            c.sendall(b"b APPEND INBOX {%d+}\r\n" % size)
            left = size - 16
            c.sendall(b"Subject: big\r\n\r\n")
            while left > 0:
                part = (b"y" * 1022 + b"\r\n") * min(1024, left // 1024)
                if not part:
                    part = b"y" * left
                c.sendall(part)
                left -= len(part)
            c.sendall(b"\r\n")
            sent["ok"] = True
        except OSError as e:
            sent["error"] = repr(e)
    th = threading.Thread(target=append)
    try:
        th.start()
        time.sleep(4)  # the backend's socket and usherd's queue are full by now
        alive = th.is_alive()
    finally:
        for p in stopped:
            os.kill(p, signal.SIGCONT)
    th.join(60)
    answer = b""
    try:
        while b"b OK" not in answer and b"b NO" not in answer and b"b BAD" not in answer:
            part = c.recv(4096)
            if not part:
                break
            answer += part
    except OSError as e:
        answer += repr(e).encode()
    c.close()
    t.ok(stopped and alive and sent.get("ok") and b"b OK" in answer,
         "a 24 MiB APPEND over IMAPS while the backend is stopped: the client is held back "
         "(backpressure), and once the backend resumes the APPEND completes",
         f"stopped {stopped}, sender alive after 4 s: {alive}, {sent}, {answer[-300:]!r}")

    # -- curl (libcurl), a client library usherd's authors did not write, over each TLS kind:
    # it verifies the certificate for NAME, logs in, and asks the backend who it is.
    curl = shutil.which("curl")
    if curl is None:
        t.ok(False, "curl is installed (tools/deps)")
    else:
        bad = []
        for n in range(11, 15):
            user = f"user{n}"
            u = us[n % 3]
            for scheme, port, extra in (("imaps", IMAPS_PORT, []),
                                        ("imap", ul.IMAP_PORT, ["--ssl-reqd"]),
                                        ("pop3s", POP3S_PORT, []),
                                        ("pop3", ul.POP3_PORT, ["--ssl-reqd"])):
                imap = scheme.startswith("imap")
                r = subprocess.run([curl, "-sS", "-m", "20", "--cacert", cert,
                                    "--resolve", f"{NAME}:{port}:{u.ip}", "-u",
                                    f"{user}:{ul.PASSWORD}", *extra,
                                    *(["-X", "ID NIL"] if imap else []),
                                    f"{scheme}://{NAME}:{port}/"],
                                   capture_output=True, text=True, timeout=30)
                backend = (ul.parse_imap_id(r.stdout.encode()).get("x-lab-backend")
                           if imap else None)
                if r.returncode != 0 or (imap and backend is None):
                    bad.append(f"{user} {scheme}: rc {r.returncode} {r.stderr.strip()} "
                               f"{r.stdout[-200:]}")
                elif imap and backend != u.status_user(user)[0]:
                    bad.append(f"{user} {scheme}: reached {backend}, the ring says "
                               f"{u.status_user(user)[0]}")
        t.ok(not bad, "curl over IMAPS, IMAP STARTTLS, POP3S and POP3 STLS (certificate verified "
             "for the name): logged in, IMAP on the user's backend", "\n".join(bad))

    # -- SNI: the certificate for the name the client asks for
    def sni_cert(name, cafile, check=True):
        c = ssl.create_default_context(cafile=cafile)
        c.check_hostname = check
        try:
            with c.wrap_socket(socket.create_connection((us[0].ip, IMAPS_PORT), timeout=10),
                               server_hostname=name) as s:
                s.recv(4096)
                return dict(x[0] for x in s.getpeercert()["subject"]).get("organizationName")
        except ssl.SSLError as e:
            return f"refused: {e}"
    got = {n: sni_cert(n, ca) for n, ca in (("other.test", other_cert), ("a.wild.test", wild_cert),
                                            (NAME, cert), ("OTHER.test", other_cert))}
    t.ok(got == {"other.test": "other", "a.wild.test": "wild", NAME: "first",
                 "OTHER.test": "other"},
         "SNI: tls_sni names (exact, wildcard, any case) get their certificates, others tls_cert",
         str(got))
    g = sni_cert("b.a.wild.test", cert, check=False)
    t.ok(g == "first", "a wildcard covers one label only (b.a.wild.test gets tls_cert)", g)

    # -- plaintext pipelined behind STARTTLS
    s = socket.create_connection((us[0].ip, ul.IMAP_PORT), timeout=10)
    s.recv(4096)
    s.sendall(b"a STARTTLS\r\nb LOGIN user1 pass\r\n")
    out = b""
    try:
        while True:
            part = s.recv(4096)
            if not part:
                break
            out += part
    except socket.timeout:
        pass
    s.close()
    t.ok(b"* BYE" in out and b"Begin TLS" not in out,
         "commands pipelined in plaintext behind STARTTLS: BYE, no TLS (CVE-2011-0411)", out)

    # -- not TLS on a TLS port
    before = stats(us[0])
    s = socket.create_connection((us[0].ip, IMAPS_PORT), timeout=10)
    s.sendall(b"a LOGIN user1 pass\r\n")
    try:
        out = s.recv(4096)
    except (socket.timeout, ConnectionResetError):
        out = b""
    s.close()
    after = stats(us[0])
    t.ok(b"OK" not in out and after["tls_failures"] == before["tls_failures"] + 1,
         "plaintext on imaps: dropped without a greeting, counted in tls_failures", out)

    # -- a kick reaches a TLS session
    c = _IMAPS(us[1].ip, IMAPS_PORT, ssl_context=ctx, timeout=10)
    c.login("user5", ul.PASSWORD)
    r = subprocess.run([os.environ.get("USHERCTL", "usherctl"), "-a", us[2].admin_socket, "kick",
                        "user5"], capture_output=True, text=True)
    bye = ul.read_until_closed(c.sock)
    t.ok(r.returncode == 0 and b"* BYE" in bye, "a kick ends an IMAPS session with a BYE", bye)

    # -- a renewed certificate, loaded by SIGHUP; a session from before goes on
    old = _IMAPS(us[0].ip, IMAPS_PORT, ssl_context=ctx, timeout=10)
    old.login("user6", ul.PASSWORD)
    old_der = old.sock.getpeercert(binary_form=True)
    cert2, _ = make_cert(certdir, "second")
    ctx2 = client_context(cert2)
    os.kill(us[0].pid, signal.SIGHUP)
    new_der = None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            c = _IMAPS(us[0].ip, IMAPS_PORT, ssl_context=ctx2, timeout=10)
            new_der = c.sock.getpeercert(binary_form=True)
            c.logout()
            break
        except ssl.SSLError:
            time.sleep(0.1)  # still the old certificate
    typ, _ = old.noop()
    old.logout()
    t.ok(new_der is not None and new_der != old_der and typ == "OK",
         "SIGHUP: new connections get the renewed certificate; a session from before still works")


def main():
    if ul.USHERD is None:
        print("1..0 # SKIP set $USHERD")
        return ul.SKIP_STATUS
    if shutil.which("openssl") is None:
        print("1..0 # SKIP the openssl command is missing (Debian package openssl)")
        return ul.SKIP_STATUS
    return ul.run_test(run, users=40)


if __name__ == "__main__":
    sys.exit(main())
