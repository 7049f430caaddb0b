#!/usr/bin/env python3
"""test_faults.py - real-process fault tests: three usherd (IMAP and LMTP proxies, health checks
on) in front of three real Dovecot backends sharing one mail store, on loopback, under a load of
IMAP logins and LMTP deliveries, while one fault at a time hits the ring:

  usherd-kill       kill -9 of a usherd; restarted 10 s later
  usherd-stop       SIGSTOP of a usherd for 20 s, then SIGCONT
  usherd-partition  one usherd cut off from the two others (ring traffic blackholed with policy
                    routing rules inside this test's own network namespace; clients still reach
                    it) for 20 s
  backend-kill      kill -9 of a backend (the whole Dovecot process group); restarted after 15 s
  backend-mute      a backend replaced by a listener that accepts TCP and never greets, for 15 s
  ring-restart      every usherd stopped (SIGTERM) and started again

For each fault it measures, and prints as a table (and as JSON with --report FILE):
  * logins that failed even after one client retry 2 s later (a load balancer's retry);
  * deliveries acknowledged with 250 but missing from the mail store (lost), and messages stored
    twice (duplicated), counted in the Maildirs themselves; an MTA retries 4xx every 2 s. A
    message whose answer to its end never came (the fault took it) may be stored twice: the MTA
    cannot know it was saved (RFC 1047). Those are listed, not counted as failures;
  * users seen with sessions on two backends at once: by `doveadm who` on the three backends,
    polled together every 0.3 s, and by the clients (two live sessions of one user answered by
    two different backends);
  * detection time (the fault is visible: the ring re-formed without the usherd, the backend down
    everywhere) and convergence time (after the repair: the ring synced and every usherd holding
    the same users on the same backends).

Targets (issue 12): 0 deliveries lost or duplicated (but for a lost answer), 0 users on two
backends, no failed login that the 2 s retry does not fix; detection of a hung usherd within 5 s.

The test runs itself inside a new network namespace (unshare -n) so that its routing rules cannot
touch the machine's own network. Exits 0 pass, 1 fail, 77 skipped (no Dovecot, no usherd, or no
permission for a network namespace).
"""

import argparse
import json
import os
import random
import shutil
import signal
import smtplib
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
import usherlab as ul  # noqa: E402

HEALTH = "[health]\nenabled = true\ninterval = 1s\ntimeout = 1s\nfall = 2\nrise = 2\n"
USERS = 200      # in the passwd-file; LMTP delivers to all of them
IMAP_USERS = 30  # IMAP logins come from fewer users, so a user logs in several times per phase
IMAP_CLIENTS = 4
LMTP_PER_SEC = 10
CLIENT_TIMEOUT = 5.0
RETRY_AFTER = 2.0


def in_own_netns():
    """Re-run this script in a new network namespace with loopback up; returns None when already
    inside one, else the exit status of the child (77 when namespaces are not allowed here)."""
    if os.environ.get("USHER_FAULTS_NETNS") == "1":
        return None
    unshare = shutil.which("unshare")
    ip = shutil.which("ip")
    if unshare is None or ip is None:
        print("1..0 # SKIP needs unshare and ip (util-linux, iproute2)")
        return ul.SKIP_STATUS
    probe = subprocess.run([unshare, "-n", ip, "link", "set", "lo", "up"], capture_output=True)
    if probe.returncode != 0:
        print(f"1..0 # SKIP cannot create a network namespace here: "
              f"{probe.stderr.decode().strip()}")
        return ul.SKIP_STATUS
    env = dict(os.environ, USHER_FAULTS_NETNS="1")
    cmd = [unshare, "-n", "sh", "-c", f'{ip} link set lo up && exec "$0" "$@"', sys.executable,
           os.path.abspath(__file__)] + sys.argv[1:]
    return subprocess.run(cmd, env=env).returncode


def ip_cmd(*args):
    subprocess.run(["ip", *args], check=True, capture_output=True)


class Partition:
    """Blackholes traffic between one director address and the others (both ways) with policy
    routing rules placed before the local table; only in this namespace."""

    def __init__(self):
        # Local addresses are routed by the "local" table at priority 0; move it behind our rules.
        ip_cmd("rule", "add", "from", "all", "lookup", "local", "priority", "1000")
        ip_cmd("rule", "del", "priority", "0")
        self.rules = []

    def cut(self, a, others):
        for b in others:
            for x, y in ((a, b), (b, a)):
                ip_cmd("rule", "add", "from", x, "to", y, "blackhole", "priority", "100")
                self.rules.append((x, y))

    def heal(self):
        for x, y in self.rules:
            ip_cmd("rule", "del", "from", x, "to", y, "blackhole", "priority", "100")
        self.rules = []


# ---- The load --------------------------------------------------------------------------------

class EndTrackingLMTP(smtplib.LMTP):
    """smtplib's LMTP client, remembering whether the end of a message went out: when the answer
    to it is then lost, the MTA cannot know whether the message was saved (RFC 1047)."""
    end_sent = False

    def send(self, s):
        super().send(s)
        if isinstance(s, bytes) and s.endswith(b"\r\n.\r\n"):
            self.end_sent = True


class Load:
    def __init__(self, lab, us):
        self.lab = lab
        self.us = us
        self.lock = threading.Lock()
        self.stop_flag = threading.Event()
        self.phase = "start"
        self.stats = {}
        self.live = {}          # user -> {session id: backend}
        self.next_sid = 0
        self.acked = {}         # message id -> user (250 received)
        self.unanswered = {}    # message id -> phase: its end was sent, its answer never came
        self.last_backend = {}  # user -> (backend, phase) of its last successful login
        self.msg_n = 0
        self.threads = []

    def count(self, what, n=1):
        with self.lock:
            p = self.stats.setdefault(self.phase, {})
            p[what] = p.get(what, 0) + n

    def note(self, what, text):
        with self.lock:
            p = self.stats.setdefault(self.phase, {})
            p.setdefault(what, [])
            if len(p[what]) < 10:
                p[what].append(text)

    def directors(self):
        return [u for u in self.us]

    def imap_once(self, u, user, rnd):
        conn, ident = ul.imap_open(u.ip, ul.IMAP_PORT, user, timeout=CLIENT_TIMEOUT)
        backend = ident.get("x-lab-backend")
        with self.lock:
            self.next_sid += 1
            sid = self.next_sid
            others = {b for b in self.live.get(user, {}).values() if b != backend}
            self.live.setdefault(user, {})[sid] = backend
            # A move counts in the phase where both logins happened (the simulator runs each
            # fault on its own).
            prev = self.last_backend.get(user)
            moved = prev is not None and prev[1] == self.phase and prev[0] != backend
            self.last_backend[user] = (backend, self.phase)
        if moved:
            self.count("backend_changes")
        if others:
            self.count("client_two_backends")
            self.note("client_two_backends_seen", f"{user}: {backend} and {sorted(others)}")
        try:
            time.sleep(rnd.uniform(0.2, 2.0))
            conn.noop()
            conn.logout()
        except (OSError, imaplib_error()):
            try:
                conn.shutdown()
            except OSError:
                pass
        finally:
            with self.lock:
                self.live.get(user, {}).pop(sid, None)

    def imap_client(self, seed):
        rnd = random.Random(seed)
        while not self.stop_flag.is_set():
            user = f"user{rnd.randint(1, IMAP_USERS)}"
            u = rnd.choice(self.directors())
            try:
                self.imap_once(u, user, rnd)
                self.count("logins_ok")
                continue
            except Exception as e:
                self.count("logins_first_try_failed")
                first = f"{u.name}: {type(e).__name__}: {e}"
            if self.stop_flag.wait(RETRY_AFTER):
                return
            u2 = rnd.choice([x for x in self.directors() if x is not u])
            try:
                self.imap_once(u2, user, rnd)
                self.count("logins_ok")
                self.count("logins_fixed_by_retry")
            except Exception as e:
                self.count("logins_failed")
                self.note("logins_failed_seen", f"{user}: {first}; retry {u2.name}: "
                                                f"{type(e).__name__}: {e}")

    def lmtp_sender(self, seed):
        rnd = random.Random(seed)
        while not self.stop_flag.is_set():
            t0 = time.monotonic()
            with self.lock:
                self.msg_n += 1
                n = self.msg_n
            mid = f"<fault-{n}@usher.lab>"
            user = f"user{rnd.randint(1, USERS)}"
            body = (f"From: mta@usher.lab\r\nTo: {user}@usher.lab\r\nSubject: fault test {n}\r\n"
                    f"Message-ID: {mid}\r\n\r\nmessage {n}\r\n")
            for attempt in range(15):
                u = rnd.choice(self.directors())
                c = None
                try:
                    c = EndTrackingLMTP(u.ip, ul.LMTP_PORT, timeout=CLIENT_TIMEOUT)
                    with c:
                        c.sendmail("mta@usher.lab", [user], body)
                    with self.lock:
                        self.acked[mid] = user
                    self.count("deliveries_acked")
                    if attempt > 0:
                        self.count("deliveries_retried")
                    break
                except smtplib.SMTPRecipientsRefused as e:
                    code = list(e.recipients.values())[0][0]
                    if code >= 500:
                        self.count("deliveries_rejected")
                        break
                except smtplib.SMTPDataError:
                    pass  # an answer to the message's end (451 and the like): not saved
                except (smtplib.SMTPException, OSError):
                    if c is not None and c.end_sent:
                        with self.lock:
                            self.unanswered.setdefault(mid, self.phase)
                if self.stop_flag.wait(RETRY_AFTER):
                    self.count("deliveries_unfinished")
                    return
            else:
                self.count("deliveries_given_up")
            left = 1.0 / LMTP_PER_SEC - (time.monotonic() - t0)
            if left > 0:
                self.stop_flag.wait(left)

    def start(self):
        for i in range(IMAP_CLIENTS):
            self.threads.append(threading.Thread(target=self.imap_client, args=(i,), daemon=True))
        self.threads.append(threading.Thread(target=self.lmtp_sender, args=(99,), daemon=True))
        for t in self.threads:
            t.start()

    def stop(self):
        self.stop_flag.set()
        for t in self.threads:
            t.join(60)


def imaplib_error():
    import imaplib
    return imaplib.IMAP4.error


class WhoPoller:
    """`doveadm who` on every running backend, together, every 0.3 s: users on two at once."""

    def __init__(self, load, backends):
        self.load = load
        self.backends = backends
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.rounds = 0

    def who(self, b):
        if not b.running():
            return None
        return subprocess.Popen([ul.DOVEADM, "-c", b.conf_path, "who", "-1"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

    def loop(self):
        while not self.stop_flag.wait(0.3):
            procs = [(b, self.who(b)) for b in self.backends]
            seen = {}
            for b, p in procs:
                if p is None:
                    continue
                try:
                    out, _ = p.communicate(timeout=5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    continue
                for line in out.splitlines()[1:]:
                    f = line.split()
                    if f:
                        seen.setdefault(f[0], set()).add(b.ip)
            self.rounds += 1
            for user, bs in seen.items():
                if len(bs) > 1:
                    self.load.count("backend_two_backends")
                    self.load.note("backend_two_backends_seen", f"{user}: {sorted(bs)}")

    def start(self):
        self.thread.start()

    def stop(self):
        self.stop_flag.set()
        self.thread.join(10)


def count_store(lab):
    """Message-ID -> copies, over every Maildir of the shared store."""
    copies = {}
    for root, _dirs, files in os.walk(lab.mail_root):
        if not (root.endswith("/new") or root.endswith("/cur")):
            continue
        for name in files:
            try:
                with open(os.path.join(root, name), "rb") as f:
                    head = f.read(2048).decode(errors="replace")
            except OSError:
                continue
            for line in head.splitlines():
                if line.lower().startswith("message-id:"):
                    mid = line.split(":", 1)[1].strip()
                    if mid.startswith("<fault-"):
                        copies[mid] = copies.get(mid, 0) + 1
                    break
    return copies


# ---- Ring observations -------------------------------------------------------------------------

def ring_json(u):
    rc, out, _ = u.usherctl("--json", "ring", timeout=5)
    return json.loads(out) if rc == 0 else None


def ring_of(members):
    """Every member has a left and a right among the members and says synced."""
    ips = {m.ip for m in members}
    for u in members:
        r = ring_json(u)
        if r is None or not r["synced"]:
            return False
        links = {m["link"]: (m["address"] or "").split(":")[0] for m in r["members"]
                 if m["link"] in ("left", "right")}
        if set(links) != {"left", "right"} or not set(links.values()) <= ips:
            return False
        if len(members) > 1 and u.ip in links.values():
            return False
    return True


def user_entry(line):
    """A USER-LIST line (hash, timestamp, backend) -> (hash, backend)."""
    f = line.split("\t")
    return (f[0], f[2])


def users_agree(members):
    lists = []
    for u in members:
        try:
            with u.admin(timeout=5) as a:
                lists.append(sorted(user_entry(line) for line in a.command_multi("USER-LIST")))
        except (OSError, ul.LabError):
            return False
    return all(x == lists[0] for x in lists)


def converged(members):
    return ring_of(members) and users_agree(members)


def backend_down_everywhere(us, ip, down=True):
    for u in us:
        rc, out, _ = u.usherctl("--json", "health", timeout=5)
        if rc != 0:
            return False
        if not any(b["backend"] == ip and b["down"] == down for b in json.loads(out)["backends"]):
            return False
    return True


def timed(pred, timeout, interval=0.1):
    t0 = time.monotonic()
    ok = ul.poll_until(pred, timeout, interval=interval)
    return round(time.monotonic() - t0, 2) if ok else None


# ---- The faults --------------------------------------------------------------------------------

def run(lab, t, report):
    bs = [lab.dovecot_backend(lab.backend_ip(i)) for i in (1, 2, 3)]
    ring = [lab.director_ip(i) for i in (1, 2, 3)]
    us = [lab.usherd(ip, ring=ring, backends=bs,
                     extra_conf=HEALTH + f"[proxy]\nimap_listen = {ip}:{ul.IMAP_PORT}\n"
                     f"lmtp_listen = {ip}:{ul.LMTP_PORT}\nworkers = 1\n")
          for ip in ring]
    lab.start_all()
    lab.wait_ring_synced(us, timeout=60, via="admin")
    part = Partition()
    load = Load(lab, us)
    who = WhoPoller(load, bs)
    results = {}
    load.start()
    who.start()
    time.sleep(5)

    def phase(name, inject, detect, repair, settle_members=None, detect_limit=None):
        load.phase = name
        r = {}
        time.sleep(6)   # some logins of the phase before the fault (moves are counted per phase)
        t0 = time.monotonic()
        inject()
        r["detect_s"] = timed(detect, 30) if detect is not None else None
        repair_at = time.monotonic()
        repair()
        r["converge_s"] = timed(lambda: converged(settle_members or us), 90, interval=0.3)
        r["fault_s"] = round(repair_at - t0, 1)
        time.sleep(3)   # let the clients of the phase finish
        r.update({k: v for k, v in load.stats.get(name, {}).items()})
        results[name] = r
        ok_detect = detect_limit is None or (r["detect_s"] is not None and
                                             r["detect_s"] <= detect_limit)
        t.ok(r["converge_s"] is not None and ok_detect,
             f"{name}: detected in {r['detect_s']} s"
             f"{'' if detect_limit is None else f' (limit {detect_limit} s)'}, converged "
             f"{r['converge_s']} s after the repair", json.dumps(r))

    # 1. kill -9 of a usherd, restarted 10 s later.
    victim = us[2]
    phase("usherd-kill",
          lambda: victim.kill9(),
          lambda: ring_of(us[:2]),
          lambda: (time.sleep(10), victim.stop(), victim.start()),
          detect_limit=5)

    # 2. SIGSTOP for 20 s.
    hung = us[1]
    phase("usherd-stop",
          lambda: os.kill(hung.pid, signal.SIGSTOP),
          lambda: ring_of([us[0], us[2]]),
          lambda: (time.sleep(17), os.kill(hung.pid, signal.SIGCONT)),
          detect_limit=5)

    # 3. One usherd cut off from the others for 20 s.
    cut = us[0]
    phase("usherd-partition",
          lambda: part.cut(cut.ip, [u.ip for u in us if u is not cut]),
          lambda: ring_of(us[1:]),
          lambda: (time.sleep(15), part.heal()),
          detect_limit=5)

    # 4. A backend killed, restarted after 15 s.
    dead = bs[1]
    phase("backend-kill",
          lambda: (dead.kill9(group=True), dead.stop()),
          lambda: backend_down_everywhere(us, dead.ip),
          lambda: (time.sleep(15), dead.start(),
                   ul.poll_until(lambda: backend_down_everywhere(us, dead.ip, False), 30)),
          detect_limit=10)

    # 5. A backend that accepts TCP and never greets, for 15 s.
    mute = bs[2]
    holder = {}

    def mute_on():
        mute.stop()
        holder["l"] = ul.SilentListener(mute.ip, [ul.IMAP_PORT, ul.LMTP_PORT])

    def mute_off():
        time.sleep(15)
        holder["l"].close()
        mute.start()
        ul.poll_until(lambda: backend_down_everywhere(us, mute.ip, False), 30)
    phase("backend-mute", mute_on, lambda: backend_down_everywhere(us, mute.ip), mute_off,
          detect_limit=10)

    # 6. The whole ring restarted.
    before = None
    with us[0].admin() as a:
        before = sorted(user_entry(line) for line in a.command_multi("USER-LIST"))

    def restart_all():
        for u in us:
            u.send_stop()
        for u in us:
            u.stop()
        for u in us:
            u.start(wait=False)
        for u in us:
            u.wait_ready(30)
    phase("ring-restart", restart_all, None, lambda: None)
    with us[0].admin() as a:
        after = {user_entry(line) for line in a.command_multi("USER-LIST")}
    after_of = dict(after)
    moved = [(h, b, after_of[h]) for h, b in before if h in after_of and after_of[h] != b]
    results["ring-restart"]["users_moved"] = len(moved)
    t.ok(not moved, f"ring-restart: users kept their backends across the restart "
         f"({len(before)} before, {len(moved)} moved)", str(moved[:10]))

    load.stop()
    who.stop()
    time.sleep(1)
    copies = count_store(lab)
    lost = [m for m in load.acked if copies.get(m, 0) == 0]
    # A message stored twice is usherd's fault unless one of its attempts lost the answer to the
    # message's end (RFC 1047's race: saved on the backend, then the fault took the answer away,
    # so the MTA had to send it again). No relay can close that window; it only must not widen
    # it (the stall case has its own exact test in test_lmtp_proxy).
    dup = [m for m, n in copies.items() if n > 1 and m not in load.unanswered]
    dup_unanswered = [m for m, n in copies.items() if n > 1 and m in load.unanswered]
    results["total"] = {"deliveries_acked": len(load.acked), "deliveries_lost": len(lost),
                        "deliveries_duplicated": len(dup),
                        "deliveries_duplicated_after_lost_answer": len(dup_unanswered),
                        "deliveries_answer_lost": len(load.unanswered), "who_rounds": who.rounds}

    print("# fault              detect_s  converge_s  logins_ok  failed  retried  "
          "two_backends(who/client)  acked")
    for name, r in results.items():
        if name == "total":
            continue
        print(f"# {name:18} {str(r.get('detect_s')):>8}  {str(r.get('converge_s')):>10}  "
              f"{r.get('logins_ok', 0):>9}  {r.get('logins_failed', 0):>6}  "
              f"{r.get('logins_fixed_by_retry', 0):>7}  "
              f"{r.get('backend_two_backends', 0):>12}/{r.get('client_two_backends', 0):<11}  "
              f"{r.get('deliveries_acked', 0):>5}")
    for name, r in results.items():
        for k in ("logins_failed_seen", "backend_two_backends_seen", "client_two_backends_seen"):
            for text in r.get(k, []):
                print(f"#   {name} {k}: {text}")
    t.ok(len(load.acked) > 100 and not lost,
         f"{len(load.acked)} deliveries acknowledged, {len(lost)} lost", str(lost[:5]))
    t.ok(not dup, f"{len(dup)} messages stored twice (besides {len(dup_unanswered)} of the "
         f"{len(load.unanswered)} whose answer to the end of the message was lost with a fault)",
         str(dup[:5]))
    for m in dup_unanswered:
        print(f"#   stored twice after its answer was lost in {load.unanswered[m]}: {m}")
    failed = sum(r.get("logins_failed", 0) for n, r in results.items() if n != "total")
    t.ok(failed == 0, f"{failed} logins failed even after a retry 2 s later")
    two = sum(r.get("backend_two_backends", 0) + r.get("client_two_backends", 0)
              for n, r in results.items() if n != "total")
    t.ok(two == 0 and who.rounds > 100,
         f"no user on two backends at once ({who.rounds} doveadm who rounds)")
    if report:
        with open(report, "w") as f:
            json.dump(results, f, indent=2, default=str)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--report", help="write the measurements as JSON here")
    args = ap.parse_args()
    if ul.USHERD is None or ul.USHERCTL is None:
        print("1..0 # SKIP needs $USHERD and $USHERCTL")
        return ul.SKIP_STATUS
    status = in_own_netns()
    if status is not None:
        return status
    return ul.run_test(lambda lab, t: run(lab, t, args.report), users=USERS)


if __name__ == "__main__":
    sys.exit(main())
