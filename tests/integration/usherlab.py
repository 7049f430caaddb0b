"""usherlab - start real Dovecot 2.3 directors and backends on loopback for integration tests.

Standard library only.  Every Dovecot instance gets its own directory with its own dovecot.conf,
base_dir, state_dir and log, and runs as `dovecot -F -c FILE` in a new session, so the lab owns the
master's PID and its process group (Dovecot's children stay in the master's group).  Everything the
lab starts is stopped by PID in Lab.stop(): on context-manager exit, at interpreter exit (atexit),
on SIGTERM (meson's timeout) and, should the test process be SIGKILLed, through the masters'
parent-death signal.

    with usherlab.Lab(users=20) as lab:          # addresses 127.0.x.y ($USHERLAB_NET moves them)
        backends = [lab.dovecot_backend(lab.backend_ip(i)) for i in (1, 2, 3)]   # 127.0.2.1-3
        ring = [lab.director_ip(i) for i in (1, 2, 3)]                          # 127.0.1.1-3
        directors = [lab.dovecot_director(ip, ring=ring, backends=backends) for ip in ring]
        lab.start_all()
        lab.wait_ring_synced(directors)
        s = lab.imap_login(ring[0], usherlab.IMAP_PORT, "user1")   # password usherlab.PASSWORD
        print(s.backend)                          # "127.0.2.x", from the backend's IMAP ID reply
        print(directors[0].status_user("user1"))  # (current, hashed, initial)

In front of a ring of usherd with [http] listeners, lab.nginx_mail(ip, usherd) runs nginx's
mail proxy (auth_http) and lab.dovecot_lua_proxy(ip, usherd) a Dovecot proxy with a Lua passdb
(/lookup); both are stopped by PID like the Dovecot instances.

See tests/integration/README.md for the Dovecot, nginx and Lua facts this relies on.
"""

import atexit
import ctypes
import glob
import http.client
import imaplib
import json
import os
import poplib
import re
import resource
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import threading
import time
import traceback

RING_PORT = 9090
IMAP_PORT = 10143
POP3_PORT = 10110
LMTP_PORT = 10024
SIEVE_PORT = 14190
SUBMISSION_PORT = 10587
RELAY_PORT = 10025  # the lab's SMTP sink, where backends' submission services relay
PASSWORD = "pass"
MAIL_UID = 65534  # nobody/nogroup: no system users to add

_PATH = os.environ.get("PATH", "") + ":/usr/sbin:/usr/bin:/sbin"
# $USHERLAB_DOVECOT / $USHERLAB_DOVEADM override the binaries (a path that does not exist makes
# dovecot_available() say no, which is how the skip path is tested).
DOVECOT = os.environ.get("USHERLAB_DOVECOT") or shutil.which("dovecot", path=_PATH)
DOVEADM = os.environ.get("USHERLAB_DOVEADM") or shutil.which("doveadm", path=_PATH)

SUN_PATH_MAX = 107  # struct sockaddr_un.sun_path, minus the NUL


class LabError(Exception):
    """A lab operation failed or a bounded wait ran out."""


def dovecot_available():
    """None if Dovecot 2.3 with the director can run here, else the reason it cannot."""
    if DOVECOT is None or not os.access(DOVECOT, os.X_OK):
        return ("dovecot is not installed "
                "(Debian: dovecot-core dovecot-imapd dovecot-pop3d dovecot-lmtpd)")
    if DOVEADM is None or not os.access(DOVEADM, os.X_OK):
        return "doveadm is not installed"
    try:
        out = subprocess.run([DOVECOT, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as e:
        return f"dovecot --version failed: {e}"
    if not out.stdout.startswith("2.3."):
        return f"need Dovecot 2.3 (the director was removed in 2.4), found {out.stdout.strip()!r}"
    for exe in ("director", "imap-login", "pop3-login", "imap", "pop3", "lmtp"):
        if not os.path.exists(os.path.join("/usr/lib/dovecot", exe)):
            return f"/usr/lib/dovecot/{exe} is missing (install dovecot-imapd, -pop3d, -lmtpd)"
    if os.geteuid() != 0:
        return "Dovecot instances must be started as root"
    return None


# ---------------------------------------------------------------------------------------------
# small helpers

def wait_for(what, predicate, timeout, interval=0.05, on_timeout=None):
    """Call predicate() until it returns something true; return that value.

    Raises LabError naming `what` (plus on_timeout(), e.g. a log tail) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            v = predicate()
            if v:
                return v
            last_exc = None
        except (OSError, LabError, EOFError, imaplib.IMAP4.error, poplib.error_proto) as e:
            last_exc = e
        if time.monotonic() >= deadline:
            msg = f"timed out after {timeout:.1f}s waiting for {what}"
            if last_exc is not None:
                msg += f" (last error: {last_exc})"
            if on_timeout is not None:
                msg += "\n" + on_timeout()
            raise LabError(msg)
        time.sleep(interval)


def poll_until(predicate, timeout, interval=0.05):
    """Like wait_for() but returns False instead of raising when time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def _tail(path, lines=30):
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 16384))
            data = f.read().decode("utf-8", "replace")
    except OSError as e:
        return f"({path}: {e})"
    return "\n".join(data.splitlines()[-lines:])


def _proc_stat(pid, tid=None):
    """(state, ppid, pgid) of a process (or of its thread tid), or None if it is gone."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    try:
        with open(path, "rb") as f:
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    rest = data[data.rfind(")") + 2:].split()
    return rest[0], int(rest[1]), int(rest[2])


def cpu_seconds(pid):
    """User plus system CPU time a process has used so far, in seconds."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read().decode("utf-8", "replace")
    rest = data[data.rfind(")") + 2:].split()
    return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")


def stop_process(pid, timeout=5):
    """SIGSTOP to pid, then waits until every thread of it is stopped (the signal only asks: a
    running thread goes on for a moment). True once stopped."""
    os.kill(pid, signal.SIGSTOP)

    def all_stopped():
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            return False
        for tid in tasks:
            st = _proc_stat(pid, tid)
            if st is not None and st[0] not in ("T", "t"):
                return False
        return True
    return poll_until(all_stopped, timeout, interval=0.005)


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        return "?"


def group_members(pgid):
    """PIDs of live (non-zombie) processes in process group pgid."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        st = _proc_stat(int(name))
        if st is not None and st[2] == pgid and st[0] != "Z":
            pids.append(int(name))
    return sorted(pids)


def wakeups(pids):
    """Voluntary context switches of every thread of pids, summed: how often they went to sleep
    (waiting for the network or another thread). The benchmarks print it per login or recipient:
    on a shared machine it varies far less between runs than CPU time. Gone processes count 0."""
    total = 0
    for pid in pids:
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/status") as f:
                    for line in f:
                        if line.startswith("voluntary_ctxt_switches:"):
                            total += int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def _tcp_listeners(port):
    """[(ip, inode)] of IPv4/IPv6 sockets listening on port (from /proc/net/tcp*)."""
    found = []
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    local, state, inode = parts[1], parts[3], parts[9]
                    hexip, hexport = local.split(":")
                    if state != "0A" or int(hexport, 16) != port:
                        continue
                    if v6:
                        raw = bytes.fromhex(hexip)
                        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                        ip = socket.inet_ntop(socket.AF_INET6, raw)
                    else:
                        ip = socket.inet_ntoa(bytes.fromhex(hexip)[::-1])
                    found.append((ip, inode))
        except OSError:
            pass
    return found


def _socket_owner(inode):
    needle = f"socket:[{inode}]"
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            for fd in os.listdir(f"/proc/{name}/fd"):
                if os.readlink(f"/proc/{name}/fd/{fd}") == needle:
                    return f"pid {name} ({_cmdline(int(name))})"
        except OSError:
            continue
    return "unknown process"


def check_port_free(ip, port):
    """Raise LabError if (ip, port) cannot be bound, naming whoever holds it."""
    for lip, inode in _tcp_listeners(port):
        if lip in (ip, "0.0.0.0", "::", "::ffff:" + ip):
            hint = ""
            if lip in ("0.0.0.0", "::"):
                hint = (" - a wildcard listener (the system Dovecot listens on *:143, *:110, *:24)"
                        " blocks every 127.x address on this port; pick another port")
            raise LabError(f"{ip}:{port} is taken: {lip}:{port} is listened on by "
                           f"{_socket_owner(inode)}{hint}")
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Dovecot: TIME_WAIT is fine
        s.bind((ip, port))
    except OSError as e:
        raise LabError(f"cannot bind {ip}:{port}: {e}") from None
    finally:
        s.close()


def _tcp_ready(ip, port, timeout=1.0, first=b""):
    """True once something accepts on (ip, port) and sends a greeting line (after `first`, e.g.
    the PROXY header a haproxy = yes listener waits for)."""
    with socket.create_connection((ip, port), timeout=timeout) as s:
        if first:
            s.sendall(first)
        return s.recv(1) != b""


def read_until_closed(sock, timeout=10.0):
    """Everything a socket (plain or TLS) still delivers until the peer closes it, or `timeout`
    seconds of silence."""
    data = b""
    sock.settimeout(timeout)
    try:
        while True:
            part = sock.recv(4096)
            if not part:
                break
            data += part
    except OSError:   # a timeout, a reset, a TLS error (ssl.SSLError is an OSError)
        pass
    return data


def raw_talk(host, port, lines, read_until=b"\r\n", timeout=10, source_ip=None):
    """Reads the greeting, sends raw `lines`, and returns (greeting, everything read after it
    until `read_until` appears or the connection closes)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    if source_ip:
        s.bind((source_ip, 0))
    s.connect((host, port))
    data = greeting = b""
    try:
        while b"\r\n" not in data:
            part = s.recv(4096)
            if not part:
                break
            data += part
        greeting, _, data = data.partition(b"\r\n")
        for chunk in lines:
            s.sendall(chunk)
        while read_until not in data:
            part = s.recv(65536)
            if not part:
                break
            data += part
    except (socket.timeout, ConnectionResetError):
        pass
    finally:
        s.close()
    return greeting, data


def http_request(ip, port, path, method="GET", headers=None, timeout=10.0):
    """One HTTP/1.1 request -> (status, {lowercased header: value}, body text)."""
    conn = http.client.HTTPConnection(ip, port, timeout=timeout)
    try:
        conn.request(method, path, headers=headers or {})
        r = conn.getresponse()
        body = r.read().decode("utf-8", "replace")
        return r.status, {k.lower(): v for k, v in r.getheaders()}, body
    finally:
        conn.close()


_libc = None


def _set_pdeathsig():
    """preexec_fn: the master gets SIGTERM if the test process dies, even by SIGKILL."""
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        _libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _ring_entry(e):
    """'ip', 'ip:port', (ip, port) or an object with .ip/.ring_port -> 'ip:port'."""
    if hasattr(e, "ip"):
        return f"{e.ip}:{getattr(e, 'ring_port', RING_PORT)}"
    if isinstance(e, tuple):
        return f"{e[0]}:{e[1]}"
    return e if ":" in e else f"{e}:{RING_PORT}"


def _backend_entry(e):
    """'ip', 'ip@tag', 'ip1-ip2' or an object with .ip -> the director_mail_servers word."""
    return e.ip if hasattr(e, "ip") else str(e)


def _quote(v):
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'


# ---------------------------------------------------------------------------------------------
# the director-admin wire protocol

def admin_escape(field):
    return (field.replace("\001", "\0011").replace("\t", "\001t")
            .replace("\r", "\001r").replace("\n", "\001n"))


def admin_unescape(field):
    out, i = [], 0
    while i < len(field):
        c = field[i]
        if c == "\001" and i + 1 < len(field):
            nxt = field[i + 1]
            out.append({"1": "\001", "t": "\t", "r": "\r", "n": "\n"}.get(nxt, nxt))
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


class AdminClient:
    """Speaks the director-admin protocol (Dovecot's base_dir/director-admin) directly.

    The server greets with VERSION\\tdirector-doveadm\\t1\\t0; we answer with our VERSION.
    Send one command and read its reply before the next: Dovecot drops a pipelined line that
    arrives while a command waits (spec section 6.1).  Invalid input makes the server close the
    connection without a reply (read_line() then raises EOFError)."""

    HANDSHAKE = "VERSION\tdirector-doveadm\t1\t0"

    def __init__(self, path, timeout=10.0, handshake=True):
        if len(path) > SUN_PATH_MAX:
            raise LabError(f"socket path too long for AF_UNIX: {path}")
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except OSError:
            self.sock.close()
            raise
        self.buf = b""
        self.server_version = None
        if handshake:
            self.send_line(self.HANDSHAKE)
            self.server_version = self.read_line()
            if not self.server_version.startswith("VERSION\tdirector-doveadm\t1\t"):
                raise LabError(f"{path}: unexpected greeting {self.server_version!r}")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def send_raw(self, data):
        self.sock.sendall(data if isinstance(data, bytes) else data.encode())

    def send_line(self, line):
        self.send_raw(line + "\n")

    def read_line(self):
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"{self.path}: connection closed by the server")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode("utf-8", "replace")

    def read_until_empty(self):
        lines = []
        while True:
            line = self.read_line()
            if line == "":
                return lines
            lines.append(line)

    def command(self, *fields):
        """Send one command (fields are escaped and tab-joined); return its single reply line."""
        self.send_line("\t".join(admin_escape(str(f)) for f in fields))
        return self.read_line()

    def command_multi(self, *fields):
        """Send one command; return the reply lines up to the terminating empty line."""
        self.send_line("\t".join(admin_escape(str(f)) for f in fields))
        return self.read_until_empty()

    def director_list(self):
        """DIRECTOR-LIST as rows of fields (see parse_director_list())."""
        return parse_director_list(self.command_multi("DIRECTOR-LIST"))

    def user_lookup(self, user, tag=None):
        """USER-LOOKUP -> (current, expire, hashed, initial); empty strings for 'none'."""
        fields = ["USER-LOOKUP", user] + ([tag] if tag is not None else [])
        reply = self.command(*fields).split("\t")
        if len(reply) != 4:
            raise LabError(f"USER-LOOKUP {user}: unexpected reply {reply!r}")
        return reply[0], int(reply[1]), reply[2], reply[3]


RING_COLUMNS = ["director ip", "port", "type", "last failed", "status", "ping ms", "input",
                "output", "buffered", "buffered peak", "last read", "last write"]


def parse_director_list(lines):
    """DIRECTOR-LIST lines -> list of dicts keyed like `doveadm director ring status` columns."""
    rows = []
    for line in lines:
        f = [admin_unescape(x) for x in line.split("\t")]
        rows.append(dict(zip(RING_COLUMNS, f)))
    return rows


def ring_rows_synced(rows, expect_members=None):
    """True if these ring-status rows show a synced ring.

    That is: the self row says 'ring synced', every connection row says 'synced', there is a
    left and a right connection when the ring has other members, and (if given) every
    expected member 'ip:port' appears."""
    me = [r for r in rows if r.get("type") == "self"]
    if len(me) != 1 or me[0].get("status") != "ring synced":
        return False
    conns = [r for r in rows if r.get("type") in ("left", "right", "in", "out")]
    if any(r.get("status") != "synced" for r in conns):
        return False
    others = [r for r in rows if r.get("type") not in ("self", "removed")]
    if others:
        types = {r.get("type") for r in conns}
        if "left" not in types or "right" not in types:
            return False
    if expect_members is not None:
        have = {f"{r.get('director ip')}:{r.get('port')}" for r in rows}
        if not set(expect_members) <= have:
            return False
    return True


# ---------------------------------------------------------------------------------------------
# clients

class Session:
    """One client login.  .backend is the backend IP that served it (None if unknown)."""

    def __init__(self, proto, user, host, port, client, backend, elapsed, local):
        self.proto = proto
        self.user = user
        self.host = host
        self.port = port
        self.client = client      # imaplib.IMAP4 / poplib.POP3, None once closed
        self.backend = backend
        self.elapsed = elapsed    # seconds from connect to a completed login (and ID)
        self.local = local        # the client's (ip, port)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def open(self):
        return self.client is not None

    def close(self):
        """Log out politely; on any error just drop the connection."""
        c, self.client = self.client, None
        if c is None:
            return
        try:
            if self.proto == "imap":
                c.logout()
            else:
                c.quit()
        except (OSError, EOFError, imaplib.IMAP4.error, poplib.error_proto):
            try:
                c.sock.close()
            except OSError:
                pass

    def __repr__(self):
        state = "open" if self.open else "closed"
        return f"<{self.proto} {self.user}@{self.host}:{self.port} -> {self.backend} ({state})>"


_ID_PAIR = re.compile(r'"((?:[^"\\]|\\.)*)"\s+(?:"((?:[^"\\]|\\.)*)"|NIL)', re.I)


def parse_imap_id(data):
    """The untagged ID reply ('("k" "v" ...)' bytes or str) -> dict."""
    if isinstance(data, (list, tuple)):
        data = b" ".join(d if isinstance(d, bytes) else str(d).encode() for d in data if d)
    if isinstance(data, bytes):
        data = data.decode("utf-8", "replace")
    return {m.group(1).lower(): m.group(2) for m in _ID_PAIR.finditer(data)}


def imap_id(conn, fields=None):
    """Send IMAP ID (RFC 2971) and return the server's answer as a dict."""
    arg = "NIL"
    if fields:
        arg = "(" + " ".join(f"{_quote(k)} {_quote(v)}" for k, v in fields.items()) + ")"
    imaplib.Commands["ID"] = ("NONAUTH", "AUTH", "SELECTED")   # imaplib has no ID of its own
    typ, _ = conn._simple_command("ID", arg)
    if typ != "OK":
        raise LabError(f"IMAP ID failed: {typ}")
    data = conn.untagged_responses.pop("ID", [])
    return parse_imap_id(data)


def imap_open(host, port, user, password=PASSWORD, timeout=10.0, source_ip=None):
    """Log in over IMAP and ask ID; return (connection, ID reply as a dict).  If either fails the
    connection is shut down and the error raised."""
    conn = _IMAP(host, port, timeout=timeout, source_ip=source_ip)
    try:
        conn.login(user, password)
        return conn, imap_id(conn)
    except BaseException:
        try:
            conn.shutdown()
        except OSError:
            pass
        raise


class SilentListener:
    """Accepts TCP connections on ip at each of ports and never sends a byte: a hung backend.
    close() drops them all."""

    def __init__(self, ip, ports):
        self.socks = []
        for port in ([ports] if isinstance(ports, int) else ports):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((ip, port))
            s.listen(128)
            s.settimeout(0.2)
            self.socks.append(s)
        self.conns = []
        self.stop = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.stop:
            for s in self.socks:
                try:
                    c, _ = s.accept()
                    self.conns.append(c)
                except socket.timeout:
                    continue
                except OSError:
                    return

    def close(self):
        self.stop = True
        self.thread.join(5)
        for c in self.conns + self.socks:
            c.close()


class FakeServer:
    """A fake backend, for what the lab's Dovecot cannot be made to do: listens on ip at each of
    ports and runs self.serve(conn, port), the subclass's side of the conversation, in a thread
    per connection. rcvbuf: a small receive buffer for the accepted connections (a slow reader).
    close() stops accepting."""

    def __init__(self, ip, ports, rcvbuf=None):
        self.stop = False
        self.socks = []
        for port in ([ports] if isinstance(ports, int) else ports):
            ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if rcvbuf is not None:
                ls.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            ls.bind((ip, port))
            ls.listen(16)
            ls.settimeout(0.2)
            self.socks.append(ls)
            threading.Thread(target=self._accept, args=(ls, port), daemon=True).start()

    def _accept(self, ls, port):
        while not self.stop:
            try:
                c, _ = ls.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._run, args=(c, port), daemon=True).start()

    def _run(self, c, port):
        c.settimeout(60)
        try:
            self.serve(c, port)
        except (OSError, IndexError, ValueError):
            pass
        finally:
            c.close()

    def serve(self, conn, port):
        raise NotImplementedError

    def close(self):
        self.stop = True
        for ls in self.socks:
            ls.close()


class RawLogin:
    """What a server answered to one login attempt made by raw_login()."""

    def __init__(self, greeting, lines, closed, elapsed):
        self.greeting = greeting  # the server's first line ("" if it closed at once)
        self.lines = lines        # every line after the greeting, up to the login's answer
        self.closed = closed      # the server closed the connection after answering
        self.elapsed = elapsed    # seconds from sending the login to its answer (or the close)

    @property
    def answer(self):
        """The last line read: the tagged IMAP answer or the POP3 answer ("" if none)."""
        return self.lines[-1] if self.lines else ""

    @property
    def ok(self):
        return self.answer.startswith(("L1 OK", "+OK"))

    def __repr__(self):
        return (f"<RawLogin {self.lines!r} closed={self.closed} elapsed={self.elapsed:.2f}s "
                f"greeting={self.greeting!r}>")


def raw_login(host, port, proto, user, password=PASSWORD, timeout=15.0, linger=0.5,
              source_ip=None):
    """Try one IMAP LOGIN or POP3 USER/PASS with a plain socket and return a RawLogin: every
    line the server sent, whether it closed the connection afterwards (waits `linger` s to see),
    and how long the answer took.  For failure paths, where a client library would only raise:
    the exact error text and the close are what a test checks.  Logs out after a success.
    source_ip: connect from this address (Dovecot's auth penalty is per client address)."""
    sock = socket.create_connection((host, port), timeout=timeout,
                                    source_address=(source_ip, 0) if source_ip else None)
    buf = b""
    closed = False

    def read_line():
        nonlocal buf, closed
        while b"\n" not in buf:
            try:
                chunk = sock.recv(4096)
            except socket.timeout:
                raise LabError(f"{host}:{port}: no answer in {timeout}s (read so far {buf!r})")
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                closed = True
                line, buf = buf, b""
                return line.decode("utf-8", "replace").rstrip("\r\n") or None
            buf += chunk
        line, buf = buf.split(b"\n", 1)
        return line.decode("utf-8", "replace").rstrip("\r")

    lines = []
    try:
        greeting = read_line() or ""
        t0 = time.monotonic()
        if proto == "imap":
            sock.sendall(f"L1 LOGIN {_quote(user)} {_quote(password)}\r\n".encode())
            while True:
                line = read_line()
                if line is None:
                    break
                lines.append(line)
                if line.startswith("L1 "):
                    break
        elif proto == "pop3":
            sock.sendall(f"USER {user}\r\n".encode())
            for cmd in (f"PASS {password}", None):
                line = read_line()
                if line is None:
                    break
                lines.append(line)
                if cmd is None or not line.startswith("+OK"):
                    break
                sock.sendall(f"{cmd}\r\n".encode())
        else:
            raise LabError(f"raw_login: unknown protocol {proto!r}")
        elapsed = time.monotonic() - t0
        if not closed:
            sock.settimeout(linger)
            try:
                while True:   # anything more, up to a close or `linger` s of silence
                    chunk = sock.recv(4096)
                    if not chunk:
                        closed = True
                        break
                    buf += chunk
            except socket.timeout:
                pass
            except ConnectionResetError:
                closed = True
        result = RawLogin(greeting, lines, closed, elapsed)
        if result.ok and not closed:
            try:
                sock.sendall(b"L2 LOGOUT\r\n" if proto == "imap" else b"QUIT\r\n")
            except OSError:
                pass
        return result
    finally:
        sock.close()


# ---------------------------------------------------------------------------------------------
# instances

class Instance:
    """One Dovecot instance: a directory, a config, a master process and its children."""

    kind = "instance"
    program = "dovecot"

    def __init__(self, lab, name, ip, ports, conf_text_fn, conf_name="dovecot.conf",
                 log_name="dovecot.log"):
        self.lab = lab
        self.name = name
        self.ip = ip
        self.ports = dict(ports)              # role -> TCP port on self.ip
        self.dir = os.path.join(lab.root, name)
        self.conf_path = os.path.join(self.dir, conf_name)
        self.base_dir = os.path.join(self.dir, "run")
        self.state_dir = os.path.join(self.dir, "state")
        self.log_path = os.path.join(self.dir, log_name)
        self.stderr_path = os.path.join(self.dir, "stderr.log")
        self.instance_name = f"{lab.tag}-{name}"
        self.proc = None
        self.pgid = None
        self.starts = 0
        os.makedirs(self.dir, mode=0o755)
        os.chmod(self.dir, 0o755)
        self._conf_text_fn = conf_text_fn
        self.write_config()

    # -- configuration

    def common_conf(self):
        return f"""# written by usherlab for {self.name}
instance_name = {self.instance_name}
base_dir = {self.base_dir}
state_dir = {self.state_dir}
log_path = {self.log_path}
listen = {self.ip}
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
login_trusted_networks = 127.0.0.0/8
default_process_limit = 500
default_client_limit = 2000
default_vsz_limit = 512M
mail_max_userip_connections = 10000
login_log_format_elements = user=<%u> method=%m rip=%r rport=%{{rport}} lip=%l mpid=%e %c session=<%{{session}}>
service auth {{
  client_limit = 10000
}}
"""

    def write_config(self):
        text = self._conf_text_fn()
        with open(self.conf_path, "w") as f:
            f.write(text)
        os.chmod(self.conf_path, 0o644)

    # -- processes

    @property
    def pid(self):
        return self.proc.pid if self.proc is not None else None

    def running(self):
        """True while the master process is alive."""
        return self.proc is not None and self._master_alive()

    def _master_alive(self):
        # WNOWAIT: look without reaping, so the master's PID (== our process group id) cannot be
        # reused while its children may still be around.
        try:
            r = os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return False
        return r is None

    def processes(self):
        """Live PIDs in this instance's process group: the master and Dovecot's children."""
        return group_members(self.pgid) if self.pgid is not None else []

    def describe_processes(self):
        return "\n".join(f"  {p} {_cmdline(p)}" for p in self.processes()) or "  (none)"

    def log_tail(self, lines=30):
        out = (f"--- {self.name} {self.log_path} (last {lines} lines) ---\n"
               + _tail(self.log_path, lines))
        if os.path.exists(self.stderr_path) and os.path.getsize(self.stderr_path) > 0:
            out += f"\n--- {self.name} stderr ---\n" + _tail(self.stderr_path, lines)
        return out

    def log_size(self):
        try:
            return os.path.getsize(self.log_path)
        except OSError:
            return 0

    def log_since(self, offset):
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def check_ports(self):
        for role, port in self.ports.items():
            try:
                check_port_free(self.ip, port)
            except LabError as e:
                raise LabError(f"{self.name}: {role} port: {e}") from None

    def argv(self):
        """The master's command line: it must stay in the foreground."""
        return [DOVECOT, "-F", "-c", self.conf_path]

    def start(self, wait=True, timeout=20.0):
        """Start `dovecot -F -c FILE` (argv()) in its own session; by default wait until it
        serves."""
        if self.proc is not None:
            raise LabError(f"{self.name}: already started (pid {self.proc.pid}); stop() first")
        self.check_ports()
        os.makedirs(self.base_dir, exist_ok=True)
        os.makedirs(self.state_dir, exist_ok=True)
        with open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL, stdout=err, stderr=err, cwd=self.dir,
                start_new_session=True, preexec_fn=_set_pdeathsig, close_fds=True)
        self.pgid = self.proc.pid
        self.starts += 1
        self.started_at = time.monotonic()
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout=20.0):
        def ready():
            if not self._master_alive():
                raise LabError(f"{self.name}: {self.program} exited during start-up")
            return self.is_ready()
        try:
            wait_for(f"{self.name} to accept connections", ready, timeout, interval=0.05,
                     on_timeout=self.log_tail)
        except LabError as e:
            if not self._master_alive():
                raise LabError(f"{self.name}: {self.program} exited during start-up "
                               f"(exit status {self.proc.poll()})\n{self.log_tail()}") from None
            raise e
        self.ready_after = time.monotonic() - self.started_at

    def is_ready(self):
        if not os.path.exists(os.path.join(self.base_dir, "master.pid")):
            return False
        # The master binds every listener before it forks anything; the IMAP greeting shows the
        # login processes are up too.  (Not LMTP: each probe would fork an lmtp process.)
        first = b"PROXY TCP4 127.0.0.1 127.0.0.1 1 1\r\n" if getattr(self, "haproxy", False) else b""
        return _tcp_ready(self.ip, self.ports["imap"], first=first)

    def kill9(self, group=False):
        """Crash the instance with SIGKILL and return the PIDs that were in its group.

        group=False: only the master (`kill -9 MASTERPID`).  The children notice through their
        master pipe and exit on their own - the director child even says goodbye to its ring
        neighbours (QUIT "Shutting down"), so the ring sees an orderly leave.
        group=True: the master and every child at once (`kill -9 -PGID`), a real crash: the
        ring only sees the TCP connections reset.
        Call stop() or restart() afterwards: it reaps the master and waits for (or kills)
        whatever is left."""
        if self.proc is None:
            raise LabError(f"{self.name}: not running")
        before = self.processes()
        if group:
            os.killpg(self.pgid, signal.SIGKILL)
        else:
            os.kill(self.proc.pid, signal.SIGKILL)
        return before

    def send_stop(self):
        """First half of stop(): SIGTERM to the master if it is alive (returns at once)."""
        if self.proc is not None and self._master_alive():
            try:
                os.kill(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def stop(self, timeout=10.0):
        """Stop the master (SIGTERM, then SIGKILL after `timeout`) and make sure every process
        in its group is gone (SIGKILL after another bounded wait).  Idempotent."""
        if self.proc is None:
            return
        pid, pgid = self.proc.pid, self.pgid
        try:
            self.send_stop()
            if not poll_until(lambda: not self._master_alive(), timeout):
                self.lab.note(f"{self.name}: master {pid} ignored SIGTERM for {timeout}s; SIGKILL")
                os.kill(pid, signal.SIGKILL)
                poll_until(lambda: not self._master_alive(), 5.0)
            # Children notice the master's death through a pipe; give them a bounded while.
            if not poll_until(lambda: not group_members(pgid), timeout):
                left = group_members(pgid)
                self.lab.note(f"{self.name}: children {left} outlived the master; SIGKILL")
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                if not poll_until(lambda: not group_members(pgid), 5.0):
                    raise LabError(f"{self.name}: processes {group_members(pgid)} survive SIGKILL")
        finally:
            try:
                self.proc.wait(timeout=5)      # reap the master only now: its PID was our pgid
            except subprocess.TimeoutExpired:
                pass
            self.proc = None
            if not group_members(pgid):
                self.pgid = None               # the id may be reused from now on

    def restart(self, wait=True, timeout=20.0):
        self.stop()
        return self.start(wait=wait, timeout=timeout)

    # -- doveadm

    def doveadm(self, *args, timeout=30.0, fmt=None):
        """Run `doveadm [-f FMT] -c CONF ARGS...`; return (exit code, stdout, stderr)."""
        cmd = [DOVEADM]
        if fmt is not None:
            cmd += ["-f", fmt]
        cmd += ["-c", self.conf_path] + [str(a) for a in args]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                               stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            raise LabError(f"{self.name}: {' '.join(cmd)} did not finish in {timeout}s") from e
        return r.returncode, r.stdout, r.stderr

    def __repr__(self):
        return f"<{self.kind} {self.name} {self.ip} pid={self.pid}>"


class DovecotBackend(Instance):
    """A Dovecot backend: IMAP/POP3/LMTP, users from the lab's passwd-file, mail in the lab's
    shared maildir tree; names itself in the IMAP ID reply as x-lab-backend = its IP.
    haproxy=True makes its IMAP and POP3 listeners require a PROXY protocol header (from
    127.0.0.0/8), as a backend behind usherd's proxy_protocol_backends is set up.
    sieve_submission=True adds ManageSieve (SIEVE_PORT) and submission (SUBMISSION_PORT,
    relaying to relay_host:RELAY_PORT); they need dovecot-managesieved and -submissiond."""

    kind = "backend"

    def __init__(self, lab, name, ip, imap_port=IMAP_PORT, pop3_port=POP3_PORT,
                 lmtp_port=LMTP_PORT, extra_conf="", haproxy=False, sieve_submission=False,
                 relay_host=None):
        self.extra_conf = extra_conf
        self.haproxy = haproxy
        self.sieve_submission = sieve_submission
        self.relay_host = relay_host
        ports = {"imap": imap_port, "pop3": pop3_port, "lmtp": lmtp_port}
        if sieve_submission:
            ports.update({"sieve": SIEVE_PORT, "submission": SUBMISSION_PORT})
        super().__init__(lab, name, ip, ports, self.config_text)

    def config_text(self):
        p = self.ports
        home = os.path.join(self.lab.mail_root, "%Lu")
        hap = "\n    haproxy = yes" if self.haproxy else ""
        more = ""
        if self.sieve_submission:
            more = f"""
service managesieve-login {{
  inet_listener sieve {{
    port = {p['sieve']}
  }}
}}
service submission-login {{
  inet_listener submission {{
    port = {p['submission']}
  }}
}}
service anvil {{
  client_limit = 4000
}}
submission_relay_host = {self.relay_host or self.ip}
submission_relay_port = {RELAY_PORT}
"""
        protocols = "imap pop3 lmtp" + (" sieve submission" if self.sieve_submission else "")
        return self.common_conf() + f"""protocols = {protocols}
haproxy_trusted_networks = 127.0.0.0/8
first_valid_uid = {MAIL_UID}
first_valid_gid = {MAIL_UID}
mail_location = maildir:~/Maildir
imap_id_send = "x-lab-backend" "{self.ip}" "x-lab-name" "{self.name}" name *
imap_id_log = *
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%Lu {self.lab.passwd_path}
}}
userdb {{
  driver = static
  args = uid={MAIL_UID} gid={MAIL_UID} home={home}
}}
service imap-login {{
  inet_listener imap {{
    port = {p['imap']}{hap}
  }}
  inet_listener imaps {{
    port = 0
  }}
  service_count = 0
  process_min_avail = 1
  client_limit = 1000
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {p['pop3']}{hap}
  }}
  inet_listener pop3s {{
    port = 0
  }}
  service_count = 0
  process_min_avail = 1
  client_limit = 1000
}}
service lmtp {{
  inet_listener lmtp {{
    port = {p['lmtp']}
  }}
}}
service imap {{
  service_count = 100
  idle_kill = 5 secs
}}
service pop3 {{
  service_count = 100
  idle_kill = 5 secs
}}
{more}
{self.extra_conf}
"""


class DovecotDirector(Instance):
    """A Dovecot 2.3 director in a ring.  `ring` is the whole director_servers list (this
    director included, any other program allowed as a member); `backends` the mail servers."""

    kind = "director"

    def __init__(self, lab, name, ip, ring, backends, ring_port=RING_PORT, imap_port=IMAP_PORT,
                 pop3_port=POP3_PORT, lmtp_port=LMTP_PORT, backend_ports=None, extra_conf=""):
        self.ring = [_ring_entry(e) for e in ring]
        self.backends = [_backend_entry(b) for b in backends]
        self.ring_port = ring_port
        self.backend_ports = backend_ports or {"imap": IMAP_PORT, "pop3": POP3_PORT,
                                               "lmtp": LMTP_PORT}
        self.extra_conf = extra_conf
        if f"{ip}:{ring_port}" not in self.ring:
            raise LabError(f"{name}: {ip}:{ring_port} is not in its own ring list {self.ring}")
        if not self.backends:
            raise LabError(f"{name}: a director needs at least one backend")
        super().__init__(lab, name, ip, {"ring": ring_port, "imap": imap_port, "pop3": pop3_port,
                                         "lmtp": lmtp_port}, self.config_text)
        self.admin_socket = os.path.join(self.base_dir, "director-admin")

    def config_text(self):
        p, bp = self.ports, self.backend_ports
        # The proxy's destination port is a passdb extra field; pick it by protocol (%s).
        port = (f"%{{if;%s;eq;imap;{bp['imap']};%{{if;%s;eq;pop3;{bp['pop3']};{bp['lmtp']}}}}}")
        return self.common_conf() + f"""protocols = imap pop3 lmtp
director_servers = {' '.join(self.ring)}
director_mail_servers = {' '.join(self.backends)}
login_source_ips = {self.ip}
imap_id_send = "x-lab-director" "{self.ip}" name *
lmtp_proxy = yes
passdb {{
  driver = static
  args = proxy=y nopassword=y port={port}
}}
# Not used for logins (the passdb proxies); lets `doveadm director map` list the users.
userdb {{
  driver = passwd-file
  args = username_format=%Lu {self.lab.passwd_path}
  default_fields = uid={MAIL_UID} gid={MAIL_UID}
}}
service director {{
  unix_listener login/director {{
    mode = 0666
  }}
  fifo_listener login/proxy-notify {{
    mode = 0666
  }}
  unix_listener director-userdb {{
    mode = 0600
  }}
  inet_listener {{
    address = {self.ip}
    port = {p['ring']}
  }}
}}
service imap-login {{
  executable = imap-login director
  inet_listener imap {{
    port = {p['imap']}
  }}
  inet_listener imaps {{
    port = 0
  }}
  service_count = 0
  process_min_avail = 1
  client_limit = 1000
}}
service pop3-login {{
  executable = pop3-login director
  inet_listener pop3 {{
    port = {p['pop3']}
  }}
  inet_listener pop3s {{
    port = 0
  }}
  service_count = 0
  process_min_avail = 1
  client_limit = 1000
}}
service lmtp {{
  inet_listener lmtp {{
    port = {p['lmtp']}
  }}
}}
protocol lmtp {{
  auth_socket_path = director-userdb
}}
{self.extra_conf}
"""

    def is_ready(self):
        if not super().is_ready():
            return False
        # The director process is started on demand by the first connection; make it answer.
        with AdminClient(self.admin_socket, timeout=2.0) as a:
            a.command_multi("DIRECTOR-LIST")
        return True

    def admin(self, timeout=10.0):
        """A connected AdminClient on this director's base_dir/director-admin."""
        return AdminClient(self.admin_socket, timeout=timeout)

    def ring_status(self, via="doveadm"):
        """`doveadm director ring status` as a list of dicts (keys: RING_COLUMNS).

        via="admin" asks DIRECTOR-LIST over the admin socket instead (cheaper: no fork+exec)."""
        if via == "admin":
            with self.admin() as a:
                return a.director_list()
        rc, out, err = self.doveadm("director", "ring", "status", fmt="tab")
        if rc != 0:
            raise LabError(f"{self.name}: doveadm director ring status exited {rc}: {err.strip()}")
        lines = out.rstrip("\n").split("\n")
        header = lines[0].split("\t")
        return [dict(zip(header, line.split("\t"))) for line in lines[1:] if line]

    def ring_synced(self, via="doveadm"):
        return ring_rows_synced(self.ring_status(via), expect_members=self.ring)

    def status_user(self, user, tag=None):
        """`doveadm director status USER [TAG]` -> (current, hashed, initial); current is None
        when the director has no entry for the user ("n/a")."""
        args = ["director", "status", user] + ([tag] if tag is not None else [])
        rc, out, err = self.doveadm(*args, fmt="tab")
        if rc != 0:
            raise LabError(f"{self.name}: doveadm director status {user} exited {rc}: "
                           f"{err.strip()}")
        lines = out.rstrip("\n").split("\n")
        if len(lines) != 2:
            raise LabError(f"{self.name}: cannot parse doveadm director status output: {out!r}")
        row = dict(zip(lines[0].split("\t"), lines[1].split("\t")))
        try:
            cur = row["status"]
            return (None if cur == "n/a" else cur), row["hashed"], row["initial-config"]
        except KeyError:
            raise LabError(f"{self.name}: cannot parse doveadm director status output: {out!r}")

    def host_list(self):
        """HOST-LIST over the admin socket -> list of dicts."""
        with self.admin() as a:
            lines = a.command_multi("HOST-LIST")
        keys = ["ip", "vhosts", "users", "tag", "state", "changed"]
        return [dict(zip(keys, line.split("\t"))) for line in lines]


# ---------------------------------------------------------------------------------------------
# usherd

USHERD = os.environ.get("USHERD")
USHERCTL = os.environ.get("USHERCTL")   # usherctl binary, for Usherd.usherctl()/explain()


class Usherd:
    """A usherd ring member: its own directory, usher.conf, admin socket and state_dir, run as
    `usherd -c FILE` in its own session (stopped by PID like the Dovecot instances).  Offers the
    same ring_status/status_user/doveadm/admin interface as DovecotDirector, so a test can treat
    both kinds of member alike; doveadm talks to it with `-a ADMIN_SOCKET`.

    http_port=N adds an [http] group listening on ip:N (plus the lines in http_conf, e.g.
    max_pending_lookups = 64); start() then also waits until GET /metrics answers, and
    http_get() asks it."""

    kind = "usherd"

    def __init__(self, lab, name, ip, ring, backends, ring_port=RING_PORT, extra_conf="",
                 http_port=None, http_conf="", nofile=None):
        if USHERD is None or not os.access(USHERD, os.X_OK):
            raise LabError("set $USHERD to the usherd binary (meson does)")
        self.lab = lab
        self.name = name
        self.ip = ip
        self.ring_port = ring_port
        self.ring = [_ring_entry(e) for e in ring]
        self.backends = [_backend_entry(b) for b in backends]
        self.extra_conf = extra_conf
        self.http_port = http_port
        self.http_conf = http_conf
        self.nofile = nofile  # an open-files limit (soft and hard) for the process, or None
        self.dir = os.path.join(lab.root, name)
        os.makedirs(self.dir, mode=0o755, exist_ok=True)
        self.conf_path = os.path.join(self.dir, "usher.conf")
        self.admin_socket = os.path.join(self.dir, "admin")
        self.state_dir = os.path.join(self.dir, "state")
        self.log_path = os.path.join(self.dir, "usherd.log")
        self.proc = None
        self.starts = 0
        self.write_config()

    def write_config(self):
        with open(self.conf_path, "w") as f:
            f.write(f"""# written by usherlab for {self.name}
[ring]
directors = {' '.join(self.ring)}
[backends]
hosts = {' '.join(self.backends)}
imap_port = {IMAP_PORT}
pop3_port = {POP3_PORT}
lmtp_port = {LMTP_PORT}
sieve_port = {SIEVE_PORT}
submission_port = {SUBMISSION_PORT}
[daemon]
ring_address = {self.ip}:{self.ring_port}
admin_socket = {self.admin_socket}
state_dir = {self.state_dir}
{self.extra_conf}
""")
            if self.http_port is not None:
                f.write(f"[http]\nlisten = {self.ip}:{self.http_port}\n{self.http_conf}\n")

    @property
    def http_address(self):
        """'ip:port' of the [http] listener (None without http_port)."""
        return None if self.http_port is None else f"{self.ip}:{self.http_port}"

    @property
    def pid(self):
        return self.proc.pid if self.proc is not None else None

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines=30):
        return f"--- {self.name} {self.log_path} (last {lines} lines) ---\n" + _tail(
            self.log_path, lines)

    def start(self, wait=True, timeout=20.0):
        if self.proc is not None:
            raise LabError(f"{self.name}: already started (pid {self.proc.pid}); stop() first")
        check_port_free(self.ip, self.ring_port)
        if self.http_port is not None:
            check_port_free(self.ip, self.http_port)
        with open(self.log_path, "ab") as log:
            nofile = self.nofile

            def preexec():
                _set_pdeathsig()
                if nofile is not None:
                    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
            self.proc = subprocess.Popen(
                [USHERD, "-c", self.conf_path], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                cwd=self.dir, start_new_session=True, preexec_fn=preexec, close_fds=True)
        self.starts += 1
        self.started_at = time.monotonic()
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout=20.0):
        def ready():
            if self.proc.poll() is not None:
                raise LabError(f"{self.name}: usherd exited during start-up "
                               f"(status {self.proc.returncode})\n{self.log_tail()}")
            if not os.path.exists(self.admin_socket):
                return False
            try:
                with AdminClient(self.admin_socket, timeout=2.0) as a:
                    a.command_multi("DIRECTOR-LIST")
                if self.http_port is not None:
                    return self.http_get("/metrics", timeout=2.0)[0] == 200
                return True
            except (OSError, LabError, http.client.HTTPException):
                return False
        wait_for(f"{self.name} to answer on its admin socket"
                 + (" and HTTP listener" if self.http_port is not None else ""), ready, timeout,
                 on_timeout=self.log_tail)
        self.ready_after = time.monotonic() - self.started_at

    def kill9(self, group=False):
        if self.proc is None:
            raise LabError(f"{self.name}: not running")
        os.kill(self.proc.pid, signal.SIGKILL)
        return [self.proc.pid]

    def send_stop(self):
        if self.running():
            try:
                os.kill(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def stop(self, timeout=10.0):
        """SIGTERM (a clean stop: usherd saves its user snapshot), SIGKILL after timeout."""
        if self.proc is None:
            return None
        self.send_stop()
        try:
            status = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.lab.note(f"{self.name}: usherd ignored SIGTERM for {timeout}s; SIGKILL")
            self.proc.kill()
            status = self.proc.wait(timeout=5)
        self.proc = None
        return status

    def restart(self, wait=True, timeout=20.0):
        self.stop()
        return self.start(wait=wait, timeout=timeout)

    def doveadm(self, *args, timeout=30.0, fmt=None):
        """`doveadm [-f FMT] -c /dev/null director ... -a ADMIN_SOCKET ...`: the real doveadm,
        pointed at usherd's admin socket."""
        args = [str(a) for a in args]
        words = 3 if len(args) >= 2 and args[0] == "director" and args[1] == "ring" else 2
        cmd = [DOVEADM] + (["-f", fmt] if fmt is not None else []) + ["-c", "/dev/null"]
        cmd += args[:words] + ["-a", self.admin_socket] + args[words:]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                               stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            raise LabError(f"{self.name}: {' '.join(cmd)} did not finish in {timeout}s") from e
        return r.returncode, r.stdout, r.stderr

    def http_get(self, path, headers=None, method="GET", timeout=10.0):
        """One request to the [http] listener -> (status, {lowercased header: value}, body)."""
        if self.http_port is None:
            raise LabError(f"{self.name}: no [http] listener (give http_port=)")
        return http_request(self.ip, self.http_port, path, method=method, headers=headers,
                            timeout=timeout)

    def usherctl(self, *args, timeout=30.0):
        """`usherctl -a ADMIN_SOCKET ARGS...` ($USHERCTL) -> (exit code, stdout, stderr)."""
        if USHERCTL is None or not os.access(USHERCTL, os.X_OK):
            raise LabError("set $USHERCTL to the usherctl binary (meson does)")
        cmd = [USHERCTL, "-a", self.admin_socket] + [str(a) for a in args]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                               stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            raise LabError(f"{self.name}: {' '.join(cmd)} did not finish in {timeout}s") from e
        return r.returncode, r.stdout, r.stderr

    def explain(self, user, tag=None):
        """`usherctl --json explain USER [TAG]` as a dict; ["entry"] is None or has "backend",
        "timestamp", "expires" (Unix seconds) and "expires_in_secs"."""
        rc, out, err = self.usherctl("--json", "explain", user, *([tag] if tag else []))
        if rc != 0:
            raise LabError(f"{self.name}: usherctl explain {user} exited {rc}: {err.strip()}")
        return json.loads(out)

    # The same read-side interface as DovecotDirector.
    admin = DovecotDirector.admin
    ring_status = DovecotDirector.ring_status
    ring_synced = DovecotDirector.ring_synced
    status_user = DovecotDirector.status_user
    host_list = DovecotDirector.host_list

    def __repr__(self):
        return f"<usherd {self.name} {self.ip}:{self.ring_port} pid={self.pid}>"


# ---------------------------------------------------------------------------------------------
# proxies in front of the ring: nginx mail (auth_http) and a Dovecot proxy with a Lua passdb

NGINX = os.environ.get("USHERLAB_NGINX") or shutil.which("nginx", path=_PATH)
NGINX_MAIL_MODULE = os.environ.get("USHERLAB_NGINX_MAIL_MODULE",
                                   "/usr/lib/nginx/modules/ngx_mail_module.so")
DOVECOT_LUA_AUTH = os.environ.get("USHERLAB_DOVECOT_LUA_AUTH",
                                  "/usr/lib/dovecot/modules/auth/libauthdb_lua.so")


# For backends behind nginx: every login reaches them from nginx's own address (nginx passes no
# client address for IMAP/POP3), so the auth penalty anvil keeps per remote IP would slow every
# user down after a few wrong passwords (2, 4, 8, 15 s).  This turns it off (Dovecot's advice
# for backends behind proxies too).
NO_AUTH_PENALTY = """service anvil {
  unix_listener anvil-auth-penalty {
    mode = 0
  }
}
"""


def _nginx_build():
    """(version tuple, configure arguments) of $NGINX, or raise LabError."""
    try:
        out = subprocess.run([NGINX, "-V"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as e:
        raise LabError(f"nginx -V failed: {e}") from None
    text = out.stderr + out.stdout          # nginx prints -V to stderr
    m = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", text)
    if not m:
        raise LabError(f"cannot parse nginx -V: {text[:200]!r}")
    return tuple(int(x) for x in m.groups()), text


def nginx_mail_available():
    """None if nginx with the mail module can run here, else the reason it cannot."""
    if NGINX is None or not os.access(NGINX, os.X_OK):
        return "nginx is not installed (Debian: nginx-light libnginx-mod-mail)"
    try:
        version, text = _nginx_build()
    except LabError as e:
        return str(e)
    if version < (1, 19, 5):
        return f"need nginx 1.19.5 or later (-e), found {'.'.join(map(str, version))}"
    if "--with-mail=dynamic" in text and not os.path.exists(NGINX_MAIL_MODULE):
        return f"{NGINX_MAIL_MODULE} is missing (Debian: libnginx-mod-mail)"
    if "--with-mail" not in text:
        return "nginx is built without the mail module"
    if os.geteuid() != 0:
        return "nginx must be started as root here (it binds and drops to nobody)"
    return None


def _lua_version_of_dovecot():
    """'5.4' etc.: the liblua the Dovecot Lua modules link against (from their DT_NEEDED)."""
    for path in ("/usr/lib/dovecot/libdovecot-lua.so.0", "/usr/lib/dovecot/libdovecot-lua.so",
                 DOVECOT_LUA_AUTH):
        try:
            with open(path, "rb") as f:
                m = re.search(rb"liblua-?(5\.\d)\.so", f.read())
        except OSError:
            continue
        if m:
            return m.group(1).decode()
    return None


def lua_socket_dirs(version):
    """([dirs with socket/http.lua], [dirs with socket/core.so]) for Lua `version`."""
    lua_dirs = [d for d in (f"/usr/local/share/lua/{version}", f"/usr/share/lua/{version}")
                if os.path.exists(os.path.join(d, "socket", "http.lua"))]
    so_dirs = [d for d in ([f"/usr/local/lib/lua/{version}"]
                           + sorted(glob.glob(f"/usr/lib/*/lua/{version}"))
                           + [f"/usr/lib/lua/{version}", f"/usr/lib64/lua/{version}"])
               if os.path.exists(os.path.join(d, "socket", "core.so"))]
    return lua_dirs, so_dirs


def dovecot_lua_available():
    """None if a Dovecot proxy with a Lua passdb using LuaSocket can run here, else why not."""
    if not os.path.exists(DOVECOT_LUA_AUTH):
        return f"{DOVECOT_LUA_AUTH} is missing (Debian: dovecot-auth-lua)"
    version = _lua_version_of_dovecot()
    if version is None:
        return "cannot tell which Lua version Dovecot's Lua modules use"
    lua_dirs, so_dirs = lua_socket_dirs(version)
    if not lua_dirs or not so_dirs:
        return (f"LuaSocket for Lua {version} is missing (Debian: lua-socket; need "
                f"socket/http.lua and socket/core.so)")
    return None


class NginxMail(Instance):
    """nginx's mail proxy (IMAP and POP3) on ip, asking `auth_http` ('ip:port/path', or a Usherd
    with an [http] listener: its /nginx-auth) where each login goes.  Runs as
    `nginx -p DIR/ -c DIR/nginx.conf -e DIR/error.log -g 'daemon off;'` in its own session: the
    master stays in the foreground, its workers stay in its process group, and it is stopped
    like a Dovecot master (SIGTERM = nginx's fast shutdown, bounded waits, SIGKILL to the group).
    The pid file and every log are in DIR; a mail-only nginx uses no temp paths (those belong
    to the http module).  auth_http_timeout (s, nginx's default 60) must exceed usherd's 30 s
    bound on a waiting login request, or nginx gives up first with "internal server error"."""

    kind = "nginx"
    program = "nginx"

    def __init__(self, lab, name, ip, auth_http, imap_port=IMAP_PORT, pop3_port=POP3_PORT,
                 auth_http_timeout=60, extra_conf=""):
        if hasattr(auth_http, "http_address"):
            if auth_http.http_address is None:
                raise LabError(f"{name}: {auth_http.name} has no [http] listener")
            auth_http = auth_http.http_address + "/nginx-auth"
        self.auth_http = auth_http
        self.auth_http_timeout = auth_http_timeout
        self.extra_conf = extra_conf
        super().__init__(lab, name, ip, {"imap": imap_port, "pop3": pop3_port}, self.config_text,
                         conf_name="nginx.conf", log_name="error.log")
        self.pid_path = os.path.join(self.dir, "nginx.pid")
        self.base_dir = self.state_dir = self.dir    # nginx needs neither

    def config_text(self):
        p = self.ports
        _, build = _nginx_build()
        load = (f"load_module {NGINX_MAIL_MODULE};" if "--with-mail=dynamic" in build
                else "# the mail module is built in")
        return f"""# written by usherlab for {self.name}
{load}
pid {os.path.join(self.dir, "nginx.pid")};
error_log {self.log_path} info;
worker_processes 1;
events {{
    worker_connections 1024;
}}
mail {{
    auth_http {self.auth_http};
    auth_http_timeout {self.auth_http_timeout}s;
    proxy_pass_error_message on;
    server {{
        listen {self.ip}:{p['imap']};
        protocol imap;
    }}
    server {{
        listen {self.ip}:{p['pop3']};
        protocol pop3;
    }}
{self.extra_conf}
}}
"""

    def argv(self):
        return [NGINX, "-p", self.dir + "/", "-c", self.conf_path, "-e", self.log_path,
                "-g", "daemon off; master_process on;"]

    def is_ready(self):
        if not os.path.exists(self.pid_path):
            return False
        # nginx greets IMAP and POP3 clients itself, before any auth_http request.
        return all(_tcp_ready(self.ip, port) for port in self.ports.values())

    def workers(self):
        """PIDs of the worker processes (the group minus the master)."""
        return [p for p in self.processes() if p != self.pid]

    def doveadm(self, *args, **kw):
        raise LabError(f"{self.name}: nginx has no doveadm")


LUA_PASSDB = r"""-- written by usherlab for {name}: a Dovecot 2.3 Lua passdb that asks usherd
-- where each login goes (GET {lookup}?user=U, a ring login request) and proxies the login there.
-- The password is not checked here (nopassword): the backend checks it.
package.path = "{lua_path}" .. package.path
package.cpath = "{lua_cpath}" .. package.cpath
local http = require("socket.http")
local url = require("socket.url")
local ltn12 = require("ltn12")

local LOOKUP = "{lookup}"
local TIMEOUT = {timeout}
local PORTS = {{ imap = {imap_port}, pop3 = {pop3_port}, lmtp = {lmtp_port} }}

local function lookup(req)
  local body = {{}}
  http.TIMEOUT = TIMEOUT
  local ok, code = http.request{{
    url = LOOKUP .. "?user=" .. url.escape(req.user),
    sink = ltn12.sink.table(body),
  }}
  body = table.concat(body)
  if ok == nil then
    return nil, "usherd unreachable: " .. tostring(code)
  end
  if code ~= 200 then
    return nil, "usherd answered " .. tostring(code) .. ": " .. body
  end
  local host = body:match('"host"%s*:%s*"([^"]+)"')
  if host == nil then
    return nil, "usherd answered without a host: " .. body
  end
  return host
end

-- Dovecot logs the message returned with a failure ("db-lua: MESSAGE", level error).
function auth_passdb_lookup(req)
  local host, err = lookup(req)
  if host == nil then
    -- a temporary failure: the client is told to try again later
    return dovecot.auth.PASSDB_RESULT_INTERNAL_FAILURE, err
  end
  local port = PORTS[req.service]
  if port == nil then
    return dovecot.auth.PASSDB_RESULT_INTERNAL_FAILURE,
      "no backend port for service " .. tostring(req.service)
  end
  return dovecot.auth.PASSDB_RESULT_OK, {{
    proxy = "y", host = host, port = tostring(port), nopassword = "y",
  }}
end
"""


class DovecotLuaProxy(Instance):
    """A Dovecot 2.3 proxy (no director) on ip: IMAP and POP3 logins are proxied to the backend
    that its Lua passdb gets from usherd's /lookup (`lookup`: 'http://ip:port/lookup', or a
    Usherd with an [http] listener).  The script is DIR/usher.lua (LUA_PASSDB); it runs in the
    auth-worker processes (passdb args blocking=yes, LuaSocket blocks).  lookup_timeout (s) is
    LuaSocket's: above usherd's 30 s bound on a waiting login request, so the proxy gets usherd's
    answer (a 503 when the ring cannot place the user) rather than its own timeout."""

    kind = "proxy"

    def __init__(self, lab, name, ip, lookup, imap_port=IMAP_PORT, pop3_port=POP3_PORT,
                 backend_ports=None, lookup_timeout=40, extra_conf=""):
        if hasattr(lookup, "http_address"):
            if lookup.http_address is None:
                raise LabError(f"{name}: {lookup.name} has no [http] listener")
            lookup = f"http://{lookup.http_address}/lookup"
        self.lookup = lookup
        self.lookup_timeout = lookup_timeout
        self.backend_ports = backend_ports or {"imap": IMAP_PORT, "pop3": POP3_PORT,
                                               "lmtp": LMTP_PORT}
        self.extra_conf = extra_conf
        super().__init__(lab, name, ip, {"imap": imap_port, "pop3": pop3_port}, self.config_text)
        self.lua_path = os.path.join(self.dir, "usher.lua")
        self.write_lua()

    def write_lua(self):
        version = _lua_version_of_dovecot() or "5.4"
        lua_dirs, so_dirs = lua_socket_dirs(version)
        bp = self.backend_ports
        text = LUA_PASSDB.format(
            name=self.name, lookup=self.lookup, timeout=self.lookup_timeout,
            lua_path="".join(f"{d}/?.lua;" for d in lua_dirs),
            lua_cpath="".join(f"{d}/?.so;" for d in so_dirs),
            imap_port=bp["imap"], pop3_port=bp["pop3"], lmtp_port=bp["lmtp"])
        with open(os.path.join(self.dir, "usher.lua"), "w") as f:
            f.write(text)
        os.chmod(os.path.join(self.dir, "usher.lua"), 0o644)

    def config_text(self):
        p = self.ports
        return self.common_conf() + f"""protocols = imap pop3
imap_id_send = "x-lab-proxy" "{self.ip}" name *
passdb {{
  driver = lua
  args = file={os.path.join(self.dir, "usher.lua")} blocking=yes
}}
# Not used for proxied logins; Dovecot wants one.
userdb {{
  driver = static
  args = uid={MAIL_UID} gid={MAIL_UID}
}}
service imap-login {{
  inet_listener imap {{
    port = {p['imap']}
  }}
  inet_listener imaps {{
    port = 0
  }}
  service_count = 0
  process_min_avail = 1
  client_limit = 1000
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {p['pop3']}
  }}
  inet_listener pop3s {{
    port = 0
  }}
  service_count = 0
  process_min_avail = 1
  client_limit = 1000
}}
{self.extra_conf}
"""


# ---------------------------------------------------------------------------------------------
# the lab

class Lab:
    """A temporary directory holding Dovecot instances, the shared mail tree and the users.

    users: how many users (user1..userN, password PASSWORD) the backends' passwd-file holds.
    root: directory to use (default: a new one under $USHERLAB_TMP or /tmp).  keep: leave the
    directory behind after stop() (default: if $USHERLAB_KEEP is set)."""

    def __init__(self, users=100, root=None, keep=None, verbose=False, handle_sigterm=True,
                 net=None):
        reason = dovecot_available()
        if reason:
            raise LabError(reason)
        if root is None:
            base = os.environ.get("USHERLAB_TMP", "/tmp")
            root = tempfile.mkdtemp(prefix="usherlab-", dir=base)
            self._made_root = True
        else:
            os.makedirs(root, exist_ok=True)
            self._made_root = False
        self.root = os.path.abspath(root)
        os.chmod(self.root, 0o755)   # login (dovenull), auth (dovecot), mail (nobody) traverse it
        if len(os.path.join(self.root, "d00", "run", "login", "proxy-notify")) > SUN_PATH_MAX:
            raise LabError(f"lab directory {self.root} is too long for AF_UNIX socket paths")
        self.tag = "ul" + os.path.basename(self.root).split("-")[-1][:6]
        self.keep = bool(os.environ.get("USHERLAB_KEEP")) if keep is None else keep
        # Second octet of the lab's addresses: directors 127.NET.1.N, backends 127.NET.2.N.
        # Two labs (or a lab and a hand-started usherd) on the same addresses join each other's
        # rings; USHERLAB_NET=77 moves a whole test run to 127.77.x.y.
        self.net = int(os.environ.get("USHERLAB_NET", "0")) if net is None else int(net)
        if not 0 <= self.net <= 255:
            raise LabError(f"net must be 0..255, not {self.net}")
        self.verbose = verbose
        self.instances = []
        self.sessions = []
        self.notes = []
        self._stopped = False
        self.mail_root = os.path.join(self.root, "mail")
        os.makedirs(self.mail_root, exist_ok=True)
        os.chown(self.mail_root, MAIL_UID, MAIL_UID)
        self.passwd_path = os.path.join(self.root, "users.passwd")
        self.users = [f"user{i}" for i in range(1, users + 1)]
        with open(self.passwd_path, "w") as f:
            for u in self.users:
                f.write(f"{u}:{{PLAIN}}{PASSWORD}::::::\n")
        os.chmod(self.passwd_path, 0o644)
        atexit.register(self.stop)
        if handle_sigterm and signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
            signal.signal(signal.SIGTERM, _sigterm_to_exit)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def director_ip(self, n):
        """Address of director number n (1-based): 127.NET.1.n."""
        return f"127.{self.net}.1.{n}"

    def backend_ip(self, n):
        """Address of backend number n (1-based): 127.NET.2.n."""
        return f"127.{self.net}.2.{n}"

    def client_ip(self, n):
        """A client address (source_ip= of the login helpers): 127.NET.4.n."""
        return f"127.{self.net}.4.{n}"

    def proxy_ip(self, n):
        """Address of proxy number n (1-based, nginx or Dovecot without director): 127.NET.3.n."""
        return f"127.{self.net}.3.{n}"

    def note(self, msg):
        self.notes.append(msg)
        if self.verbose:
            print(f"# usherlab: {msg}", flush=True)

    def _name(self, prefix, cls):
        return f"{prefix}{1 + sum(1 for i in self.instances if isinstance(i, cls))}"

    def dovecot_backend(self, ip, name=None, **kw):
        """A Dovecot backend on ip (IMAP/POP3/LMTP on IMAP_PORT/POP3_PORT/LMTP_PORT unless
        imap_port=/pop3_port=/lmtp_port= say otherwise; extra_conf= is appended to its
        dovecot.conf).  Named b1, b2, ... unless name= is given.  Not started yet."""
        b = DovecotBackend(self, name or self._name("b", DovecotBackend), ip, **kw)
        self.instances.append(b)
        return b

    def dovecot_director(self, ip, ring, backends, name=None, **kw):
        """A Dovecot 2.3 director on ip.  ring: every ring member, this one included, as 'ip',
        'ip:port' or instance objects - any program may be a member (a non-Dovecot director
        at, say, 127.0.1.3 just needs to be listed).  backends: 'ip', 'ip@tag', 'ip1-ip2' or
        backend objects (director_mail_servers).  Other keywords: ring_port, imap_port,
        pop3_port, lmtp_port, backend_ports={'imap':, 'pop3':, 'lmtp':}, extra_conf.
        Named d1, d2, ... unless name= is given.  Not started yet."""
        d = DovecotDirector(self, name or self._name("d", DovecotDirector), ip, ring, backends,
                            **kw)
        self.instances.append(d)
        return d

    def usherd(self, ip, ring, backends, name=None, **kw):
        """A usherd ring member on ip (see Usherd); named u1, u2, ... Not started yet."""
        u = Usherd(self, name or self._name("u", Usherd), ip, ring, backends, **kw)
        self.instances.append(u)
        return u

    def nginx_mail(self, ip, auth_http, name=None, **kw):
        """An nginx mail proxy on ip asking auth_http (a Usherd with http_port=, or
        'ip:port/path'); see NginxMail.  Named n1, n2, ...  Not started yet."""
        n = NginxMail(self, name or self._name("n", NginxMail), ip, auth_http, **kw)
        self.instances.append(n)
        return n

    def dovecot_lua_proxy(self, ip, lookup, name=None, **kw):
        """A Dovecot proxy on ip whose Lua passdb asks lookup (a Usherd with http_port=, or
        'http://ip:port/lookup'); see DovecotLuaProxy.  Named p1, p2, ...  Not started yet."""
        p = DovecotLuaProxy(self, name or self._name("p", DovecotLuaProxy), ip, lookup, **kw)
        self.instances.append(p)
        return p

    @property
    def proxies(self):
        """nginx and Dovecot proxies (no director) in front of the ring."""
        return [i for i in self.instances if isinstance(i, (NginxMail, DovecotLuaProxy))]

    @property
    def usherds(self):
        return [i for i in self.instances if isinstance(i, Usherd)]

    @property
    def members(self):
        """Every director of either kind."""
        return [i for i in self.instances if isinstance(i, (DovecotDirector, Usherd))]

    @property
    def backends(self):
        return [i for i in self.instances if isinstance(i, DovecotBackend)]

    @property
    def directors(self):
        return [i for i in self.instances if isinstance(i, DovecotDirector)]

    def start_all(self, timeout=30.0):
        """Start every instance not yet running (backends, then directors, then proxies), then
        wait for all."""
        todo = [i for i in self.backends + self.members + self.proxies if i.proc is None]
        for i in todo:
            i.start(wait=False)
        for i in todo:
            i.wait_ready(timeout)
        return todo

    def stop(self):
        """Stop every instance (each by its PID and process group) and close client sessions.
        Safe to call more than once; registered with atexit."""
        errors = []
        for s in self.sessions:         # kept sessions: just drop the connections
            if s.client is not None:
                try:
                    s.client.sock.close()
                except OSError:
                    pass
                s.client = None
        self.sessions = []
        for i in self.instances:        # SIGTERM to every master first: they shut down in parallel
            try:
                i.send_stop()
            except OSError:
                pass
        for i in reversed(self.instances):
            try:
                i.stop()
            except Exception as e:  # keep stopping the others
                errors.append(f"{i.name}: {e}")
        if not self._stopped:
            self._stopped = True
            atexit.unregister(self.stop)
        if not errors and not self.keep and self._made_root and os.path.isdir(self.root):
            if all(i.proc is None for i in self.instances):
                shutil.rmtree(self.root, ignore_errors=True)
        if errors:
            raise LabError("stopping the lab: " + "; ".join(errors))

    def leftover_processes(self):
        """[(pid, command)] of every process that belongs to this lab: still in one of its
        process groups, or titled dovecot-<instance_name>/..., or a master started with one of
        its config files (as `ps` would show them).  Empty after a clean stop()."""
        found = {}
        for i in self.instances:
            if getattr(i, "pgid", None) is not None:
                for p in group_members(i.pgid):
                    found[p] = _cmdline(p)
        marks = [f"dovecot-{i.instance_name}/" for i in self.instances
                 if hasattr(i, "instance_name")] + [self.root + "/"]
        for name in os.listdir("/proc"):
            if name.isdigit() and int(name) != os.getpid():
                cmd = _cmdline(int(name))
                st = _proc_stat(int(name))
                if st is not None and st[0] != "Z" and any(m in cmd for m in marks):
                    found[int(name)] = cmd
        return sorted(found.items())

    def log_tails(self, lines=20, instances=None):
        return "\n".join(i.log_tail(lines) for i in (instances or self.instances))

    # -- ring

    def ring_state(self, directors=None, via="doveadm"):
        """(synced, {director name: rows}) for these directors, asked once each.

        synced means: on every director the self row says 'ring synced', every connection row
        says 'synced', it has a left and a right neighbour (when the ring has other members),
        every member of its director_servers is listed, and every director of the set is some
        other director's synced left or right neighbour (so a restarted member really is back:
        a ring of two survivors also looks synced on its own)."""
        directors = directors or self.directors
        rows = {d.name: d.ring_status(via) for d in directors}
        ok = all(ring_rows_synced(rows[d.name], expect_members=d.ring) for d in directors)
        if ok and len(directors) > 1:
            for d in directors:
                me = f"{d.ip}:{d.ring_port}"
                if not any(f"{r.get('director ip')}:{r.get('port')}" == me
                           and r.get("type") in ("left", "right") and r.get("status") == "synced"
                           for o in directors if o is not d for r in rows[o.name]):
                    ok = False
                    break
        return ok, rows

    def wait_ring_synced(self, directors=None, timeout=30.0, via="doveadm", interval=0.1):
        """Wait until ring_state() says synced (by default from `doveadm director ring status`
        on every director; via="admin" uses DIRECTOR-LIST directly).  Returns seconds waited.
        At start, allow 45 s: a member that dialled its preferred right before that one was
        listening takes another right and retries the preferred one after 30 s (Dovecot's
        interval; 5 s once it knows the peer is a usherd)."""
        directors = directors or self.directors
        t0 = time.monotonic()
        wait_for(f"the ring of {', '.join(d.name for d in directors)} to sync",
                 lambda: self.ring_state(directors, via)[0], timeout, interval=interval,
                 on_timeout=lambda: self.explain_ring(directors))
        return time.monotonic() - t0

    def wait_ring_without(self, member, directors, timeout=120.0, interval=0.02):
        """Wait until none of `directors` has a ring connection to `member` (a director object
        or 'ip:port'), e.g. after killing it.  Returns seconds waited."""
        target = _ring_entry(member)
        t0 = time.monotonic()

        def gone():
            for d in directors:
                for r in d.ring_status("admin"):
                    if (f"{r.get('director ip')}:{r.get('port')}" == target
                            and r.get("type") in ("left", "right", "in", "out")):
                        return False
            return True
        wait_for(f"{', '.join(d.name for d in directors)} to drop their links to {target}", gone,
                 timeout, interval=interval, on_timeout=lambda: self.explain_ring(directors))
        return time.monotonic() - t0

    def explain_ring(self, directors):
        out = []
        for d in directors:
            try:
                rows = d.ring_status("admin")
                out.append(f"{d.name} ring status:\n" + "\n".join(
                    "  " + " | ".join(f"{r.get(k, '-')}" for k in RING_COLUMNS[:6]) for r in rows))
            except Exception as e:
                out.append(f"{d.name}: ring status failed: {e}")
        return "\n".join(out) + "\n" + self.log_tails(15, directors)

    # -- clients

    def imap_login(self, host, port, user, password=PASSWORD, keep=False, timeout=10.0,
                   source_ip=None):
        """Log in over IMAP and ask ID; return a Session whose .backend is the x-lab-backend the
        backend named in its ID reply.  keep=True leaves the session logged in (the lab closes
        it at stop(); Session.close() logs out)."""
        t0 = time.monotonic()
        conn, ident = imap_open(host, port, user, password, timeout=timeout, source_ip=source_ip)
        s = Session("imap", user, host, port, conn, ident.get("x-lab-backend"),
                    time.monotonic() - t0, conn.sock.getsockname())
        s.id_reply = ident
        if keep:
            self.sessions.append(s)
        else:
            s.close()
        return s

    def pop3_login(self, host, port, user, password=PASSWORD, keep=False, timeout=10.0,
                   source_ip=None, find_backend=True, match_client=True):
        """Log in over POP3 (USER/PASS).  POP3 has no ID command, so .backend is found in the
        lab's backend logs: the backend logs the client's rip/rport, which the director passes
        on with XCLIENT.  nginx does not (its xclient is SMTP only): with match_client=False
        the backend is the one whose log shows a login of this user after the offsets taken
        here (right only while nobody else logs this user in at the same time)."""
        offsets = {b: b.log_size() for b in self.backends} if find_backend else {}
        t0 = time.monotonic()
        conn = _POP3(host, port, timeout=timeout, source_ip=source_ip)
        try:
            conn.user(user)
            conn.pass_(password)
        except BaseException:
            try:
                conn.sock.close()
            except OSError:
                pass
            raise
        elapsed = time.monotonic() - t0
        local = conn.sock.getsockname()
        s = Session("pop3", user, host, port, conn, None, elapsed, local)
        if keep:
            self.sessions.append(s)
        else:
            s.close()
        if find_backend:
            s.backend = self.find_login_backend(offsets, user, local if match_client else None,
                                                "pop3")
        return s

    def slow_pop3_retr(self, host, port, user, wrap=None, size=32 << 20):
        """Puts a message of size bytes in user's INBOX, sends USER, PASS, RETR 1 and QUIT in
        one go and reads the answers at about 8 MB/s through an 8 KiB receive buffer: slower than
        the backend and usherd, so the backend has sent everything and closed while the end of
        the message still waits in usherd. wrap turns the socket into a TLS one. Returns
        (everything read, the message's size)."""
        md = os.path.join(self.mail_root, user, "Maildir")
        for d in (os.path.join(self.mail_root, user), md,
                  *(os.path.join(md, x) for x in ("new", "cur", "tmp"))):
            os.makedirs(d, exist_ok=True)
            os.chown(d, MAIL_UID, MAIL_UID)
        line = b"x" * 78 + b"\r\n"
        message = b"Subject: big\r\n\r\n" + line * (size // len(line))
        path = os.path.join(md, "new", f"{time.time_ns()}.big")
        with open(path, "wb") as f:
            f.write(message)
        os.chown(path, MAIL_UID, MAIL_UID)
        c = socket.socket()
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        c.settimeout(20)
        c.connect((host, port))
        if wrap is not None:
            c = wrap(c)
        got, t0 = bytearray(), time.monotonic()
        try:
            while b"\r\n" not in got:
                got += c.recv(4096)
            got.clear()
            c.sendall(f"USER {user}\r\nPASS {PASSWORD}\r\nRETR 1\r\nQUIT\r\n".encode())
            while time.monotonic() - t0 < 60:
                part = c.recv(16384)
                if not part:
                    break
                got += part
                time.sleep(0.002)
        except OSError as e:
            got += f"\n(read failed: {e})".encode()
        c.close()
        return bytes(got), len(message)

    def find_login_backend(self, offsets, user, local, proto, timeout=5.0):
        """The backend whose log (after offsets[b]) shows `proto-login: Login: user=<user>` from
        the client address `local` (any address if local is None)."""
        pat = re.compile(rf"{proto}-login: Info: Login: user=<{re.escape(user)}>" + (
            rf".* rip={re.escape(local[0])}, rport={local[1]}," if local is not None else ","))

        def look():
            for b, off in offsets.items():
                if pat.search(b.log_since(off)):
                    return b.ip
            return None
        src = f" from {local[0]}:{local[1]}" if local is not None else ""
        return wait_for(f"a backend log to show the {proto} login of {user}{src}", look, timeout,
                        interval=0.05)

    def lmtp_deliver(self, host, port, rcpt, body="Subject: usherlab\r\n\r\nhello\r\n",
                     sender="lab@example.com", timeout=10.0):
        """Deliver one message over LMTP; returns smtplib's per-recipient refusals (empty = ok)."""
        with smtplib.LMTP(host, port, timeout=timeout) as c:
            return c.sendmail(sender, [rcpt], body)


def _sigterm_to_exit(signum, frame):
    raise SystemExit(128 + signum)


class _IMAP(imaplib.IMAP4):
    def __init__(self, host, port, timeout, source_ip=None):
        self._source_ip = source_ip
        super().__init__(host, port, timeout=timeout)

    def _create_socket(self, timeout):
        src = (self._source_ip, 0) if self._source_ip else None
        return socket.create_connection((self.host, self.port), timeout, source_address=src)


class _POP3(poplib.POP3):
    def __init__(self, host, port, timeout, source_ip=None):
        self._source_ip = source_ip
        super().__init__(host, port, timeout=timeout)

    def _create_socket(self, timeout):
        src = (self._source_ip, 0) if self._source_ip else None
        return socket.create_connection((self.host, self.port), timeout, source_address=src)


# ---------------------------------------------------------------------------------------------
# test scaffolding shared by the integration tests

SKIP_STATUS = 77


class Tap:
    def __init__(self):
        self.n = 0
        self.failed = 0

    def ok(self, cond, desc, detail=None):
        self.n += 1
        if cond:
            print(f"ok {self.n} - {desc}", flush=True)
        else:
            self.failed += 1
            print(f"not ok {self.n} - {desc}", flush=True)
            if detail:
                self.diag(detail)
        return cond

    @staticmethod
    def diag(msg):
        for line in str(msg).splitlines():
            print(f"# {line}", flush=True)


def ps_lab_lines(lab):
    """Lines of `ps -eo pid,pgid,args` that belong to the lab (by its instance names or root)."""
    out = subprocess.run(["ps", "-eo", "pid,pgid,args"], capture_output=True, text=True).stdout
    marks = [f"dovecot-{i.instance_name}/" for i in lab.instances
             if hasattr(i, "instance_name")] + [lab.root + "/"]
    return [line for line in out.splitlines()[1:]
            if any(m in line for m in marks) and " ps -eo " not in line]


def run_test(run, users=100, **lab_kw):
    """Runs run(lab, tap) in a new Lab with the TAP bookkeeping every integration test shares;
    returns the exit status (0 pass, 1 fail, 77 skipped: no Dovecot here)."""
    reason = dovecot_available()
    if reason:
        print(f"1..0 # SKIP {reason}")
        return SKIP_STATUS
    t = Tap()
    t_total = time.monotonic()
    lab = Lab(users=users, **lab_kw)
    t.diag(f"lab directory {lab.root}")
    try:
        run(lab, t)
    except Exception:
        t.ok(False, "the test ran to completion", traceback.format_exc())
        t.diag(lab.log_tails(25))
    except BaseException as e:      # SIGTERM (meson's timeout) arrives as SystemExit, ^C too
        t.ok(False, f"the test ran to completion (interrupted: {e!r})")
        raise
    finally:
        if t.failed:
            lab.keep = True
            t.diag(f"keeping {lab.root} for its logs")
        t0 = time.monotonic()
        try:
            lab.stop()
            t.diag(f"timing: lab stopped in {time.monotonic() - t0:.2f}s")
        except Exception as e:
            t.ok(False, "the lab stops cleanly", str(e))
        left = ps_lab_lines(lab) + [f"{p} {c}" for p, c in lab.leftover_processes()]
        t.ok(not left, "ps shows no process of the lab left running", "\n".join(left))
    print(f"1..{t.n}")
    t.diag(f"total {time.monotonic() - t_total:.1f}s")
    if t.failed:
        print(f"RESULT: FAIL ({t.failed} of {t.n} checks failed)")
        return 1
    print(f"RESULT: PASS ({t.n} checks)")
    return 0
