"""Helpers for the TLS, AUTH and hardening black-box tests.

Certificates are made at test time with the openssl CLI (session-scoped
fixtures below; the test modules import them).  `Conn` is a raw SMTP client
over a socket that can switch to TLS in place (STARTTLS) or start with it
(implicit TLS, RFC 8314), so a test sees every byte the server sends.
"""
import base64
import re
import shutil
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import free_port

HOSTNAME = "mx.petrel.test"  # conftest's hostname: the certificate is made for it


# ---- certificates ---------------------------------------------------------------


@dataclass
class Cert:
    cert: Path
    key: Path

    def fingerprint(self):
        out = subprocess.run(["openssl", "x509", "-in", str(self.cert), "-noout",
                              "-fingerprint", "-sha256"],
                             check=True, capture_output=True, text=True, timeout=30).stdout
        return out.strip().split("=", 1)[1].replace(":", "").lower()


def make_cert(directory, name="server", key="rsa:2048"):
    """A self-signed certificate for HOSTNAME, localhost and 127.0.0.1."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cert, keyf = directory / f"{name}.crt", directory / f"{name}.key"
    if key == "ec":
        newkey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    else:
        newkey = ["-newkey", key]
    subprocess.run(
        ["openssl", "req", "-x509", *newkey, "-nodes", "-days", "2",
         "-keyout", str(keyf), "-out", str(cert), "-subj", f"/CN={HOSTNAME}",
         "-addext", f"subjectAltName=DNS:{HOSTNAME},DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60)
    # Readable by anyone: a server that dropped privileges may read them again.
    cert.chmod(0o644)
    keyf.chmod(0o644)
    return Cert(cert, keyf)


@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    """The server certificate (RSA 2048)."""
    return make_cert(tmp_path_factory.mktemp("certs"), "server", "rsa:2048")


@pytest.fixture(scope="session")
def certs_ec(tmp_path_factory):
    """A second, different certificate (EC P-256), for the SIGHUP reload test."""
    return make_cert(tmp_path_factory.mktemp("certs_ec"), "server_ec", "ec")


def client_context(cert=None, verify=True):
    """A TLS client context trusting the test certificate (or trusting nothing)."""
    if verify and cert is not None:
        ctx = ssl.create_default_context(cafile=str(cert.cert))
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


# ---- users ------------------------------------------------------------------------

# user -> (scheme, password); every scheme the users file may name.
USERS = {
    "alice@example.test": ("PLAIN", "alice-secret"),
    "bob@example.test": ("SHA512-CRYPT", "bob pass phrase"),
    "carol@example.test": ("BLF-CRYPT", "carol-s3cret!"),
    "dave@example.test": ("CRYPT", "davepw12"),
}


def bcrypt_hash(password):
    """A $2b$ bcrypt hash, or None when no tool here can make one."""
    try:
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt  # removed in Python 3.13
        h = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))
        if h and h.startswith("$2"):
            return h
    except (ImportError, AttributeError, ValueError, OSError):
        pass
    if shutil.which("htpasswd"):
        out = subprocess.run(["htpasswd", "-nbB", "-C", "4", "x", password],
                             capture_output=True, text=True, timeout=30).stdout.strip()
        if ":" in out:
            return out.split(":", 1)[1]
    return None


def crypt_hash(password):
    """A crypt(3) hash for {CRYPT}: DES when Python's crypt has it, else MD5-crypt."""
    try:
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt
        h = crypt.crypt(password, "pT")
        if h and len(h) == 13:
            return h
    except (ImportError, AttributeError, OSError):
        pass
    return subprocess.run(["openssl", "passwd", "-1", password], check=True,
                          capture_output=True, text=True, timeout=30).stdout.strip()


def sha512_hash(password):
    return subprocess.run(["openssl", "passwd", "-6", "-stdin"], input=password + "\n",
                          check=True, capture_output=True, text=True, timeout=30).stdout.strip()


@pytest.fixture(scope="session")
def users_lines():
    """user -> the users-file line for it (None when the scheme cannot be made here)."""
    lines = {}
    for user, (scheme, pw) in USERS.items():
        if scheme == "PLAIN":
            h = pw
        elif scheme == "SHA512-CRYPT":
            h = sha512_hash(pw)
            assert h.startswith("$6$"), h
        elif scheme == "BLF-CRYPT":
            h = bcrypt_hash(pw)
        else:
            h = crypt_hash(pw)
        lines[user] = f"{user}:{{{scheme}}}{h}" if h else None
    return lines


def write_users(path, users_lines):
    path.write_text("".join(l + "\n" for l in users_lines.values() if l))
    path.chmod(0o644)
    return path


def plain_b64(user, password, authzid=""):
    return base64.b64encode(f"{authzid}\0{user}\0{password}".encode()).decode()


def b64(s):
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


# ---- servers ----------------------------------------------------------------------


def tls_server(factory, cert, users_lines=None, aliases=None, submission=False,
               submissions=False, tls=True, **overrides):
    """A petrel with TLS (and a users file, submission listeners) as asked.

    Returns the Petrel; .sub_port / .subs_port are the STARTTLS and implicit
    TLS submission ports (None when not configured).
    """
    conf = dict(overrides)
    if tls:
        conf.setdefault("tls_cert", str(cert.cert))
        conf.setdefault("tls_key", str(cert.key))
    sub_port = subs_port = None
    if submission:
        sub_port = free_port()
        conf["listen_submission"] = f"127.0.0.1:{sub_port}"
    if submissions:
        subs_port = free_port()
        conf["listen_submissions"] = f"127.0.0.1:{subs_port}"
    p = factory(start=False, **conf)
    if users_lines is None and (submission or submissions):
        # submission listeners need users to authenticate (check-config says so)
        users_lines = {"alice": "alice@example.test:{PLAIN}alice-secret"}
    if users_lines is not None:
        p.conf["users_file"] = str(write_users(p.dir / "users", users_lines))
    if aliases is not None:
        af = p.dir / "aliases"
        af.write_text("".join(f"{a}: {t}\n" for a, t in aliases.items()))
        p.conf["aliases_file"] = str(af)
    p.sub_port, p.subs_port = sub_port, subs_port
    p.start()
    return p


# ---- a raw SMTP client that can switch to TLS --------------------------------------


class Reply:
    """One SMTP reply: code, enhanced code of the last line, lines."""

    def __init__(self, lines):
        self.lines = lines
        self.code = int(lines[-1][:3])
        m = re.match(r"\d{3}[ -](\d\.\d{1,3}\.\d{1,3})( |$)", lines[-1])
        self.enh = m.group(1) if m else None
        self.text = "\r\n".join(lines)

    def __repr__(self):
        return f"Reply({self.text!r})"

    def keywords(self):
        """EHLO keywords (upper case) of a 250 EHLO reply, the greeting line excluded."""
        return [l[4:].split(" ")[0].upper() for l in self.lines[1:]]


def expect(reply, code, enh=None):
    assert reply.code == code, reply
    for line in reply.lines:
        assert int(line[:3]) == code, reply
    if enh is not None:
        assert reply.enh == enh, reply
    return reply


class Conn:
    """A line-buffered SMTP client; .tls() switches the same socket to TLS."""

    def __init__(self, port, host="127.0.0.1", implicit_tls=False, ctx=None, source=None,
                 timeout=15.0, greeting=True):
        self.sock = socket.create_connection(
            (host, port), timeout=timeout, source_address=(source, 0) if source else None)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.buf = b""
        if implicit_tls:
            self.sock = (ctx or client_context()).wrap_socket(
                self.sock, server_hostname=HOSTNAME)
        self.greeting = self.reply() if greeting else None

    def send(self, data):
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def _line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"connection closed; unparsed {self.buf[:200]!r}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode("utf-8", errors="replace")

    def reply(self):
        lines = []
        while True:
            line = self._line()
            lines.append(line)
            assert re.match(r"\d{3}[ -]|\d{3}$", line), lines
            if len(line) == 3 or line[3] == " ":
                return Reply(lines)

    def cmd(self, line):
        self.send(line + (b"\r\n" if isinstance(line, bytes) else "\r\n"))
        return self.reply()

    def ehlo(self, name="client.example"):
        return expect(self.cmd(f"EHLO {name}"), 250)

    def starttls(self, ctx=None):
        """STARTTLS, its 220, then the handshake on the same socket."""
        expect(self.cmd("STARTTLS"), 220, "2.0.0")
        assert self.buf == b"", f"bytes after the 220 to STARTTLS: {self.buf!r}"
        self.sock = (ctx or client_context()).wrap_socket(self.sock, server_hostname=HOSTNAME)

    def auth_plain(self, user, password):
        return self.cmd(f"AUTH PLAIN {plain_b64(user, password)}")

    def closed(self, timeout=10.0):
        """True when the server closes the connection (EOF or reset) within timeout."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except (ConnectionResetError, ssl.SSLError, BrokenPipeError):
            return True
        except socket.timeout:
            return False
        finally:
            self.sock.settimeout(self.timeout)

    def silent_for(self, seconds):
        """True when nothing at all arrives for `seconds` (the connection stays open)."""
        self.sock.settimeout(seconds)
        try:
            chunk = self.sock.recv(65536)
        except (socket.timeout, ssl.SSLWantReadError):
            return True
        finally:
            self.sock.settimeout(self.timeout)
        self.buf += chunk
        return False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def timed(fn, *args):
    t0 = time.monotonic()
    r = fn(*args)
    return r, time.monotonic() - t0
