#!/usr/bin/env python3
"""test_lmtp_proxy.py - real LMTP clients through usherd to real Dovecot LMTP backends.

A ring of three usherd, each with an LMTP listener (and one with a UNIX socket), in front of
three Dovecot 2.3 backends. The backends share one mail root (as NFS would), so a message is
checked in the recipient's Maildir, and which backend saved it in that backend's own log.
swaks (LMTP, many recipients) and Python's smtplib.LMTP (one recipient: it reads a single reply
after DATA) are the clients the project did not write; raw conversations check what they cannot
do (pipelining, BDAT, a backend lost between RCPT and DATA and during DATA).

Checked: a message to 50 recipients over three backends arrives once in each mailbox, each
saved by the backend the ring assigns to its user, the replies per recipient; a +detail routes
as its user; an unknown user is refused by its backend's own 550; a stopped backend gives 4xx
for exactly its recipients at RCPT, and when it dies after RCPT or in the middle of the body the
others are still delivered (2xx) and its own get 4xx (no loss, no duplicate), and the MTA's
retry delivers them once; a user moved during a delivery; a 50 MB message with bounded memory;
an MTA that gave up (its message's end reached usherd behind its FIN, usherd being stopped):
not delivered, so its retry cannot store it twice; the same bytes from `printf ... | nc`; a
backend stopped (SIGSTOP) during a message: its bytes wait in a spool file while the client and
the other backend go on, the other recipient's answer comes at once, and if the MTA gives up
meanwhile, that rest is never sent; BDAT chunks
(dot-stuffed on the way), BDAT that no transaction takes (skipped, one answer) or without a size
(421, closed); a backend whose recipients were all refused is reset (RSET) before the next
message on the connection; a flood of NOOPs pipelined behind an answer that is owed waits unread
(bounded memory); pipelined commands answered in order; MAIL parameters of extensions
not offered; bad commands; a spool directory that does not exist (usherd refuses to start);
the UNIX socket; the counters in usherctl stats. Exits 0 pass, 1 fail, 77 skipped.
"""

import glob
import json
import os
import smtplib
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import usherlab as ul  # noqa: E402

DOMAIN = "example.org"


def mailbox_count(lab, user, marker):
    """Messages in user's INBOX (shared mail root) holding marker."""
    n = 0
    for path in glob.glob(os.path.join(lab.mail_root, user, "Maildir", "new", "*")) + \
            glob.glob(os.path.join(lab.mail_root, user, "Maildir", "cur", "*")):
        with open(path, "rb") as f:
            if marker.encode() in f.read():
                n += 1
    return n


def saved_on(bs, offsets, user):
    """Backends whose log shows an LMTP save for user since offsets."""
    out = []
    for b in bs:
        log = b.log_since(offsets[b])
        if any(f"lmtp({user})" in line and "saved mail to" in line for line in log.splitlines()):
            out.append(b.ip)
    return out


class Raw:
    """A raw LMTP conversation: send lines, read replies (one reply = up to its last line)."""

    def __init__(self, host, port):
        self.s = socket.create_connection((host, port), timeout=20)
        self.buf = b""
        self.reply()  # greeting

    def send(self, data):
        self.s.sendall(data)

    def line(self):
        while b"\r\n" not in self.buf:
            part = self.s.recv(65536)
            if not part:
                raise EOFError("closed")
            self.buf += part
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode()

    def reply(self):
        lines = [self.line()]
        while len(lines[-1]) > 3 and lines[-1][3] == "-":
            lines.append(self.line())
        return lines[-1]

    def close(self):
        self.s.close()


class FakeLmtp(ul.FakeServer):
    """An LMTP backend (not Dovecot) that answers every command at once and 250 for each
    recipient the moment it has a message's terminator. With pause, it reads the body slowly:
    64 KiB every pause seconds through a small receive buffer, so that usherd holds what it has
    not taken yet. With data_delay, it answers DATA that many seconds late."""

    def __init__(self, ip, port, pause=0.0, data_delay=0.0):
        self.pause = pause
        self.data_delay = data_delay
        self.saved = 0
        super().__init__(ip, port, rcvbuf=16384 if pause else None)

    def serve(self, c, port):
        buf, rcpts = b"", 0
        c.sendall(b"220 fake LMTP\r\n")
        while not self.stop:
            while b"\r\n" not in buf:
                data = c.recv(4096)
                if not data:
                    return
                buf += data
            line, buf = buf.split(b"\r\n", 1)
            verb = line[:4].upper()
            if verb == b"LHLO":
                c.sendall(b"250-fake\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES\r\n")
            elif verb == b"MAIL":
                rcpts = 0
                c.sendall(b"250 2.1.0 OK\r\n")
            elif verb == b"RCPT":
                rcpts += 1
                c.sendall(b"250 2.1.5 OK\r\n")
            elif verb == b"DATA":
                time.sleep(self.data_delay)
                c.sendall(b"354 go on\r\n")
                tail, buf = buf[-5:], b""
                while tail != b"\r\n.\r\n":
                    time.sleep(self.pause)
                    data = c.recv(65536)
                    if not data:
                        return
                    tail = (tail + data)[-5:]
                self.saved += 1
                c.sendall(b"250 2.0.0 saved\r\n" * rcpts)
            elif verb in (b"RSET", b"NOOP"):
                c.sendall(b"250 2.0.0 OK\r\n")
            elif verb == b"QUIT":
                c.sendall(b"221 2.0.0 Bye\r\n")
                return
            else:
                c.sendall(b"502 5.5.1 not here\r\n")


def swaks(target, rcpts, marker, sender=f"sender@{DOMAIN}"):
    """Delivers one message with swaks; returns ({rcpt: RCPT reply code},
    {rcpt: reply code after the body}, swaks' transcript)."""
    where = ["--socket", target] if target.startswith("/") else ["--server", target]
    r = subprocess.run(["swaks", "--protocol", "LMTP", *where, "--to", ",".join(rcpts),
                        "--from", sender, "--header", f"X-Marker: {marker}", "--body", "hello",
                        "--timeout", "60"],
                       capture_output=True, text=True, timeout=120)
    at_rcpt, final, current, accepted, after_dot = {}, {}, None, [], False
    for line in r.stdout.splitlines():
        if line.startswith(" -> RCPT TO:<"):
            current = line[len(" -> RCPT TO:<"):].rstrip(">")
        elif line.startswith(" -> .") and line.strip() == "-> .":
            after_dot = True
        elif line[:3] in ("<- ", "<**") and current is not None and not after_dot and \
                current not in at_rcpt:
            at_rcpt[current] = int(line[4:7])
            if at_rcpt[current] // 100 == 2:
                accepted.append(current)
        elif line[:3] in ("<- ", "<**") and after_dot and len(final) < len(accepted):
            final[accepted[len(final)]] = int(line[4:7])
    return at_rcpt, final, r.stdout


def stats(u):
    r = subprocess.run([os.environ.get("USHERCTL", "usherctl"), "-a", u.admin_socket, "--json",
                        "stats"], capture_output=True, text=True, check=True)
    return json.loads(r.stdout)["proxy"]


def run(lab, t):
    # One mail domain: the users log in as "user1" and get mail as user1@example.org. The
    # backends cut the domain (auth_username_format), usherd routes the same name.
    bs = [lab.dovecot_backend(lab.backend_ip(i), extra_conf="auth_username_format = %Ln\n")
          for i in (1, 2, 3)]
    ring = [lab.director_ip(i) for i in (1, 2, 3)]
    sock = os.path.join(lab.root, "lmtp.sock")
    us = [lab.usherd(ip, ring=ring, backends=bs,
                     extra_conf=f"[proxy]\nlmtp_listen = {ip}:{ul.LMTP_PORT}\nworkers = 2\n"
                                f"lmtp_user_format = %Ln\n" +
                                (f"lmtp_socket = {sock}\n" if n == 0 else ""))
          for n, ip in enumerate(ring)]
    lab.start_all()
    lab.wait_ring_synced(us, timeout=45, via="admin")

    # -- 50 recipients over three backends, one message
    marker = uuid.uuid4().hex
    rcpts = [f"user{n}@{DOMAIN}" for n in range(1, 51)]
    offsets = {b: b.log_size() for b in bs}
    at_rcpt, final, out = swaks(f"{us[0].ip}:{ul.LMTP_PORT}", rcpts, marker)
    # Dovecot's log process writes the save lines a moment after the replies.
    ul.poll_until(lambda: all(saved_on(bs, offsets, f"user{n}") for n in range(1, 51)), 10)
    # Where the ring put each user, asked of another usherd than the one that delivered.
    owner = {f"user{n}": us[n % 3].status_user(f"user{n}")[0] for n in range(1, 51)}
    bad = []
    for n in range(1, 51):
        user = f"user{n}"
        count = mailbox_count(lab, user, marker)
        where = saved_on(bs, offsets, user)
        if count != 1 or where != [owner[user]]:
            bad.append(f"{user}: {count} copies, saved on {where}, owner {owner[user]}")
    t.ok(not bad and len(final) == 50 and all(c == 250 for c in final.values()),
         "swaks, a message to 50 recipients over three backends: 50 replies after the body, "
         "once in each mailbox, each saved by its user's backend", out[-2000:] + "\n".join(bad))
    t.ok(len(set(owner.values())) == 3, "the 50 users are spread over the three backends")

    # -- +detail, an unknown user (refused by its backend), through another usherd
    marker = uuid.uuid4().hex
    offsets = {b: b.log_size() for b in bs}
    at_rcpt, final, out = swaks(f"{us[1].ip}:{ul.LMTP_PORT}",
                                [f"user7+box@{DOMAIN}", f"nosuch@{DOMAIN}"], marker)
    ul.poll_until(lambda: saved_on(bs, offsets, "user7"), 10)
    t.ok(mailbox_count(lab, "user7", marker) == 1 and saved_on(bs, offsets, "user7") ==
         [owner["user7"]], "user7+box@ is delivered to user7 on user7's backend", out[-1500:])
    t.ok(at_rcpt.get(f"nosuch@{DOMAIN}") == 550 and final == {f"user7+box@{DOMAIN}": 250},
         "an unknown user: the backend's own 550 for that recipient only", out[-1500:])

    # -- pipelining: replies in order
    r = Raw(us[2].ip, ul.LMTP_PORT)
    r.send(b"LHLO test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<user1@example.org>\r\n"
           b"RCPT TO:<user2@example.org>\r\nRCPT TO:<user3@example.org>\r\nDATA\r\n")
    got = [r.reply() for _ in range(6)]
    marker = uuid.uuid4().hex
    r.send(f"Subject: piped\r\nX-Marker: {marker}\r\n\r\n..dot line\r\n.\r\n".encode())
    got += [r.reply() for _ in range(3)]
    r.send(b"QUIT\r\n")
    got.append(r.reply())
    r.close()
    codes = [g[:3] for g in got]
    t.ok(codes == ["250", "250", "250", "250", "250", "354", "250", "250", "250", "221"],
         "pipelined LHLO, MAIL, three RCPT and DATA: answered in order, one reply per recipient "
         "after the body", "\n".join(got))
    t.ok(all(mailbox_count(lab, f"user{n}", marker) == 1 for n in (1, 2, 3)),
         "the pipelined message arrived once for each")

    # -- DATA pipelined behind recipients the backends refuse: usherd sends DATA behind the
    # RCPTs, so it must turn the backends' refusals into the right answers
    r = Raw(us[2].ip, ul.LMTP_PORT)
    r.send(b"LHLO test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<nosuch@example.org>\r\n"
           b"RCPT TO:<nosuch2@example.org>\r\nDATA\r\nRSET\r\n")
    got = [r.reply() for _ in range(6)]
    marker = uuid.uuid4().hex
    r.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<nosuch@example.org>\r\n"
           b"RCPT TO:<user6@example.org>\r\nDATA\r\n")
    got += [r.reply() for _ in range(4)]
    r.send(f"Subject: half refused\r\nX-Marker: {marker}\r\n\r\nbody\r\n.\r\n".encode())
    got.append(r.reply())
    r.send(b"QUIT\r\n")
    got.append(r.reply())
    r.close()
    codes = [g[:3] for g in got]
    t.ok(codes == ["250", "250", "550", "550", "503", "250",
                   "250", "550", "250", "354", "250", "221"] and
         mailbox_count(lab, "user6", marker) == 1,
         "pipelined DATA after two refused recipients: 503, the session goes on; after one "
         "refused and one accepted: 354 and one answer after the body", "\n".join(got))

    # -- a backend whose every recipient was refused took MAIL and no message: it is reset
    # before the next message on the same connection (else it answers that MAIL with "503 MAIL
    # already given", and its user's next message fails)
    refusing = us[2].status_user("nosuch")[0]
    there = next(u for u, b in owner.items() if b == refusing)
    other = next(u for u, b in owner.items() if b != refusing)
    m1, m2 = uuid.uuid4().hex, uuid.uuid4().hex
    r = Raw(us[2].ip, ul.LMTP_PORT)
    r.send(f"LHLO test\r\nMAIL FROM:<a@{DOMAIN}>\r\nRCPT TO:<nosuch@{DOMAIN}>\r\n"
           f"RCPT TO:<{other}@{DOMAIN}>\r\nDATA\r\n".encode())
    got = [r.reply() for _ in range(5)]
    r.send(f"Subject: one\r\nX-Marker: {m1}\r\n\r\nbody\r\n.\r\n".encode())
    got.append(r.reply())
    r.send(f"MAIL FROM:<a@{DOMAIN}>\r\nRCPT TO:<{there}@{DOMAIN}>\r\nDATA\r\n".encode())
    got += [r.reply() for _ in range(3)]
    r.send(f"Subject: two\r\nX-Marker: {m2}\r\n\r\nbody\r\n.\r\nQUIT\r\n".encode())
    got += [r.reply(), r.reply()]
    r.close()
    t.ok([g[:3] for g in got] == ["250", "250", "550", "250", "354", "250",
                                  "250", "250", "354", "250", "221"] and
         mailbox_count(lab, other, m1) == 1 and mailbox_count(lab, there, m2) == 1,
         "a message whose only recipient on one backend was refused, then a message to another "
         "user of that backend on the same connection: both delivered", "\n".join(got))

    # -- BDAT where no transaction takes it: one answer per chunk, its bytes never commands
    r = Raw(us[2].ip, ul.LMTP_PORT)
    r.send(f"LHLO test\r\nMAIL FROM:<a@{DOMAIN}>\r\nRCPT TO:<nosuch@{DOMAIN}>\r\n".encode())
    got = [r.reply() for _ in range(3)]
    chunk = b"QUIT\r\nQUIT\r\n"
    r.send(b"BDAT %d LAST\r\n%sNOOP\r\n" % (len(chunk), chunk))  # every recipient refused
    r.send(b"BDAT %d\r\n%sNOOP\r\n" % (len(chunk), chunk))  # no transaction
    r.send(b"BDAT %d NOW\r\n%sNOOP\r\n" % (len(chunk), chunk))  # a syntax error, a size
    got += [r.reply() for _ in range(6)]
    # a bad first chunk ends the message: the next chunk is not delivered as if it were whole
    r.send(f"MAIL FROM:<a@{DOMAIN}>\r\nRCPT TO:<{other}@{DOMAIN}>\r\n".encode())
    r.send(b"BDAT %d NOW\r\n%sBDAT 3 LAST\r\nabcNOOP\r\n" % (len(chunk), chunk))
    got += [r.reply() for _ in range(5)]
    r.send(b"BDAT many\r\n" + chunk)  # no size: the stream is lost
    got += [r.reply(), r.reply()]
    r.s.settimeout(5)
    try:
        closed = r.s.recv(100) == b""
    except OSError:
        closed = False
    r.close()
    t.ok([g[:3] for g in got] == ["250", "250", "550", "503", "250", "503", "250", "501", "250",
                                  "250", "250", "501", "503", "250", "501", "421"] and closed,
         "BDAT after every recipient was refused, outside a transaction and with junk after "
         "its size: one answer each, the chunk's bytes are not run as commands; a bad first "
         "chunk ends the message (the next chunk gets 503); BDAT without a size: 501, 421 and "
         "the close", "\n".join(got))

    # -- BDAT chunks (turned into one DATA, dot-stuffed)
    marker = uuid.uuid4().hex
    body = f"Subject: chunks\r\nX-Marker: {marker}\r\n\r\n.starts with a dot\r\n".encode()
    r = Raw(us[0].ip, ul.LMTP_PORT)
    r.send(b"LHLO test\r\n")
    caps = r.reply()
    r.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<user4@example.org>\r\n"
           b"RCPT TO:<user5@example.org>\r\n")
    got = [r.reply() for _ in range(3)]
    r.send(b"BDAT %d\r\n" % 20 + body[:20])
    got.append(r.reply())
    r.send(b"BDAT %d LAST\r\n" % (len(body) - 20) + body[20:])
    got += [r.reply(), r.reply()]
    r.close()
    files = glob.glob(os.path.join(lab.mail_root, "user4", "Maildir", "*", "*"))
    stuffed_ok = any(marker.encode() in open(f, "rb").read() and
                     b"\n.starts with a dot" in open(f, "rb").read() for f in files)
    t.ok([g[:3] for g in got] == ["250", "250", "250", "250", "250", "250"] and
         mailbox_count(lab, "user5", marker) == 1 and stuffed_ok,
         "BDAT in two chunks to two users: delivered intact (a line starting with '.')",
         "\n".join(got))

    # -- bad commands
    r = Raw(us[0].ip, ul.LMTP_PORT)
    r.send(b"RCPT TO:<user1@example.org>\r\nFOO\r\nMAIL FROM:<a@example.org>\r\n"
           b"RCPT TO:<" + b"x" * 5000 + b">\r\nLHLO x\r\nRCPT TO:user1\r\nNOOP\r\n")
    got = [r.reply() for _ in range(7)]
    r.close()
    t.ok([g[:3] for g in got] == ["503", "500", "503", "500", "250", "501", "250"],
         "RCPT before MAIL, an unknown command, MAIL before LHLO, an overlong line, a bad "
         "address: refused; the session goes on", "\n".join(got))
    r = Raw(us[0].ip, ul.LMTP_PORT)
    r.send(b"LHLO x\r\nMAIL FROM:<a@example.org> FOO=bar\r\nMAIL FROM:<a@example.org> SIZE=100\r\n"
           b"MAIL FROM:<> BODY=8BITMIME\r\nRCPT TO:<user1@example.org>\r\nRSET\r\n")
    got = [r.reply() for _ in range(6)]
    r.close()
    t.ok([g[:3] for g in got] == ["250", "555", "555", "250", "250", "250"],
         "MAIL with a parameter of an extension usherd does not offer (FOO, SIZE without SIZE "
         "in LHLO): 555 at MAIL, as Dovecot; BODY=8BITMIME is fine", "\n".join(got))

    # -- the recipient limit: 1000 per message, the 1001st gets 452, the session goes on
    r = Raw(us[0].ip, ul.LMTP_PORT)
    r.send(b"LHLO test\r\nMAIL FROM:<a@example.org>\r\n" +
           b"RCPT TO:<user1@example.org>\r\n" * 1001 + b"RSET\r\nNOOP\r\n")
    got = [r.reply() for _ in range(2 + 1001 + 2)]
    r.close()
    codes = [g[:3] for g in got]
    t.ok(codes[2:1002] == ["250"] * 1000 and codes[1002] == "452" and codes[1003:] == ["250", "250"],
         "1001 recipients in one message: the first 1000 accepted, the last 452 4.5.3; RSET goes on",
         f"{codes[1000:]}")

    # -- the UNIX socket
    marker = uuid.uuid4().hex
    with smtplib.LMTP(sock, timeout=30) as c:
        refused = c.sendmail(f"sender@{DOMAIN}", [f"user8@{DOMAIN}"],
                             f"Subject: unix\r\nX-Marker: {marker}\r\n\r\nhello\r\n")
    t.ok(not refused and mailbox_count(lab, "user8", marker) == 1,
         "delivery over the UNIX socket (lmtp_socket)")

    # -- a backend lost after RCPT, and one lost during the body
    victim = bs[2]
    on_victim = [u for u, b in owner.items() if b == victim.ip][:3]
    elsewhere = [u for u, b in owner.items() if b != victim.ip][:3]
    for stage in ("after RCPT", "during the body"):
        marker = uuid.uuid4().hex
        r = Raw(us[1].ip, ul.LMTP_PORT)
        r.send(b"LHLO test\r\nMAIL FROM:<a@example.org>\r\n")
        got = [r.reply(), r.reply()]
        for u in on_victim + elsewhere:
            r.send(f"RCPT TO:<{u}@{DOMAIN}>\r\n".encode())
            got.append(r.reply())
        if stage == "after RCPT":
            victim.stop()
        r.send(b"DATA\r\n")
        got.append(r.reply())
        r.send(f"Subject: lost\r\nX-Marker: {marker}\r\n\r\n".encode() + b"x" * 100000 + b"\r\n")
        if stage == "during the body":
            time.sleep(0.3)
            victim.stop()
            time.sleep(0.3)
        r.send(b"y" * 100000 + b"\r\n.\r\n")
        finals = [r.reply() for _ in on_victim + elsewhere]
        r.close()
        time.sleep(0.5)
        ok_rcpt = all(g.startswith("250") for g in got[2:-1]) and got[-1].startswith("354")
        ok_final = all(f.startswith("4") for f in finals[:3]) and \
            all(f.startswith("250") for f in finals[3:])
        copies = [mailbox_count(lab, u, marker) for u in on_victim + elsewhere]
        t.ok(ok_rcpt and ok_final and copies == [0, 0, 0, 1, 1, 1],
             f"a backend lost {stage}: 4xx for exactly its recipients, the others delivered "
             f"once", "\n".join(got + finals) + f"\ncopies {copies}")
        victim.start()
        # The MTA retries the recipients that got 4xx: each gets its one copy.
        at_rcpt, final, out = swaks(f"{us[1].ip}:{ul.LMTP_PORT}",
                                    [f"{u}@{DOMAIN}" for u in on_victim], marker)
        time.sleep(0.3)
        copies = [mailbox_count(lab, u, marker) for u in on_victim + elsewhere]
        t.ok(copies == [1] * 6 and all(c == 250 for c in final.values()),
             f"the MTA's retry after the loss {stage} delivers the rest exactly once",
             out[-1500:] + f"\ncopies {copies}")

    # -- a backend already down at RCPT time
    victim.stop()
    marker = uuid.uuid4().hex
    at_rcpt, final, out = swaks(f"{us[2].ip}:{ul.LMTP_PORT}",
                                [f"{u}@{DOMAIN}" for u in on_victim + elsewhere], marker)
    victim.start()
    time.sleep(0.3)
    t.ok(all(at_rcpt.get(f"{u}@{DOMAIN}", 0) // 100 == 4 for u in on_victim) and
         all(final.get(f"{u}@{DOMAIN}") == 250 for u in elsewhere) and
         all(mailbox_count(lab, u, marker) == 1 for u in elsewhere),
         "a backend down at RCPT: 4xx for its recipients, the others delivered", out[-2500:])

    # -- a user moved in the middle of a delivery: the delivery finishes where it started, the
    # next one goes to the new backend
    user = elsewhere[0]
    old = owner[user]
    new = next(b.ip for b in bs if b.ip not in (old, victim.ip))
    marker = uuid.uuid4().hex
    offsets = {b: b.log_size() for b in bs}
    r = Raw(us[0].ip, ul.LMTP_PORT)
    r.send(f"LHLO test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<{user}@{DOMAIN}>\r\n".encode())
    got = [r.reply(), r.reply(), r.reply()]
    mv = subprocess.run([os.environ.get("USHERCTL", "usherctl"), "-a", us[1].admin_socket,
                         "move", user, new], capture_output=True, text=True)
    r.send(f"DATA\r\n".encode())
    got.append(r.reply())
    r.send(f"Subject: moved\r\nX-Marker: {marker}\r\n\r\nhi\r\n.\r\n".encode())
    got.append(r.reply())
    r.close()
    # Dovecot's log process writes the line a moment after the reply.
    ul.poll_until(lambda: saved_on(bs, offsets, user), 10)
    first_on = saved_on(bs, offsets, user)
    ul.wait_for("the move to finish", lambda: us[2].status_user(user)[0] == new, 20)
    offsets = {b: b.log_size() for b in bs}
    at_rcpt, final, out = swaks(f"{us[2].ip}:{ul.LMTP_PORT}", [f"{user}@{DOMAIN}"], marker)
    ul.poll_until(lambda: saved_on(bs, offsets, user), 10)
    t.ok(mv.returncode == 0 and [g[:3] for g in got] == ["250", "250", "250", "354", "250"] and
         first_on == [old] and saved_on(bs, offsets, user) == [new] and
         mailbox_count(lab, user, marker) == 2,
         "a user moved during a delivery: it finishes on the old backend, the next goes to the new",
         "\n".join(got) + f"\n{mv.stderr} first {first_on} then {saved_on(bs, offsets, user)}")

    # -- a 50 MB message: usherd streams it (its memory does not grow with it)
    def rss_kib(pid, field):
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        return 0
    hwm_before = rss_kib(us[0].pid, "VmHWM")
    marker = uuid.uuid4().hex
    r = Raw(us[0].ip, ul.LMTP_PORT)
    r.send(b"LHLO test\r\nMAIL FROM:<a@example.org>\r\n"
           b"RCPT TO:<user9@example.org>\r\nRCPT TO:<user10@example.org>\r\nDATA\r\n")
    got = [r.reply() for _ in range(5)]
    r.send(f"Subject: big\r\nX-Marker: {marker}\r\n\r\n".encode())
    line = b"x" * 998 + b"\r\n"
    chunk = line * 1024  # 1 MiB
    for _ in range(50):
        r.send(chunk)
    r.send(b".\r\n")
    got += [r.reply(), r.reply()]
    r.close()
    grown = rss_kib(us[0].pid, "VmHWM") - hwm_before
    # AddressSanitizer keeps freed memory in quarantine: its peak says nothing about ours.
    with open(f"/proc/{us[0].pid}/maps") as f:
        asan = "libasan" in f.read()
    t.ok([g[:3] for g in got] == ["250", "250", "250", "250", "354", "250", "250"] and
         mailbox_count(lab, "user9", marker) == 1 and mailbox_count(lab, "user10", marker) == 1 and
         (asan or grown < 16 * 1024),
         f"a 50 MB message to two users: delivered, usherd's peak memory grew {grown} KiB "
         f"(bound 16 MiB{', not checked under ASan' if asan else ''})", "\n".join(got))

    # -- an MTA pipelining a flood of NOOPs behind a RCPT whose backend is stopped (its answer
    # owed for up to a minute): the commands wait unread, usherd's memory does not follow them;
    # once the backend answers, every command gets its answer, in order
    victim = bs[0]
    user = next(u for u, b in owner.items() if b == victim.ip)
    before = stats(us[1])
    rss_before = rss_kib(us[1].pid, "VmRSS")
    stopped = [p for p in victim.processes() if ul.stop_process(p)]
    n_noops = 1000000
    try:
        r = Raw(us[1].ip, ul.LMTP_PORT)
        r.send(f"LHLO test\r\nMAIL FROM:<a@{DOMAIN}>\r\nRCPT TO:<{user}@{DOMAIN}>\r\n".encode())
        sender = threading.Thread(target=lambda: r.send(b"NOOP\r\n" * n_noops + b"QUIT\r\n"))
        sender.start()
        time.sleep(3)
        grown = rss_kib(us[1].pid, "VmRSS") - rss_before
        waits = stats(us[1]).get("lmtp_pipeline_waits", 0) - before.get("lmtp_pipeline_waits", 0)
    finally:
        for p in stopped:
            os.kill(p, signal.SIGCONT)
    # Every answer (about 14 MB), until QUIT's.
    r.s.settimeout(90)
    answers = bytearray(r.buf)
    while not answers.endswith(b"221 2.0.0 Bye\r\n"):
        data = r.s.recv(1 << 20)
        if not data:
            break
        answers += data
    sender.join(30)
    r.close()
    lines = answers.split(b"\r\n")
    noops = lines.count(b"250 2.0.0 OK")
    t.ok(waits >= 1 and (asan or grown < 16 * 1024) and noops == n_noops and
         lines[-2:] == [b"221 2.0.0 Bye", b""] and lines[-2 - n_noops - 1].startswith(b"250 2.1.5"),
         f"a million NOOPs pipelined behind a RCPT whose backend is stopped: they wait unread "
         f"(usherd grew {grown} KiB, bound 16 MiB{', not checked under ASan' if asan else ''}); "
         f"then the RCPT's answer, {noops} NOOP answers and QUIT's, in order",
         f"waits {waits}, tail {bytes(answers[-200:])!r}")

    # -- An MTA that gave up: usherd stopped (a stall, a VM paused) after its 354; meanwhile the
    # MTA sent the message, waited in vain for the answer, sent QUIT and closed. On waking up
    # usherd finds the message's end behind the MTA's FIN: the MTA will send it again, so this
    # copy must not be delivered (it was, once usherd answered half-closes: a duplicate).
    before = stats(us[1])
    marker = uuid.uuid4().hex
    r = Raw(us[1].ip, ul.LMTP_PORT)
    r.send(f"LHLO test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<user12@{DOMAIN}>\r\n"
           f"DATA\r\n".encode())
    got = [r.reply() for _ in range(4)]
    ul.stop_process(us[1].pid)
    try:
        r.send(f"Subject: stall\r\nX-Marker: {marker}\r\n\r\nbye\r\n.\r\nQUIT\r\n".encode())
        r.close()
        time.sleep(0.3)
    finally:
        os.kill(us[1].pid, signal.SIGCONT)
    gone = ul.poll_until(lambda: stats(us[1]).get("lmtp_tempfail_client_gone", 0) -
                         before.get("lmtp_tempfail_client_gone", 0) == 1, 10)
    time.sleep(0.5)  # what a backend saved would be in the Maildir by now
    t.ok([g[:3] for g in got] == ["250", "250", "250", "354"] and gone and
         mailbox_count(lab, "user12", marker) == 0,
         "an MTA that gave up (its message, QUIT and close reached usherd while it was stopped): "
         "the message is not delivered (the MTA sends it again), counted", "\n".join(got))

    # -- `printf ... | nc`: the same bytes from a client that only shut its sending side: it
    # reads why (451 for the recipient), and nothing is saved.
    marker = uuid.uuid4().hex
    c = socket.create_connection((us[1].ip, ul.LMTP_PORT), timeout=20)
    c.sendall(f"LHLO test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<user11@{DOMAIN}>\r\n"
              f"DATA\r\nSubject: eof\r\nX-Marker: {marker}\r\n\r\nbye\r\n.\r\nQUIT\r\n".encode())
    c.shutdown(socket.SHUT_WR)
    out = ul.read_until_closed(c, timeout=20).decode("latin1")
    c.close()
    codes = [l[:3] for l in out.split("\r\n") if len(l) > 3 and l[3] == " "]
    time.sleep(0.5)
    t.ok(codes == ["220", "250", "250", "250", "354", "451", "221"] and
         mailbox_count(lab, "user11", marker) == 0,
         "a client that ends its side right behind a whole pipelined delivery and QUIT: every "
         "reply reaches it, the message's is 451 and nothing is saved", out)

    # -- a slow backend: what it has not taken waits in a spool file; the client and the other
    # backend go on. One backend's LMTP processes are stopped (SIGSTOP) during the message.
    placed = {}
    for n in range(20, 40):
        placed.setdefault(us[0].status_user(f"user{n}")[0], f"user{n}")
    fast_b, slow_b = [b for b in bs if b.ip in placed][:2]
    fast_u, slow_u = placed[fast_b.ip], placed[slow_b.ip]

    def data_to_fast_and_stopped():
        """A message to fast_u, then slow_u, answered 354; slow_b's LMTP processes stopped."""
        r = Raw(us[0].ip, ul.LMTP_PORT)
        r.send(f"LHLO test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<{fast_u}@{DOMAIN}>\r\n"
               f"RCPT TO:<{slow_u}@{DOMAIN}>\r\nDATA\r\n".encode())
        got = [r.reply() for _ in range(5)]
        stopped = [p for p in slow_b.processes() if ul._cmdline(p).endswith("/lmtp")]
        for p in stopped:
            ul.stop_process(p)
        return r, got, stopped

    def reply_while_stopped(r):
        """The fast recipient's answer (first in RCPT order): it need not wait for the slow
        backend (an MTA that gave up then would send it the message again)."""
        r.s.settimeout(10)
        try:
            return r.reply()
        except OSError as e:
            return f"no answer while the slow backend is stopped: {e}"
        finally:
            r.s.settimeout(20)

    before = stats(us[0])
    marker = uuid.uuid4().hex
    r, got, stopped = data_to_fast_and_stopped()
    try:
        t0 = time.monotonic()
        r.send(f"Subject: spool\r\nX-Marker: {marker}\r\n\r\n".encode())
        for _ in range(24):
            r.send(chunk)  # 24 MiB, far more than the sockets and usherd's memory queue hold
        r.send(b".\r\n")
        sent_in = time.monotonic() - t0
        mid = stats(us[0])
        fast_saved = ul.poll_until(lambda: mailbox_count(lab, fast_u, marker) == 1, 20)
        got.append(reply_while_stopped(r))
    finally:
        for p in stopped:
            os.kill(p, signal.SIGCONT)
    got += [r.reply()]
    r.close()
    after = stats(us[0])
    spooled = mid.get("lmtp_spooled_bytes", 0) - before.get("lmtp_spooled_bytes", 0)
    t.ok(stopped and [g[:3] for g in got] == ["250", "250", "250", "250", "354", "250", "250"] and
         sent_in < 15 and spooled > 8 * 1024 * 1024 and fast_saved and
         mailbox_count(lab, slow_u, marker) == 1 and
         after.get("lmtp_spool_errors", 0) == before.get("lmtp_spool_errors", 0),
         f"a backend stopped during a 24 MiB message: the client sent it all in {sent_in:.1f} s, "
         f"{spooled >> 20} MiB spooled for the stopped backend, the other backend saved it "
         f"meanwhile and its recipient got its 250 at once; resumed, the other gets 250 too, "
         f"the message once",
         "\n".join(got) + f" stopped {stopped}")

    # -- the same, but the MTA gives up (closes) while the stopped backend's rest is still in
    # usherd's spool: that rest is never sent, so the message is not saved there; the MTA has
    # the fast recipient's 250 already and sends the message again to the other one only.
    before = stats(us[0])
    marker = uuid.uuid4().hex
    r, got, stopped = data_to_fast_and_stopped()
    try:
        r.send(f"Subject: gave up\r\nX-Marker: {marker}\r\n\r\n".encode())
        for _ in range(12):
            r.send(chunk)
        r.send(b".\r\n")
        fast_saved = ul.poll_until(lambda: mailbox_count(lab, fast_u, marker) == 1, 20)
        got.append(reply_while_stopped(r))
        r.close()
        withdrawn = ul.poll_until(lambda: stats(us[0]).get("lmtp_tempfail_client_gone", 0) -
                                  before.get("lmtp_tempfail_client_gone", 0) == 1, 10)
    finally:
        for p in stopped:
            os.kill(p, signal.SIGCONT)
    time.sleep(1)  # the resumed backend has what usherd sent it; it must not save a half message
    t.ok(stopped and [g[:3] for g in got] == ["250", "250", "250", "250", "354", "250"] and
         fast_saved and withdrawn and mailbox_count(lab, slow_u, marker) == 0,
         "the MTA has the fast recipient's 250 and closes while a stopped backend's rest is still "
         "spooled: that rest is never sent, the message is not saved there (the MTA sends it "
         "again to that recipient only)", "\n".join(got))

    # -- no spool, one backend slow to take a large message: the client is held to that
    # backend's pace (usherd's queue for it stays bounded), while the other, which takes the
    # bytes as they come, has the message's end long before. Its answer may come while usherd
    # still holds the slow one's rest, the end of the client's message read but not yet taken
    # (when the read that held the end filled the slow one's queue again): it is the answer
    # owed for that recipient, not a protocol error. Two fake backends (Dovecot answers a
    # message of this size later than the slow one's next read).
    fast_ip, slow_ip = lab.backend_ip(8), lab.backend_ip(9)
    fast = FakeLmtp(fast_ip, ul.LMTP_PORT, data_delay=0.3)
    slow = FakeLmtp(slow_ip, ul.LMTP_PORT, pause=0.005)
    try:
        lone = lab.usherd(lab.director_ip(8), ring=[lab.director_ip(8)], backends=[fast_ip, slow_ip],
                          extra_conf=f"[proxy]\nlmtp_listen = {lab.director_ip(8)}:{ul.LMTP_PORT}\n"
                                     f"lmtp_user_format = %Ln\nlmtp_spool_dir =\n")
        lone.start()
        lab.wait_ring_synced([lone], timeout=45, via="admin")
        where = {}
        for n in range(1, 60):
            where.setdefault(lone.status_user(f"user{n}")[1], f"user{n}")
        fast_u, slow_u = where[fast_ip], where[slow_ip]
        # A backend that answers DATA late (the fast one, 0.3 s): the answers to MAIL and RCPT,
        # known long before, wait for the answer to DATA and reach the client in one segment
        # with it (the MTA of a pipelined group reads them all before it sends on).
        r = Raw(lone.ip, ul.LMTP_PORT)
        r.send(b"LHLO test\r\n")
        r.reply()
        r.send(f"MAIL FROM:<a@example.org>\r\nRCPT TO:<{fast_u}@{DOMAIN}>\r\nDATA\r\n".encode())
        first = r.s.recv(65536)
        r.send(b"Subject: late\r\n\r\nbody\r\n.\r\nQUIT\r\n")
        r.buf = first
        got = [r.reply() for _ in range(5)]
        r.close()
        t.ok(first.startswith(b"250 ") and b"\r\n354 " in first and
             [g[:3] for g in got] == ["250", "250", "354", "250", "221"],
             "a backend late to answer DATA: the answers to MAIL, RCPT and DATA reach the MTA "
             "together", repr(first) + "\n" + "\n".join(got))
        fast.saved, fast.data_delay = 0, 0.0
        marker = uuid.uuid4().hex
        r = Raw(lone.ip, ul.LMTP_PORT)
        r.send(f"LHLO test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<{fast_u}@{DOMAIN}>\r\n"
               f"RCPT TO:<{slow_u}@{DOMAIN}>\r\nDATA\r\n".encode())
        got = [r.reply() for _ in range(5)]
        sender = threading.Thread(target=lambda: r.send(
            f"Subject: slow\r\nX-Marker: {marker}\r\n\r\n".encode() + chunk * 8 + b".\r\n"))
        sender.start()
        r.s.settimeout(60)
        got += [r.reply(), r.reply()]
        sender.join(60)
        r.send(b"QUIT\r\n")
        got.append(r.reply())
        r.close()
        t.ok([g[:3] for g in got] == ["250", "250", "250", "250", "354", "250", "250", "221"] and
             fast.saved == 1 and slow.saved == 1,
             "no spool and a backend slow to take an 8 MB message: the fast backend's answer and "
             "the slow one's are their recipients' 250, in order; saved once on each",
             "\n".join(got))
        lone.stop()
    finally:
        fast.close()
        slow.close()

    # -- a spool directory usherd cannot write to: it refuses to start, saying which key and why
    bad_dir = os.path.join(lab.root, "spool-test")
    os.makedirs(bad_dir)
    ip = f"127.{lab.net}.1.9"
    conf = os.path.join(bad_dir, "usher.conf")
    with open(conf, "w") as f:
        f.write(f"[ring]\ndirectors = {ip}\n[backends]\nhosts = {bs[0].ip}\n[daemon]\n"
                f"ring_address = {ip}:{ul.RING_PORT}\nadmin_socket = {bad_dir}/admin\n"
                f"state_dir = {bad_dir}/state\n[proxy]\nlmtp_listen = {ip}:{ul.LMTP_PORT}\n"
                f"lmtp_spool_dir = {bad_dir}/missing\n")
    r = subprocess.run([ul.USHERD, "-c", conf], capture_output=True, text=True, timeout=20)
    t.ok(r.returncode != 0 and f"[proxy] lmtp_spool_dir: cannot create a spool file in "
         f"{bad_dir}/missing: No such file or directory" in r.stderr,
         "an lmtp_spool_dir that does not exist: usherd refuses to start and says why",
         f"exit {r.returncode}: {r.stderr[-500:]}")

    st = stats(us[0])
    t.ok(st.get("lmtp_delivered", 0) >= 50 and st.get("lmtp_recipients", 0) >= 50 and
         st.get("lmtp_bad_commands", 0) >= 2,
         "usherctl stats counts LMTP recipients, deliveries and bad commands",
         json.dumps({k: v for k, v in st.items() if k.startswith("lmtp")}))


def main():
    if ul.USHERD is None:
        print("1..0 # SKIP set $USHERD")
        return ul.SKIP_STATUS
    return ul.run_test(run, users=60)


if __name__ == "__main__":
    sys.exit(main())
