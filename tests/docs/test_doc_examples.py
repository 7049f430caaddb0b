#!/usr/bin/env python3
"""Runs every shell example in README.md and doc/*.md that needs no live ring, as written.

Each command line of a ```sh block is taken from the repository root's point of view: it runs in
a scratch directory where build/, doc/ and scenarios/ point at the real ones (so files it writes,
such as split.svg, land there), with build/sim on PATH. A trailing "# exit N" comment is the
status the line must end with; otherwise 0. Lines that need a live ring, root, or run for many
minutes are listed in NOT_RUN with the reason; a line that fits neither list fails the test, so a
new example is either run here or said not to be.

Output: TAP, one test per command line.
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

SRC = os.environ.get("USHER_SOURCE_ROOT") or os.path.dirname(os.path.dirname(
    os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("USHER_BUILD_ROOT") or os.path.join(SRC, "build")

# First word of a command -> why it is not run here.
NOT_RUN = {
    "tools/demo": "the main job: minutes of real processes (tools/test runs its parts)",
    "tools/test": "the test suite itself",
    "tools/bench-ring": "a benchmark of several minutes (doc/performance.md)",
    "tools/bench-sim": "a benchmark of several minutes (doc/performance.md)",
    "tools/bench-proxy": "a benchmark with real Dovecot (doc/performance.md)",
    "tools/bench-lmtp": "a benchmark with real Dovecot (doc/performance.md)",
    "tools/build": "a second build of the whole tree, minutes (tools/bench-sim makes it)",
    "sudo": "needs root and real processes (tools/fidelity)",
    "usherd": "starts a ring member (tests/integration does)",
    "usherctl": "talks to a running usherd (tests/integration does)",
    "doveadm": "talks to a running Dovecot or usherd (tests/integration does)",
}
# Whole files that describe a procedure on production machines, with the operator's own files.
NOT_RUN_FILES = {
    "doc/migration.md": "a procedure on production directors with the operator's own files",
}
RUN = ("build/sim/ushersim", "ushersim")
TIMEOUT = 600


def examples():
    """(file, line number, command, expected exit) for every command line of every sh block."""
    files = ["README.md"] + sorted("doc/" + f for f in os.listdir(os.path.join(SRC, "doc"))
                                   if f.endswith(".md"))
    for rel in files:
        lines = open(os.path.join(SRC, rel), encoding="utf-8").read().split("\n")
        in_block = False
        pending, start = "", 0
        for no, line in enumerate(lines, 1):
            stripped = line.strip()
            if stripped.startswith("```"):
                in_block = not in_block and stripped[3:].strip() == "sh"
                continue
            if not in_block or not stripped or (stripped.startswith("#") and not pending):
                continue
            if not pending:
                start = no
            if stripped.endswith("\\"):
                pending += stripped[:-1] + " "
                continue
            text = pending + stripped
            pending = ""
            hash_mark = re.search(r"\s#", text)
            command, comment = ((text[:hash_mark.start()], text[hash_mark.end():])
                                if hash_mark else (text, ""))
            command = command.strip()
            m = re.match(r"exit (\d+)", comment.strip())
            yield rel, start, command, int(m.group(1)) if m else 0


def scratch():
    d = tempfile.mkdtemp(prefix="usher-doc-examples-")
    for name, target in (("build", BUILD), ("doc", os.path.join(SRC, "doc")),
                         ("scenarios", os.path.join(SRC, "scenarios"))):
        os.symlink(target, os.path.join(d, name))
    return d


def main():
    if not os.access(os.path.join(BUILD, "sim", "ushersim"), os.X_OK):
        print("1..0 # SKIP no build/sim/ushersim in %s" % BUILD)
        return 0
    work = scratch()
    env = dict(os.environ, PATH=os.path.join(BUILD, "sim") + os.pathsep + os.environ["PATH"])
    env.pop("G_DEBUG", None)
    seen = set()
    results = []
    try:
        for rel, no, command, want in examples():
            where = "%s:%d: %s" % (rel, no, command)
            first = command.split()[0]
            if rel in NOT_RUN_FILES:
                results.append((True, where, "not run: " + NOT_RUN_FILES[rel]))
                continue
            if first in NOT_RUN:
                results.append((True, where, "not run: " + NOT_RUN[first]))
                continue
            if first not in RUN:
                results.append((False, where, "neither run here nor listed as not run "
                                "(tests/docs/test_doc_examples.py)"))
                continue
            if command in seen:
                results.append((True, where, "run above"))
                continue
            seen.add(command)
            try:
                p = subprocess.run(["bash", "-c", command], cwd=work, env=env, timeout=TIMEOUT,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            except subprocess.TimeoutExpired:
                results.append((False, where, "still running after %d s" % TIMEOUT))
                continue
            ok = p.returncode == want
            why = "exit %d (documented %d)" % (p.returncode, want)
            if not ok:
                tail = (p.stderr or p.stdout).decode("utf-8", "replace").strip().splitlines()[-5:]
                why += ": " + " | ".join(tail)
            results.append((ok, where, why))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("1..%d" % len(results))
    for i, (ok, where, why) in enumerate(results, 1):
        print("%s %d - %s # %s" % ("ok" if ok else "not ok", i, where, why))
    ran = sum(1 for _, _, why in results if why.startswith("exit"))
    print("# %d examples, %d run, %d failed" % (len(results), ran,
                                              sum(1 for ok, _, _ in results if not ok)))
    return 0 if all(ok for ok, _, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
