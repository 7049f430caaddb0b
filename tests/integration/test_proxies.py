#!/usr/bin/env python3
"""test_proxies.py - real nginx mail and a real Dovecot proxy with a Lua passdb, each pointed at a
different usherd of a ring of three, route logins of the same user to the one backend the ring
assigned (usherctl explain on the third usherd).

Lab: 3 Dovecot backends (127.N.2.1-3), a ring of 3 usherd (127.N.1.1-3, each with an [http]
listener on port 8080), nginx mail on 127.N.3.1 (auth_http = usherd #1's /nginx-auth) and a Dovecot
2.3 proxy on 127.N.3.2 whose Lua passdb asks usherd #2's /lookup (LuaSocket).

1. The same 20 users log in over IMAP through nginx and through the Dovecot proxy (every fourth
   over POP3 too, through both), the proxy that goes first alternating: every login of a user
   reaches one backend (the IMAP ID's x-lab-backend, or the backend's POP3 login log), it is the
   backend usherd #3's `usherctl explain` shows as the directory entry (and #1 and #2 agree), and
   each proxy's own log names that backend as the upstream.
2. A wrong password through each proxy, IMAP and POP3, is refused by that backend (the proxies do
   not check passwords): AUTHENTICATIONFAILED / -ERR [AUTH], and the backend logs the failure.
3. /refresh (POST on usherd #2, GET on #1) moves a user's expiry forward, seen by usherd #3
   through `usherctl explain --json` and USER-LOOKUP; the backend stays.
4. With every backend down, a user nobody has placed cannot be placed: the login request waits
   (as in Dovecot's director) for usherd's 30 s bound and fails; nginx then gets usherd's
   temporary failure (shown after Auth-Wait: 3 s, connection kept for a retry), /lookup answers
   503 and the Dovecot proxy [UNAVAILABLE] - all three asked at once, so this costs 33 s.  Users
   with an entry still log in meanwhile.  Backends back up: the new user logs in.
5. usherd #1 stopped: nginx logins fail with a temporary error (nginx's "internal server error",
   nginx keeps running), logins through the Dovecot proxy (usherd #2) still work and still agree
   with usherd #3; usherd #1 restarted: nginx logins work again.
6. usherd #2 stopped: the Dovecot proxy answers [UNAVAILABLE] (its Lua passdb's temporary
   failure) and keeps the connection; nginx (usherd #1) still works.

Prints TAP-style lines; exits 0 pass, 1 fail, 77 skipped (no Dovecot, usherd, usherctl, nginx mail
module, Dovecot Lua passdb or LuaSocket here).
"""

import os
import re
import sys
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import usherlab as ul  # noqa: E402

USERS = 20
HTTP_PORT = 8080


class _Call:
    """A function run in a thread; result() returns its value or the exception it raised."""

    def __init__(self, fn):
        self.value = None
        self.thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self.thread.start()

    def _run(self, fn):
        try:
            self.value = fn()
        except Exception as e:  # reported by the check that looks at it
            self.value = e

    def result(self, timeout=120.0):
        self.thread.join(timeout)
        return self.value


def run_parallel(calls):
    """{name: function} -> {name: _Call}, all started now."""
    return {name: _Call(fn) for name, fn in calls.items()}


def entry_backend(u, user):
    e = u.explain(user)["entry"]
    return None if e is None else e["backend"]


def login(lab, proxy, proto, user, **kw):
    """One login through a proxy -> the backend that served it."""
    if proto == "imap":
        return lab.imap_login(proxy.ip, ul.IMAP_PORT, user, **kw).backend
    # nginx passes no client address to the backend: find the login by user name only.
    return lab.pop3_login(proxy.ip, ul.POP3_PORT, user,
                          match_client=not isinstance(proxy, ul.NginxMail), **kw).backend


def nginx_upstreams(ng, offset=0):
    """{user: {upstream ip}} from nginx's error.log ('client logged in ... upstream: IP:PORT')."""
    out = {}
    for m in re.finditer(r'client logged in, .* login: "([^"]+)", upstream: ([\d.]+):\d+',
                         ng.log_since(offset)):
        out.setdefault(m.group(1), set()).add(m.group(2))
    return out


def dovecot_upstreams(dp, offset=0):
    """{user: {backend ip}} from the Dovecot proxy's log ('proxy(user,IP:PORT): Started')."""
    out = {}
    for m in re.finditer(r"proxy\(([^,]+),([\d.]+):\d+\): Started proxying", dp.log_since(offset)):
        out.setdefault(m.group(1), set()).add(m.group(2))
    return out


def agreement(lab, t, us, ng, dp, users, label, pop3_every=4, nginx=True):
    """Logs every user in through both proxies (or only dp) and compares with usherd #3."""
    bad, seen = [], {}
    for n, user in enumerate(users):
        proxies = [ng, dp] if nginx else [dp]
        if n % 2:
            proxies.reverse()
        got = {}
        for p in proxies:
            got[f"{p.name} imap"] = login(lab, p, "imap", user)
            if pop3_every and n % pop3_every == 0:
                got[f"{p.name} pop3"] = login(lab, p, "pop3", user)
        entries = {u.name: entry_backend(u, user) for u in us if u.running()}
        want = entries[us[2].name]
        seen[user] = want
        if want is None or any(b != want for b in got.values()) or \
                any(e != want for e in entries.values()):
            bad.append(f"{user}: logins {got}, usherctl explain entries {entries}")
    n_logins = len(users) * (2 if nginx else 1) + (len(users) + pop3_every - 1) // pop3_every * (
        2 if nginx else 1)
    t.ok(not bad, f"{label}: every user's logins ({n_logins} in all) reached the one backend "
         f"usherd #3 explains as its directory entry", "\n".join(bad))
    return seen


def part_proxies(lab, t):
    bs = [lab.dovecot_backend(lab.backend_ip(i), extra_conf=ul.NO_AUTH_PENALTY) for i in (1, 2, 3)]
    ring = [lab.director_ip(i) for i in (1, 2, 3)]
    us = [lab.usherd(ip, ring=ring, backends=bs, http_port=HTTP_PORT)
          for ip in ring]
    ng = lab.nginx_mail(lab.proxy_ip(1), us[0])
    dp = lab.dovecot_lua_proxy(lab.proxy_ip(2), us[1])
    clients = iter(range(1, 255))

    def fresh_client():
        # Failing logins come from addresses of their own: the Dovecot proxy keeps the auth
        # penalty (per client address, 2-15 s after a failure) a real proxy would have.
        return lab.client_ip(next(clients))
    t0 = time.monotonic()
    lab.start_all()
    t_start = time.monotonic() - t0
    t_sync = lab.wait_ring_synced(us, timeout=45)
    t.ok(True, f"3 backends, a ring of 3 usherd with [http] listeners, nginx mail ({ng.ip}, "
         f"auth_http {ng.auth_http}) and a Dovecot Lua proxy ({dp.ip}, {dp.lookup}) started; "
         "ring synced")
    t.diag(f"timing: everything started in {t_start:.2f}s (nginx ready after "
           f"{ng.ready_after:.2f}s, Dovecot proxy {dp.ready_after:.2f}s), ring synced "
           f"{t_sync:.2f}s later")
    t.ok(len(ng.workers()) >= 1, f"nginx runs as master {ng.pid} plus workers {ng.workers()} in "
         "one process group")

    # -- 1: the same users through both proxies, against usherctl explain on usherd #3
    users = [f"user{i}" for i in range(1, USERS + 1)]
    ng_off, dp_off = ng.log_size(), dp.log_size()
    t0 = time.monotonic()
    where = agreement(lab, t, us, ng, dp, users, "nginx (usherd #1) and Dovecot Lua proxy "
                      "(usherd #2)")
    t.diag(f"timing: {USERS} users through both proxies (IMAP, every 4th POP3 too) with 3 "
           f"explains each in {time.monotonic() - t0:.1f}s")
    used = sorted(set(where.values()) - {None})
    t.ok(len(used) >= 2, f"the users are spread over several backends ({used})")
    ngu, dpu = nginx_upstreams(ng, ng_off), dovecot_upstreams(dp, dp_off)
    bad = [f"{u}: nginx {ngu.get(u)}, Dovecot proxy {dpu.get(u)}, usherd {where[u]}"
           for u in users if ngu.get(u) != {where[u]} or dpu.get(u) != {where[u]}]
    t.ok(not bad, "nginx's error.log and the Dovecot proxy's log name exactly that backend as "
         "each user's upstream", "\n".join(bad))

    # -- 2: wrong passwords are refused by the backend, not by the proxies
    for p, proto, port, user in ((ng, "imap", ul.IMAP_PORT, users[0]),
                                 (ng, "pop3", ul.POP3_PORT, users[1]),
                                 (dp, "imap", ul.IMAP_PORT, users[2]),
                                 (dp, "pop3", ul.POP3_PORT, users[3])):
        offsets = {b: b.log_size() for b in bs}
        r = ul.raw_login(p.ip, port, proto, user, "wrong-password", source_ip=fresh_client())
        refused = (r.answer.startswith("L1 NO [AUTHENTICATIONFAILED]") if proto == "imap"
                   else r.answer.startswith("-ERR [AUTH]"))
        pat = re.compile(rf"{proto}-login: Info: .*auth failed.*user=<{user}>")

        def failed_on():
            return [b.ip for b, off in offsets.items() if pat.search(b.log_since(off))]
        ul.poll_until(failed_on, 5.0)
        t.ok(refused and failed_on() == [where[user]],
             f"{p.kind} {proto.upper()}: a wrong password for {user} is refused by its backend "
             f"{where[user]} ({r.answer!r} after {r.elapsed:.2f}s, connection "
             f"{'closed' if r.closed else 'kept'})",
             f"{r!r}\nbackends that logged an auth failure: {failed_on()}")
    t.ok(lab.imap_login(ng.ip, ul.IMAP_PORT, users[0]).backend == where[users[0]],
         f"{users[0]} logs in through nginx with the right password right after")

    # -- 3: /refresh keeps an entry
    for member, method, user in ((us[1], "POST", users[4]), (us[0], "GET", users[5])):
        before = us[2].explain(user)["entry"]
        with us[2].admin() as a:
            lookup_before = a.user_lookup(user)
        # Timestamps are whole seconds: let the clock pass the entry's second.
        ul.poll_until(lambda: time.time() >= before["timestamp"] + 1.05, 3.0, interval=0.05)
        t0 = time.monotonic()
        status, _, body = member.http_get(f"/refresh?user={user}", method=method)
        moved = ul.poll_until(
            lambda: us[2].explain(user)["entry"]["expires"] > before["expires"], 10.0,
            interval=0.05)
        after = us[2].explain(user)["entry"]
        with us[2].admin() as a:
            lookup_after = a.user_lookup(user)
        t.ok(status == 204 and moved and after["backend"] == before["backend"]
             and lookup_after[1] > lookup_before[1] and lookup_after[1] == after["expires"],
             f"{method} /refresh?user={user} on {member.name}: {status}; usherd #3's entry "
             f"expiry moved {before['expires']} -> {after['expires']} in "
             f"{time.monotonic() - t0:.2f}s (USER-LOOKUP {lookup_before[1]} -> "
             f"{lookup_after[1]}), backend {after['backend']} kept",
             f"body {body!r}\nbefore {before} {lookup_before}\nafter {after} {lookup_after}")
    status, _, _ = us[1].http_get("/refresh?user=nobody-has-placed-me", method="POST")
    t.ok(status == 204 and us[2].explain("nobody-has-placed-me")["entry"] is None,
         f"/refresh of a user without an entry answers {status} and creates none")

    # -- 4: nobody can be placed while every backend is down
    for b in bs:
        rc, out, err = us[2].usherctl("down", b.ip)
        if rc != 0:
            t.ok(False, f"usherctl down {b.ip}", f"exit {rc}: {out}{err}")
    ok = ul.poll_until(lambda: all(h["state"] == "D" for u in us for h in u.host_list()), 10.0)
    t.ok(ok, "usherctl down on usherd #3 for every backend: every usherd sees them down")
    # A login request for a user without an entry now waits (as in Dovecot's director) until
    # usherd's 30 s bound, then fails: ask through nginx, the Dovecot proxy and /lookup at once.
    newcomer = f"user{USERS + 1}"
    dp_off = dp.log_size()
    waits = {
        "nginx": lambda: ul.raw_login(ng.ip, ul.IMAP_PORT, "imap", newcomer, timeout=60,
                                      source_ip=fresh_client()),
        "dovecot": lambda: ul.raw_login(dp.ip, ul.IMAP_PORT, "imap", newcomer, timeout=60,
                                        source_ip=fresh_client()),
        "lookup": lambda: us[1].http_get(f"/lookup?user={newcomer}", timeout=60),
    }
    t0 = time.monotonic()
    results = run_parallel(waits)
    t.ok(login(lab, ng, "imap", users[6]) == where[users[6]] and
         login(lab, dp, "imap", users[7]) == where[users[7]],
         "meanwhile users with an entry still log in through both proxies (down keeps them)")
    results = {k: v.result() for k, v in results.items()}
    t.diag(f"timing: the three waiting requests for {newcomer} ended after "
           f"{time.monotonic() - t0:.1f}s")
    r = results["nginx"]
    t.ok(isinstance(r, ul.RawLogin) and r.answer.startswith("L1 NO ")
         and "try again" in r.answer.lower() and not r.closed and r.elapsed >= 32,
         f"nginx: {newcomer} (no entry, no backend up) gets usherd's temporary failure after "
         f"30 s plus Auth-Wait 3 s ({getattr(r, 'elapsed', 0):.1f}s: "
         f"{getattr(r, 'answer', r)!r}), connection kept for a retry", repr(r))
    r = results["lookup"]
    t.ok(isinstance(r, tuple) and r[0] == 503 and '"error"' in r[2],
         f"/lookup?user={newcomer} on usherd #2 answers {r[0] if isinstance(r, tuple) else r} "
         f"{r[2].strip() if isinstance(r, tuple) else ''}", repr(r))
    r = results["dovecot"]
    t.ok(isinstance(r, ul.RawLogin) and r.answer.startswith("L1 NO [UNAVAILABLE]")
         and not r.closed,
         f"Dovecot proxy: {newcomer} gets a temporary failure ({getattr(r, 'answer', r)!r}), "
         "connection kept", repr(r) + "\n" + dp.log_tail(5))
    t.ok("usherd answered 503" in dp.log_since(dp_off),
         "the Dovecot proxy's log shows the Lua passdb's reason (usherd answered 503)",
         dp.log_tail(10))
    for b in bs:
        us[0].usherctl("up", b.ip)
    t.ok(ul.poll_until(lambda: all(h["state"] == "U" for u in us for h in u.host_list()), 10.0),
         "usherctl up on usherd #1 for every backend: every usherd sees them up")
    got = (login(lab, ng, "imap", newcomer), login(lab, dp, "imap", newcomer),
           entry_backend(us[2], newcomer))
    t.ok(got[0] is not None and len(set(got)) == 1,
         f"backends up again: {newcomer} logs in through both proxies on {got[0]} (explain: "
         f"{got[2]})", repr(got))

    # -- 5: usherd #1 (nginx's auth_http) stopped
    us[0].stop()
    lab.wait_ring_without(us[0], us[1:], timeout=30)
    t_sync = lab.wait_ring_synced(us[1:], timeout=30)
    t.diag(f"timing: usherd #1 stopped, usherd #2 and #3 synced without it in {t_sync:.2f}s")
    ng_off = ng.log_size()
    ri = ul.raw_login(ng.ip, ul.IMAP_PORT, "imap", users[0], source_ip=fresh_client())
    rp = ul.raw_login(ng.ip, ul.POP3_PORT, "pop3", users[1], source_ip=fresh_client())
    t.ok(not ri.ok and "internal server error" in " ".join(ri.lines).lower() and ri.closed,
         f"nginx IMAP with usherd #1 down: a temporary error, not a hang ({ri.lines!r}, "
         f"closed, {ri.elapsed:.2f}s)", repr(ri))
    t.ok(not rp.ok and "internal server error" in " ".join(rp.lines).lower() and rp.closed,
         f"nginx POP3 with usherd #1 down: a temporary error ({rp.lines!r}, closed)", repr(rp))
    log = ng.log_since(ng_off)
    t.ok("Connection refused" in log and "http auth state" in log,
         "nginx's error.log says why: connect() to auth_http refused in the http auth state",
         ng.log_tail(10))
    t.ok(ng.running() and len(ng.workers()) >= 1 and
         ul._tcp_ready(ng.ip, ul.IMAP_PORT), "nginx itself keeps running (master, workers, "
         "greeting)", ng.describe_processes())
    agreement(lab, t, us, ng, dp, users + [f"user{i}" for i in range(USERS + 2, USERS + 6)],
              "usherd #1 down: Dovecot Lua proxy only (24 users, 4 new)", nginx=False)
    us[0].start()
    t_back = lab.wait_ring_synced(us, timeout=30)
    again = agreement(lab, t, us, ng, dp, users[:6], f"usherd #1 back (ring synced in "
                      f"{t_back:.2f}s): nginx and the Dovecot proxy")
    t.ok(all(again[u] == where[u] for u in users[:6]), "and nobody moved meanwhile")

    # -- 6: usherd #2 (the Lua passdb's /lookup) stopped
    us[1].stop()
    lab.wait_ring_without(us[1], [us[0], us[2]], timeout=30)
    lab.wait_ring_synced([us[0], us[2]], timeout=30)
    dp_off = dp.log_size()
    r = ul.raw_login(dp.ip, ul.IMAP_PORT, "imap", users[0], source_ip=fresh_client())
    t.ok(r.answer.startswith("L1 NO [UNAVAILABLE]") and not r.closed,
         f"Dovecot proxy with usherd #2 down: a temporary failure ({r.answer!r} after "
         f"{r.elapsed:.2f}s), connection kept", repr(r))
    t.ok("usherd unreachable" in dp.log_since(dp_off),
         "its log shows the Lua passdb's reason (usherd unreachable)", dp.log_tail(5))
    r = ul.raw_login(dp.ip, ul.POP3_PORT, "pop3", users[1], source_ip=fresh_client())
    t.ok(r.answer.startswith("-ERR [SYS/TEMP]") or r.answer.startswith("-ERR [UNAVAILABLE]")
         or "temporary" in r.answer.lower(),
         f"Dovecot proxy POP3 with usherd #2 down: {r.answer!r} after {r.elapsed:.2f}s", repr(r))
    t.ok(login(lab, ng, "imap", users[0]) == where[users[0]],
         "nginx (usherd #1) still routes while usherd #2 is down")


def main():
    for ok, reason in ((ul.USHERD and os.access(ul.USHERD, os.X_OK), "set $USHERD to the usherd "
                        "binary"),
                       (ul.USHERCTL and os.access(ul.USHERCTL, os.X_OK), "set $USHERCTL to the "
                        "usherctl binary")):
        if not ok:
            print(f"1..0 # SKIP {reason}")
            return ul.SKIP_STATUS
    for check in (ul.dovecot_available, ul.nginx_mail_available, ul.dovecot_lua_available):
        reason = check()
        if reason:
            print(f"1..0 # SKIP {reason}")
            return ul.SKIP_STATUS
    return ul.run_test(part_proxies, users=USERS + 10)


if __name__ == "__main__":
    sys.exit(main())
