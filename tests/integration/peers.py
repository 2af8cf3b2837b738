"""The real peers of the relay tests: dnsmasq, Postfix's smtp-sink, Postfix.

Every process started here is stopped by its PID (or its own process group,
which it leads) in stop(); the fixtures in test_relay.py call stop() in their
finalizers.  See /work/shared/PEERS.md for the facts these follow.
"""
import os
import re
import pwd
import random
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from pathlib import Path

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
POSTFIX_MASTER = "/usr/lib/postfix/sbin/master"


def bind_error(addrs, port, family=socket.AF_INET):
    """None when port is free for TCP and UDP on every address, else why not."""
    for a in addrs:
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            try:
                with socket.socket(family, kind) as s:
                    s.bind((a, port))
            except OSError as e:
                return f"{a}:{port}: {e}"
    return None


def port_free_on(addrs, port, family=socket.AF_INET):
    """True when TCP and UDP port is free on every address (port 0: any)."""
    return bind_error(addrs, port, family) is None


def _ephemeral_low():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def common_port(addrs):
    """A port number free (TCP and UDP) on each of addrs.  Taken below the
    ephemeral range, so that the client sockets of busy neighbours (load
    tests leave thousands in TIME_WAIT) never hold it."""
    hi = _ephemeral_low()
    lo = max(1024, hi - 12000)
    why = None
    for _ in range(500):
        port = random.randrange(lo, hi)
        why = bind_error(addrs, port)
        if why is None:
            return port
    raise RuntimeError(f"no common free port on {addrs}; last: {why}")


def missing_tool(*paths):
    """The first of paths that is not an executable file, or None."""
    for p in paths:
        if not (os.path.isfile(p) and os.access(p, os.X_OK)):
            return p
    return None


def wait_tcp(host, port, timeout=10.0, proc=None, banner=True):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited early with {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=1.0) as s:
                if banner:
                    # any greeting: a peer may be told to refuse (smtp-sink -f CONNECT: 5xx)
                    s.settimeout(3.0)
                    if re.match(rb"[2-5]\d\d[ -]", s.recv(512)):
                        return
                else:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"nothing answers on {host}:{port}")


def stop_proc(proc, sig=signal.SIGTERM, timeout=10, group=False):
    """Stops a process we started (and, with group, the group it leads)."""
    if proc is None:
        return
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig) if group else proc.send_signal(sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if group:
        # Children of a master that died first: same process group, ours.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


# ---- DNS -------------------------------------------------------------------------


def dns_query(host, port, name, qtype=15, timeout=1.0):
    """Sends one query; returns the rcode, or None without an answer."""
    qname = b"".join(bytes([len(l)]) + l.encode() for l in name.split(".") if l) + b"\0"
    pkt = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + qname + struct.pack(">HH", qtype, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.sendto(pkt, (host, port))
            data, _ = s.recvfrom(4096)
        except OSError:
            return None
    return data[3] & 0x0F


class Dnsmasq:
    """dnsmasq on 127.0.0.1:PORT serving the given records; every other *.test
    name is NXDOMAIN (--local=/test/), nothing is forwarded."""

    def __init__(self, workdir: Path, records, host="127.0.0.1"):
        self.dir = Path(workdir)
        self.host = host
        self.port = common_port([host])
        self.records = list(records)
        self.log_path = self.dir / "dnsmasq.log"
        self.proc = None

    @property
    def address(self):
        return f"{self.host}:{self.port}"

    def start(self):
        args = [DNSMASQ, "--no-daemon", "--port", str(self.port),
                "--listen-address", self.host, "--bind-interfaces",
                "--no-resolv", "--no-hosts", "--local=/test/", "--pid-file=",
                # dnsmasq-base has no "dnsmasq" user to drop privileges to
                "--user=root", "--log-queries"] + self.records
        self.logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen(args, stdout=self.logf, stderr=subprocess.STDOUT)
        deadline = time.time() + 10
        while dns_query(self.host, self.port, "ready.test", 1, 0.2) is None:
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"dnsmasq did not start: {self.log()}")
        return self

    def stop(self):
        stop_proc(self.proc)
        self.proc = None
        if hasattr(self, "logf"):
            self.logf.close()

    def log(self):
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


# ---- Postfix's smtp-sink ------------------------------------------------------------


class SmtpSink:
    """smtp-sink on addr:port: a protocol sink that can answer commands with
    4xx (-r CMD) or 5xx (-f CMD); it stores nothing."""

    def __init__(self, workdir: Path, host, port, args=()):
        self.dir = Path(workdir)
        self.host, self.port = host, port
        self.args = list(args)
        self.log_path = self.dir / f"smtp-sink-{host}-{port}.log"
        self.proc = None

    def start(self):
        self.logf = open(self.log_path, "ab")
        # As root smtp-sink wants a user to switch to after binding.
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        self.proc = subprocess.Popen(
            [SMTP_SINK, "-v", "-h", "sink.test"] + user + self.args + [f"{self.host}:{self.port}", "64"],
            stdout=self.logf, stderr=subprocess.STDOUT)
        wait_tcp(self.host, self.port, proc=self.proc)
        return self

    def stop(self):
        stop_proc(self.proc)
        self.proc = None
        if hasattr(self, "logf"):
            self.logf.close()

    def log(self):
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


# ---- Postfix ------------------------------------------------------------------------

MASTER_CF = """\
{listen} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class Postfix:
    """A private Postfix instance: its own config, queue and data directories
    under a short /tmp path (unix socket paths must fit in 108 bytes), no
    chroot, one smtpd on host:port, virtual mailboxes (Maildirs) for the
    given users, a log file of its own."""

    def __init__(self, host, port, users, hostname="pf.b.test"):
        self.host, self.port = host, port
        self.users = list(users)
        self.domains = sorted({u.split("@")[1] for u in self.users})
        self.hostname = hostname
        self.dir = Path(tempfile.mkdtemp(prefix="pf", dir="/tmp"))
        self.mail_base = self.dir / "mail"
        self.log_path = self.dir / "maillog"
        self.proc = None

    def write_config(self):
        d = self.dir
        pw = pwd.getpwnam("postfix")
        d.chmod(0o755)  # Postfix's daemons run as the postfix user
        (d / "data").mkdir(exist_ok=True)
        os.chown(d / "data", pw.pw_uid, pw.pw_gid)
        (d / "q").mkdir(exist_ok=True)
        self.mail_base.mkdir(exist_ok=True)
        os.chown(self.mail_base, pw.pw_uid, pw.pw_gid)
        (d / "vmailbox").write_text(
            "".join(f"{u} {u.split('@')[1]}/{u.split('@')[0]}/\n" for u in self.users))
        main = {
            "compatibility_level": "3.6",
            "config_directory": str(d),
            "queue_directory": str(d / "q"),
            "data_directory": str(d / "data"),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": self.hostname,
            "mydomain": "b.test",
            "myorigin": "$myhostname",
            "mydestination": "",
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "relay_domains": "",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "virtual_mailbox_domains": ", ".join(self.domains),
            "virtual_mailbox_base": str(self.mail_base),
            "virtual_mailbox_maps": f"texthash:{d / 'vmailbox'}",
            "virtual_uid_maps": f"static:{pw.pw_uid}",
            "virtual_gid_maps": f"static:{pw.pw_gid}",
            "virtual_minimum_uid": "1",
            "maillog_file": str(self.log_path),
            "maillog_file_prefixes": "/tmp",
            "smtpd_peername_lookup": "no",
            "in_flow_delay": "0",
            "local_header_rewrite_clients": "",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "biff": "no",
            "smtputf8_enable": "yes",
            "disable_dns_lookups": "yes",
            "smtp_host_lookup": "native",
            "shlib_directory": "/usr/lib/postfix",
            "daemon_directory": "/usr/lib/postfix/sbin",
            "meta_directory": "/etc/postfix",
        }
        (d / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in main.items()))
        (d / "master.cf").write_text(MASTER_CF.format(listen=f"{self.host}:{self.port}"))
        # Postfix waits while main.cf is younger than a second: backdate it.
        past = time.time() - 2
        for f in ("main.cf", "master.cf", "vmailbox"):
            os.utime(d / f, (past, past))

    def start(self, timeout=20.0):
        self.write_config()
        env = dict(os.environ, MAIL_CONFIG=str(self.dir))
        # Creates the queue directories and fixes their owners.
        chk = subprocess.run([POSTFIX, "-c", str(self.dir), "check"], env=env,
                             capture_output=True, text=True, timeout=60)
        if chk.returncode != 0:
            raise RuntimeError(f"postfix check failed: {chk.stdout}{chk.stderr}")
        self.stderr_path = self.dir / "master.stderr"
        self.errf = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen([POSTFIX_MASTER, "-c", str(self.dir), "-d"], env=env,
                                     stdout=self.errf, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        wait_tcp(self.host, self.port, timeout=timeout, proc=self.proc)
        return self

    def stop(self):
        stop_proc(self.proc, group=True)
        self.proc = None
        if hasattr(self, "errf"):
            self.errf.close()

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def log(self):
        out = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        if hasattr(self, "stderr_path") and self.stderr_path.exists():
            out += self.stderr_path.read_text(errors="replace")
        return out

    def messages(self, addr):
        user, domain = addr.split("@")
        new = self.mail_base / domain / user / "new"
        if not new.is_dir():
            return []
        return [p.read_bytes() for p in sorted(new.iterdir())]
