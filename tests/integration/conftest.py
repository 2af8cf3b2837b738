"""Shared fixtures for petrel's black-box tests.

Every test gets its own petrel process on a free loopback port, with its own
spool and Maildir root under a temporary directory.  The binary under test is
$PETREL_BIN (default: build/petrel); the ASan/UBSan run sets it to
build/san/petrel.  Every process a test starts, it stops (by PID).
"""
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PETREL_BIN = Path(os.environ.get("PETREL_BIN", ROOT / "build" / "petrel")).resolve()


def free_port(host="127.0.0.1"):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_port(host, port, timeout=10.0, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"petrel exited early with {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.5) as s:
                s.recv(512)  # the greeting; also keeps the server's log quiet
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port}")


class Petrel:
    """One petrel server: config, process, log and Maildir helpers."""

    def __init__(self, workdir: Path, **overrides):
        self.dir = workdir
        self.host = "127.0.0.1"
        self.port = free_port()
        self.mail_root = workdir / "mail"
        self.spool = workdir / "spool"
        self.log_path = workdir / "petrel.log"
        self.conf_path = workdir / "petrel.conf"
        self.proc = None
        self.conf = {
            "hostname": "mx.petrel.test",
            "listen_smtp": f"{self.host}:{self.port}",
            "local_domains": "localhost, example.test",
            "mail_root": str(self.mail_root),
            "spool_dir": str(self.spool),
            "relay_networks": "127.0.0.0/8",
            "retry_min": "1s",
            "retry_max": "2s",
            # Never the host's DNS: nothing answers here, so foreign mail is
            # deferred unless a test starts its own dnsmasq.
            "dns_resolver": "127.0.0.1:1",
        }
        self.conf.update({k: str(v) for k, v in overrides.items() if v is not None})
        for k, v in overrides.items():
            if v is None:
                self.conf.pop(k, None)

    def write_conf(self):
        self.conf_path.write_text("".join(f"{k} = {v}\n" for k, v in self.conf.items()))

    def start(self, wait=True):
        self.write_conf()
        self.logf = open(self.log_path, "ab")
        env = dict(os.environ)
        env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0:exitcode=86")
        env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1:exitcode=87")
        self.proc = subprocess.Popen(
            [str(PETREL_BIN), "serve", "-c", str(self.conf_path)],
            stdout=self.logf, stderr=subprocess.STDOUT, cwd=self.dir, env=env)
        if wait:
            wait_port(self.host, self.port, proc=self.proc)
        return self

    def stop(self, sig=signal.SIGTERM, timeout=30):
        """Stops the server; returns its exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        rc = self.proc.returncode
        self.proc = None
        self.logf.close()
        return rc

    def kill9(self):
        self.proc.kill()
        self.proc.wait()
        self.proc = None
        self.logf.close()

    def log(self):
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def maildir(self, addr):
        user, domain = addr.split("@")
        return self.mail_root / domain / user

    def messages(self, addr):
        """Contents (bytes) of the files in addr's Maildir new/, oldest name first."""
        new = self.maildir(addr) / "new"
        if not new.is_dir():
            return []
        return [p.read_bytes() for p in sorted(new.iterdir())]

    def wait_messages(self, addr, count, timeout=15.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            msgs = self.messages(addr)
            if len(msgs) >= count:
                return msgs
            time.sleep(0.05)
        return self.messages(addr)

    def queue_files(self):
        """Queue entries (ID, ID.st); the spare files kept for reuse (.spare.N) are not."""
        q = self.spool / "queue"
        return sorted(p.name for p in q.iterdir() if not p.name.startswith(".")) if q.is_dir() else []

    def connect(self, timeout=10.0):
        """A raw socket to the server, past the greeting; returns (sock, greeting)."""
        s = socket.create_connection((self.host, self.port), timeout=timeout)
        return s, recv_reply(s)


def recv_reply(sock, timeout=10.0):
    """Reads one whole (possibly multi-line) SMTP reply; returns it as str."""
    sock.settimeout(timeout)
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data.decode(errors="replace")
        data += chunk
        lines = data.split(b"\r\n")
        # complete when the last full line has a space after the code
        full = lines[:-1]
        if full and len(full[-1]) >= 4 and full[-1][3:4] == b" ":
            return data.decode(errors="replace")


def recv_replies(sock, n, timeout=10.0):
    """Reads until n final reply lines arrived; returns the list of final lines."""
    sock.settimeout(timeout)
    data = b""
    while True:
        finals = [l for l in data.split(b"\r\n")[:-1] if len(l) >= 4 and l[3:4] == b" "]
        if len(finals) >= n:
            return [l.decode(errors="replace") for l in finals]
        chunk = sock.recv(65536)
        if not chunk:
            return [l.decode(errors="replace") for l in finals]
        data += chunk


@pytest.fixture
def petrel_factory(tmp_path):
    servers = []

    def make(start=True, **overrides):
        d = tmp_path / f"p{len(servers)}"
        d.mkdir()
        p = Petrel(d, **overrides)
        servers.append(p)
        if start:
            p.start()
        return p

    yield make
    sanitizer_errors = []
    for p in servers:
        rc = p.stop()
        log = p.log()
        if "Sanitizer" in log or "runtime error:" in log:
            sanitizer_errors.append(log)
        if rc not in (None, 0):
            sanitizer_errors.append(f"petrel exited with {rc}:\n{log[-4000:]}")
    assert not sanitizer_errors, sanitizer_errors[0][-6000:]


@pytest.fixture
def petrel(petrel_factory):
    return petrel_factory()
