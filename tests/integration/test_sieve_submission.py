#!/usr/bin/env python3
"""test_sieve_submission.py - ManageSieve and submission clients through usherd to real Dovecot.

A ring of three usherd with ManageSieve (STARTTLS), submission (587, STARTTLS) and submissions
(465, TLS from the first byte) listeners, in front of three Dovecot 2.3 backends with
managesieve and submission services; the backends relay submitted mail to a small SMTP sink of
this test. The clients the project did not write: sieve-connect (ManageSieve, Perl), Python's
smtplib (SMTP with STARTTLS, SMTP_SSL) and curl (both, certificate verified); raw conversations
check what they do not do.

Checked: sieve-connect uploads and lists a script over STARTTLS, on the user's backend (its log
shows the client's address, passed by XCLIENT); AUTHENTICATE "PLAIN" with and without an
initial response, a wrong password answered with the backend's NO, LOGOUT; a SASL response that
is not strict base64 (a literal with a CRLF and a command) refused before any backend sees it;
submission through
each kind of listener reaches the user's backend, which relays the message (the sink receives
it), with AUTH PLAIN and AUTH LOGIN; a wrong password is the backend's 535; MAIL before AUTH is
530. Exits 0 pass, 1 fail, 77 skipped.
"""

import base64
import os
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
import time
import uuid

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import usherlab as ul  # noqa: E402

SIEVE = 10190
SUBMISSION = 10587
SUBMISSIONS = 10465


class SmtpSink(ul.FakeServer):
    """Just enough SMTP to take what the backends relay; keeps each message's data."""

    def __init__(self, ip):
        self.messages = []
        super().__init__(ip, ul.RELAY_PORT)

    def serve(self, c, port):
        f = c.makefile("rb")
        c.sendall(b"220 sink ready\r\n")
        data = None
        for line in f:
            if data is not None:
                if line in (b".\r\n", b".\n"):
                    self.messages.append(b"".join(data))
                    data = None
                    c.sendall(b"250 2.0.0 queued\r\n")
                else:
                    data.append(line)
                continue
            cmd = line[:4].upper()
            if cmd == b"EHLO":
                c.sendall(b"250-sink\r\n250 8BITMIME\r\n")
            elif cmd == b"DATA":
                data = []
                c.sendall(b"354 go on\r\n")
            elif cmd == b"QUIT":
                c.sendall(b"221 bye\r\n")
                break
            else:
                c.sendall(b"250 ok\r\n")


def make_cert(directory):
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-keyout", key, "-out", cert, "-subj", "/CN=usher.test",
                    "-addext", "subjectAltName=DNS:usher.test"], check=True, capture_output=True)
    return cert, key


class Raw:
    def __init__(self, host, port):
        self.s = socket.create_connection((host, port), timeout=15)
        self.buf = b""

    def until(self, marker):
        while marker not in self.buf:
            part = self.s.recv(65536)
            if not part:
                break
            self.buf += part
        out, _, self.buf = self.buf.partition(marker)
        return (out + marker).decode(errors="replace")

    def send(self, data):
        self.s.sendall(data)

    def close(self):
        self.s.close()


def plain(user, password=ul.PASSWORD):
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def logins(b, offset, service):
    """(user, rip) of each login the backend logged for service since offset."""
    out = []
    for line in b.log_since(offset).splitlines():
        if f"{service}-login: Info: Login: user=<" in line:
            user = line.split("user=<", 1)[1].split(">", 1)[0]
            rip = line.split("rip=", 1)[1].split(",", 1)[0] if "rip=" in line else None
            out.append((user, rip))
    return out


def run(lab, t):
    certdir = os.path.join(lab.root, "tls")
    os.makedirs(certdir)
    cert, key = make_cert(certdir)
    sink_ip = f"127.{lab.net}.5.9"
    sink = SmtpSink(sink_ip)
    try:
        run_with_sink(lab, t, cert, key, sink, sink_ip)
    finally:
        sink.close()


def run_with_sink(lab, t, cert, key, sink, sink_ip):
    bs = [lab.dovecot_backend(lab.backend_ip(i), sieve_submission=True, relay_host=sink_ip)
          for i in (1, 2, 3)]
    ring = [lab.director_ip(i) for i in (1, 2, 3)]
    us = [lab.usherd(ip, ring=ring, backends=bs,
                     extra_conf=f"[proxy]\nsieve_listen = {ip}:{SIEVE}\n"
                                f"submission_listen = {ip}:{SUBMISSION}\n"
                                f"submissions_listen = {ip}:{SUBMISSIONS}\n"
                                f"tls_cert = {cert}\ntls_key = {key}\nworkers = 2\n")
          for ip in ring]
    lab.start_all()
    lab.wait_ring_synced(us, timeout=45, via="admin")

    # -- ManageSieve with sieve-connect (STARTTLS, AUTHENTICATE PLAIN), on the user's backend
    script = os.path.join(lab.root, "test.sieve")
    with open(script, "w") as f:
        f.write('require "fileinto";\nif header :contains "subject" "usher" { fileinto "INBOX"; }\n')
    offsets = {b: b.log_size() for b in bs}
    sc = shutil.which("sieve-connect")
    if sc is None:
        t.ok(False, "sieve-connect is installed (tools/deps)")
    else:
        base = [sc, "--server", us[0].ip, "--port", str(SIEVE), "--user", "user3",
                "--passwordfd", "0", "--notlsverify", "--authmech", "PLAIN"]
        up = subprocess.run(base + ["--upload", "--localsieve", script, "--remotesieve", "usher"],
                            input=ul.PASSWORD + "\n", capture_output=True, text=True, timeout=30)
        ls = subprocess.run(base + ["--list"], input=ul.PASSWORD + "\n", capture_output=True,
                            text=True, timeout=30)
        where = us[1].status_user("user3")[0]
        seen = [(b.ip, l) for b in bs for l in logins(b, offsets[b], "managesieve")]
        t.ok(up.returncode == 0 and "usher" in ls.stdout and
             all(ip == where and l[0] == "user3" for ip, l in seen) and len(seen) == 2,
             "sieve-connect (STARTTLS, PLAIN) uploads and lists a script, on user3's backend",
             f"{up.stdout}{up.stderr}{ls.stdout}{ls.stderr} logins {seen} owner {where}")
        t.ok(bool(seen) and all(l[1] == "127.0.0.1" for _, l in seen),
             "the backend logs the client's address (127.0.0.1 by XCLIENT), not usherd's",
             str(seen))

    # -- raw ManageSieve: greeting, AUTHENTICATE with a continuation, a wrong password
    r = Raw(us[1].ip, SIEVE)
    greeting = r.until(b"OK ")
    r.until(b"\r\n")
    r.send(b'AUTHENTICATE "PLAIN"\r\n')
    challenge = r.until(b"\r\n")
    r.send(f'"{plain("user4")}"\r\n'.encode())
    answer = r.until(b"\r\n")
    r.send(b"LISTSCRIPTS\r\n")
    listed = r.until(b"OK ")
    r.close()
    t.ok('"SIEVE"' in greeting and '"STARTTLS"' in greeting and challenge.strip() == '""' and
         answer.startswith("OK") and listed.endswith("OK "),
         "ManageSieve greeting (SIEVE, STARTTLS), AUTHENTICATE \"PLAIN\" with a continuation, "
         "then the backend's session", greeting + challenge + answer + listed)
    offsets = {b: b.log_size() for b in bs}
    r = Raw(us[2].ip, SIEVE)
    r.until(b"OK ")
    r.until(b"\r\n")
    r.send(f'AUTHENTICATE "PLAIN" "{plain("user4", "wrong")}"\r\n'.encode())
    no = r.until(b"\r\n")
    r.send(f'AUTHENTICATE "PLAIN" "{plain("user4")}"\r\nLOGOUT\r\n'.encode())
    ok = r.until(b"\r\n")
    bye = r.until(b"\r\n")
    r.close()
    time.sleep(0.3)
    seen = [l for b in bs for l in logins(b, offsets[b], "managesieve")]
    t.ok(no.startswith("NO") and ok.startswith("OK") and bye.startswith("OK") and
         seen == [("user4", "127.0.0.1")],
         "a wrong password: the backend's NO; the next try on the same connection logs in, "
         "again with the client's address (XCLIENT on the new backend connection)",
         no + ok + bye + str(seen))

    # -- a SASL response in a literal holding a line break and a command: refused before any
    # backend sees it (it would go there from usherd's trusted address)
    offsets = {b: b.log_size() for b in bs}
    evil = f"{plain('user5')}\r\nXCLIENT ADDR=192.0.2.66\r\n".encode()
    r = Raw(us[0].ip, SIEVE)
    r.until(b"OK ")
    r.until(b"\r\n")
    r.send(b'AUTHENTICATE "PLAIN" {%d+}\r\n' % len(evil) + evil + b"\r\n")
    refused = r.until(b"\r\n")
    r.send(f'AUTHENTICATE "PLAIN" "{plain("user5")}"\r\n'.encode())
    ok = r.until(b"\r\n")
    r.close()
    time.sleep(0.3)
    seen = [l for b in bs for l in logins(b, offsets[b], "managesieve")]
    t.ok(refused.startswith("NO") and "base64" in refused and ok.startswith("OK") and
         seen == [("user5", "127.0.0.1")],
         "AUTHENTICATE with a literal that is not base64 (a CRLF and an XCLIENT inside): NO, "
         "nothing reaches a backend; a proper login follows on the same connection",
         refused + ok + str(seen))

    # -- submission through each listener; the backend relays to the sink
    ctx = ssl.create_default_context(cafile=cert)
    ctx.check_hostname = False
    results = []
    for n, (kind, port) in enumerate((("submission+STARTTLS", SUBMISSION),
                                      ("submissions", SUBMISSIONS),
                                      ("submission, AUTH LOGIN", SUBMISSION))):
        user = f"user{5 + n}"
        marker = uuid.uuid4().hex
        offsets = {b: b.log_size() for b in bs}
        if port == SUBMISSIONS:
            c = smtplib.SMTP_SSL(us[n].ip, port, context=ctx, timeout=30)
        else:
            c = smtplib.SMTP(us[n].ip, port, timeout=30)
            c.starttls(context=ctx)
        c.ehlo("client.test")
        if "LOGIN" in kind:
            c.user, c.password = user, ul.PASSWORD
            c.auth("LOGIN", c.auth_login, initial_response_ok=False)
        else:
            c.login(user, ul.PASSWORD)
        c.sendmail(f"{user}@example.org", ["someone@example.net"],
                   f"Subject: usher\r\nX-Marker: {marker}\r\n\r\nhello\r\n")
        c.quit()
        time.sleep(0.3)
        where = us[(n + 1) % 3].status_user(user)[0]
        seen = [(b.ip, l) for b in bs for l in logins(b, offsets[b], "submission")]
        got = any(marker.encode() in m for m in sink.messages)
        results.append((kind, got and len(seen) == 1 and seen[0][0] == where, seen, where))
    # curl (libcurl) as a second client: STARTTLS with the certificate verified, AUTH, a message.
    curl = shutil.which("curl")
    for n, (scheme, port, extra) in enumerate((("smtp", SUBMISSION, ["--ssl-reqd"]),
                                               ("smtps", SUBMISSIONS, []))):
        user = f"user{9 + n}"
        marker = uuid.uuid4().hex
        msg = os.path.join(lab.root, f"curl-{marker}.eml")
        with open(msg, "w") as f:
            f.write(f"Subject: usher\r\nX-Marker: {marker}\r\n\r\nhello from curl\r\n")
        offsets = {b: b.log_size() for b in bs}
        r = (subprocess.run([curl, "-sS", "-m", "30", "--cacert", cert, "--resolve",
                             f"usher.test:{port}:{us[n].ip}", *extra, "-u",
                             f"{user}:{ul.PASSWORD}", "--mail-from", f"{user}@example.org",
                             "--mail-rcpt", "someone@example.net", "-T", msg,
                             f"{scheme}://usher.test:{port}"],
                            capture_output=True, text=True, timeout=40)
             if curl is not None else None)
        time.sleep(0.3)
        where = us[(n + 1) % 3].status_user(user)[0]
        seen = [(b.ip, l) for b in bs for l in logins(b, offsets[b], "submission")]
        got = any(marker.encode() in m for m in sink.messages)
        results.append((f"curl {scheme}", r is not None and r.returncode == 0 and got and
                        len(seen) == 1 and seen[0][0] == where, seen, where,
                        r.stderr.strip() if r is not None else "curl is not installed"))
    bad = [r for r in results if not r[1]]
    t.ok(not bad, "submission (STARTTLS, implicit TLS, AUTH PLAIN and LOGIN; smtplib and curl): "
         "each user logs in on its backend, which relays the message", str(results))

    # -- submission refusals
    r = Raw(us[0].ip, SUBMISSION)
    r.until(b"\r\n")
    r.send(b"EHLO x\r\nMAIL FROM:<a@example.org>\r\n")
    ehlo = r.until(b"250 ")
    ehlo += r.until(b"\r\n")
    mail = r.until(b"\r\n")
    r.send(f"AUTH PLAIN {plain('user8', 'wrong')}\r\n".encode())
    refused = r.until(b"\r\n")
    r.send(b"QUIT\r\n")
    r.until(b"\r\n")
    r.close()
    t.ok("AUTH PLAIN LOGIN" in ehlo and "STARTTLS" in ehlo and mail.startswith("530") and
         refused.startswith("535"),
         "submission: EHLO offers AUTH and STARTTLS; MAIL before AUTH is 530; a wrong password is "
         "the backend's 535", ehlo + mail + refused)


def main():
    if ul.USHERD is None:
        print("1..0 # SKIP set $USHERD")
        return ul.SKIP_STATUS
    if not os.path.exists("/usr/lib/dovecot/managesieve") or \
            not os.path.exists("/usr/lib/dovecot/submission"):
        print("1..0 # SKIP dovecot-managesieved and dovecot-submissiond are not installed")
        return ul.SKIP_STATUS
    return ul.run_test(run, users=20)


if __name__ == "__main__":
    sys.exit(main())
