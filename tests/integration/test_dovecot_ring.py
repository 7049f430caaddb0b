#!/usr/bin/env python3
"""test_dovecot_ring.py - smoke test of the lab: a ring of 3 real Dovecot 2.3 directors in front of
3 Dovecot backends on loopback.

Forms the ring, logs 20 users in over IMAP through every director, checks that every director
sends a user to the same backend and that `doveadm director status USER` agrees, then kills one
director's master with SIGKILL, restarts it and waits for the ring to re-sync.  Prints TAP-style
lines and timings; exits 0 (pass), 1 (fail) or 77 (skipped: no Dovecot 2.3 here).
"""

import os
import sys
import time

sys.dont_write_bytecode = True          # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import usherlab as ul  # noqa: E402

USERS = 20


def login_all(lab, t, directors, users, label):
    """Log every user in through every director; return {user: backend} (None if they differ)."""
    t0 = time.monotonic()
    where = {}
    bad = []
    logins = 0
    for n, user in enumerate(users):
        seen = []
        for k in range(len(directors)):            # rotate which director sees the user first
            d = directors[(n + k) % len(directors)]
            s = lab.imap_login(d.ip, ul.IMAP_PORT, user)
            logins += 1
            seen.append((d.name, s.backend))
        backends = {b for _, b in seen}
        if len(backends) != 1 or None in backends:
            bad.append(f"{user}: {seen}")
            where[user] = None
        else:
            where[user] = backends.pop()
    dt = time.monotonic() - t0
    t.ok(not bad, f"{label}: {len(users)} users x {len(directors)} directors over IMAP, each user "
         f"on one backend through every director", "\n".join(bad))
    t.diag(f"timing: {logins} IMAP logins (connect+LOGIN+ID+LOGOUT, one at a time) in {dt:.2f}s "
           f"= {logins / dt:.0f} logins/s")
    return where


def check_status(t, directors, where, label, check_hashed=True):
    bad = []
    for d in directors:
        for user, backend in where.items():
            cur, hashed, initial = d.status_user(user)
            if cur != backend or (check_hashed and hashed != backend):
                bad.append(f"{d.name} {user}: login went to {backend}, doveadm says "
                           f"current={cur} hashed={hashed} initial={initial}")
    t.ok(not bad, f"{label}: doveadm director status USER agrees with every login on "
         f"{', '.join(d.name for d in directors)}", "\n".join(bad[:20]))


def run(lab, t):
    backends = [lab.dovecot_backend(lab.backend_ip(i)) for i in (1, 2, 3)]
    ring = [lab.director_ip(i) for i in (1, 2, 3)]
    directors = [lab.dovecot_director(ip, ring=ring, backends=backends) for ip in ring]
    users = [f"user{i}" for i in range(1, USERS + 1)]

    t0 = time.monotonic()
    lab.start_all()
    t_start = time.monotonic() - t0
    t.ok(True, f"3 backends and 3 directors started, each as dovecot -F -c FILE ({t_start:.2f}s)")
    t.diag("processes per instance: " + ", ".join(f"{i.name}={len(i.processes())}"
                                                  for i in lab.instances))

    t_ring = lab.wait_ring_synced(directors, timeout=45)
    t.ok(True, "doveadm director ring status shows every link synced on every director")
    t.diag(f"timing: ring synced {t_ring:.2f}s after the last instance was ready, "
           f"{t_start + t_ring:.2f}s after the first start")
    rows = directors[0].ring_status()
    t.diag("d1 ring status: " + "; ".join(f"{r['director ip']} {r['type']} {r['status']}"
                                          for r in rows))

    with directors[0].admin() as a:
        admin_rows = a.director_list()
    t.ok([(r["director ip"], r["type"]) for r in admin_rows] ==
         [(r["director ip"], r["type"]) for r in rows],
         "DIRECTOR-LIST over the admin socket matches doveadm director ring status")

    where = login_all(lab, t, directors, users, "fresh ring")
    spread = sorted({b for b in where.values() if b})
    t.ok(len(spread) == 3, f"the users are spread over all three backends ({spread})")
    check_status(t, directors, where, "fresh ring")

    with directors[1].admin() as a:
        cur, _, hashed, _ = a.user_lookup("user1")
    t.ok(cur == where["user1"] and hashed == where["user1"],
         f"USER-LOOKUP over the admin socket: user1 on {cur}")

    pop_bad = []
    for user in users[:5]:
        s = lab.pop3_login(directors[2].ip, ul.POP3_PORT, user)
        if s.backend != where[user]:
            pop_bad.append(f"{user}: POP3 reached {s.backend}, IMAP {where[user]}")
    t.ok(not pop_bad, "POP3 through d3 reaches the same backend as IMAP (5 users)",
         "\n".join(pop_bad))

    refused = lab.lmtp_deliver(directors[0].ip, ul.LMTP_PORT, "user1")
    newdir = os.path.join(lab.mail_root, "user1", "Maildir", "new")
    t.ok(not refused and os.path.isdir(newdir) and len(os.listdir(newdir)) == 1,
         "LMTP through d1 delivers to user1's maildir")

    crash_and_restart(lab, t, directors, users, where, group=False)
    crash_and_restart(lab, t, directors, users, where, group=True)


def crash_and_restart(lab, t, directors, users, where, group):
    """kill -9 d2 (its master only, or its whole process group), check the rest of the ring
    carries on, restart it and wait for the ring to re-sync."""
    victim = directors[1]
    others = [directors[0], directors[2]]
    how = "the whole process group" if group else "the master"
    label = f"kill -9 of {victim.name}'s {'group' if group else 'master'}"
    # Sessions held open through d1 and through the victim, to see what the crash does to each.
    held = lab.imap_login(others[0].ip, ul.IMAP_PORT, "user2", keep=True)
    held_victim = lab.imap_login(victim.ip, ul.IMAP_PORT, "user3", keep=True)

    children = [p for p in victim.processes() if p != victim.pid]
    t.diag(f"{label}: master {victim.pid} and {len(children)} children: "
           + ", ".join(ul._cmdline(p).split("/")[-1] for p in children))
    t0 = time.monotonic()
    victim.kill9(group=group)
    lab.wait_ring_without(victim, others, timeout=120)
    t_gone = time.monotonic() - t0
    t.ok(True, f"{label}: d1 and d3 dropped their ring links to {victim.name}")
    t.diag(f"timing: links to the killed director gone {t_gone:.2f}s after kill -9 of {how}")
    lingering = []
    if not ul.poll_until(lambda: not victim.processes(), 0.5):
        lingering = [ul._cmdline(p).split("/")[-1] for p in victim.processes()]
    exited = ul.poll_until(lambda: not victim.processes(), 10.0)
    t_children = time.monotonic() - t0
    if exited:
        t.diag(f"timing: every process of {victim.name} gone {t_children:.2f}s after the kill"
               + (f" (still there after 0.5s: {', '.join(lingering)})" if lingering else ""))
    else:
        t.diag(f"children still alive {t_children:.1f}s after the kill:\n"
               f"{victim.describe_processes()}\n(stop() kills them)")
    victim.stop()                                  # reaps the master; SIGKILLs any leftovers
    t.ok(not victim.processes(), f"{label}: nothing left of the killed instance")
    try:
        held_victim.client.noop()
        t.diag(f"the IMAP session proxied by {victim.name} survived the kill")
    except Exception:
        t.diag(f"the IMAP session proxied by {victim.name} was cut by the kill")
    held_victim.close()

    down_bad = []
    t0 = time.monotonic()
    for user in users[:5]:
        s = lab.imap_login(others[0].ip, ul.IMAP_PORT, user)
        if s.backend != where[user]:
            down_bad.append(f"{user}: {s.backend} != {where[user]}")
    t.ok(not down_bad, f"{label}: with {victim.name} down, logins through d1 still reach the "
         f"same backends ({time.monotonic() - t0:.2f}s for 5)", "\n".join(down_bad))
    try:
        held.client.noop()
        t.ok(True, f"{label}: the session held open through d1 survives")
    except Exception as e:
        t.ok(False, f"{label}: the session held open through d1 survives", str(e))
    held.close()

    t0 = time.monotonic()
    victim.start(wait=True)
    t_up = time.monotonic() - t0
    t_resync = lab.wait_ring_synced(directors, timeout=30)
    t.ok(True, f"{label}: {victim.name} restarted; the ring re-synced on every director")
    t.diag(f"timing: restart to serving {t_up:.2f}s; then ring synced after {t_resync:.2f}s "
           f"({t_up + t_resync:.2f}s from restart)")

    # The restarted director starts empty and learns the users from its neighbours' handshake.
    check_status(t, [victim], where,
                 f"{label}: restarted {victim.name}, before any login through it")
    where2 = login_all(lab, t, directors, users, f"{label}: after the restart")
    t.ok(where2 == where, f"{label}: every user is still on the backend it had before",
         "\n".join(f"{u}: {where[u]} -> {where2[u]}" for u in users if where[u] != where2[u]))


def main():
    return ul.run_test(run, users=USERS)


if __name__ == "__main__":
    sys.exit(main())
