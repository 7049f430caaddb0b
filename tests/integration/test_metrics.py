#!/usr/bin/env python3
"""test_metrics.py - usherd's /metrics read by a real Prometheus text-format parser
(python3-prometheus-client), next to a Dovecot director in the same ring.

A ring of {1 Dovecot + 2 usherd}: logins through the Dovecot director, then every usherd's
/metrics must parse, have a HELP and a TYPE for every family, counters ending in _total, the
expected labels, and figures that agree with the ring (users per backend equal to what
doveadm director status says, every link synced, usherctl stats equal to /metrics).
Exits 0 pass, 1 fail, 77 skipped (no Dovecot, no usherd, or no prometheus_client).
"""

import json
import os
import subprocess
import sys
import urllib.request

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import usherlab as ul  # noqa: E402

try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError:
    # tools/deps installs Debian's python3-prometheus-client; a python3 that is not Debian's
    # (pyenv, a venv) does not look in dist-packages: the package is pure Python, so add it.
    sys.path.append("/usr/lib/python3/dist-packages")
    try:
        from prometheus_client.parser import text_string_to_metric_families
    except ImportError:
        text_string_to_metric_families = None

HTTP_PORT = 8080


def scrape(ip):
    with urllib.request.urlopen(f"http://{ip}:{HTTP_PORT}/metrics", timeout=10) as r:
        assert r.headers.get_content_type() == "text/plain", r.headers
        return r.read().decode()


def run(lab, t):
    bs = [lab.dovecot_backend(lab.backend_ip(i)) for i in (1, 2, 3)]
    ring = [lab.director_ip(i) for i in (1, 2, 3)]
    d1 = lab.dovecot_director(ring[0], ring=ring, backends=bs)
    us = [lab.usherd(ip, ring=ring, backends=bs,
                     extra_conf=f"[http]\nlisten = {ip}:{HTTP_PORT}\n")
          for ip in ring[1:]]
    members = [d1] + us
    lab.start_all()
    lab.wait_ring_synced(members, timeout=45)
    for i in range(1, 41):
        lab.imap_login(d1.ip, ul.IMAP_PORT, f"user{i}")
    ul.poll_until(lambda: all(sum(int(h["users"]) for h in m.host_list()) == 40 for m in members),
                  10.0)
    truth = {h["ip"]: int(h["users"]) for h in d1.host_list()}
    for u in us:
        text = scrape(u.ip)
        try:
            families = {f.name: f for f in text_string_to_metric_families(text)}
            t.ok(True, f"{u.name}: /metrics parses as Prometheus text ({len(families)} families)")
        except Exception as e:
            t.ok(False, f"{u.name}: /metrics parses as Prometheus text", str(e))
            continue
        helps = [line.split()[2] for line in text.splitlines() if line.startswith("# HELP ")]
        types = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
        t.ok(helps == types and len(set(types)) == len(types),
             f"{u.name}: one # HELP and one # TYPE per family, no family twice")
        bad = [f.name for f in families.values() if f.type == "counter"
               and not any(s.name.endswith("_total") for s in f.samples)]
        t.ok(not bad, f"{u.name}: counter samples end in _total", ", ".join(bad))
        users = {s.labels["backend"]: int(s.value) for s in families["usher_backend_users"].samples}
        t.ok(users == truth, f"{u.name}: usher_backend_users equals the Dovecot director's HOST-LIST",
             f"{users} != {truth}")
        t.ok(set(families["usher_backend_users"].samples[0].labels) == {"backend", "tag",
                                                                          "hostname"},
             f"{u.name}: backend metrics carry backend, tag and hostname labels")
        links = families["usher_ring_link_synced"].samples
        t.ok(len(links) == 2 and all(s.value == 1 for s in links)
             and {s.labels["link"] for s in links} == {"left", "right"},
             f"{u.name}: both ring links synced", str(links))
        synced = families["usher_ring_synced"].samples[0].value
        t.ok(synced == 1, f"{u.name}: usher_ring_synced is 1")
        stats = json.loads(subprocess.run(
            [os.environ.get("USHERCTL", "usherctl"), "-a", u.admin_socket, "--json", "stats"],
            capture_output=True, text=True, check=True).stdout)
        lines_in = families["usher_lines_in"].samples[0].value
        t.ok(lines_in <= stats["director"]["lines_in"],
             f"{u.name}: usherctl stats and /metrics report the same counters "
             f"(lines_in {lines_in} then {stats['director']['lines_in']})")


def main():
    if ul.USHERD is None or text_string_to_metric_families is None:
        print("1..0 # SKIP needs $USHERD and python3-prometheus-client")
        return ul.SKIP_STATUS
    return ul.run_test(run, users=50)


if __name__ == "__main__":
    sys.exit(main())
