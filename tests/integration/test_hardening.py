"""Hostile input: the server must answer with the precise code, never crash,
never relay, never keep a partial message, and stay available.

Run under the ASan/UBSan build too (PETREL_BIN=build/san/petrel): the
petrel_factory fixture fails a test whose server logged a sanitizer report or
exited with a non-zero status.
"""
import os
import pwd
import re
import resource
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from conftest import PETREL_BIN
from mailtest import (all_maildir_files, block_maildir, log_lines, spool_tmp_files, wait_for,
                      wait_log, wait_queue_empty)
from tlsutil import Conn, b64, certs, expect, plain_b64, tls_server  # noqa: F401

SANITIZED = "san" in PETREL_BIN.parts  # build/san/petrel: RSS includes ASan's shadow
ASAN_DEFAULT = "detect_leaks=1:abort_on_error=0:exitcode=86"  # as conftest sets it


def session(p, **kw):
    c = Conn(p.port, **kw)
    expect(c.greeting, 220)
    c.ehlo()
    return c


def alive(p):
    """A new client gets a greeting and a whole transaction is still possible."""
    with Conn(p.port, timeout=10) as c:
        expect(c.greeting, 220)
        c.ehlo()
        expect(c.cmd("MAIL FROM:<check@example.org>"), 250, "2.1.0")
        expect(c.cmd("RCPT TO:<check@localhost>"), 250, "2.1.5")
        expect(c.cmd("RSET"), 250, "2.0.0")
    assert p.proc.poll() is None


def domain_of(length):
    """A syntactically valid domain of exactly `length` octets (labels <= 63)."""
    labels, left = [], length
    while left > 0:
        if left <= 63:
            labels.append("d" * left)
            break
        take = min(63, left - 2)  # keep room for the dot and a label of >= 1
        labels.append("d" * take)
        left -= take + 1
    d = ".".join(labels)
    assert len(d) == length
    return d


def vm_rss_kb(pid):
    m = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(m.group(1))


def cpu_seconds(pid):
    """User + system CPU time of a process, all its threads, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_ids(pid, field):
    m = re.search(rf"^{field}:\s+(.*)$", Path(f"/proc/{pid}/status").read_text(), re.M)
    return [int(x) for x in m.group(1).split()]


# ---- command lines -------------------------------------------------------------------


def test_command_lines_between_512_and_1000_octets_accepted(petrel):
    """RFC 5321 4.5.3.1.4 says 512, but extensions lengthen MAIL/RCPT; 1000 is the cap."""
    c = session(petrel)
    line = "NOOP " + "x" * (600 - 5 - 2)
    assert len(line) + 2 == 600
    expect(c.cmd(line), 250, "2.0.0")
    line = "MAIL FROM:<a@example.org> SIZE=100"
    expect(c.cmd(line + " " * (998 - len(line))), 250, "2.1.0")  # 1000 with CRLF
    expect(c.cmd("RCPT TO:<u@localhost>"), 250, "2.1.5")
    c.close()


@pytest.mark.parametrize("cut", [512, 998, 1000, 1022, 1024, 2048, 4094, 4096, 16384, 65536])
def test_overlong_line_500_and_tail_not_a_command(petrel, cut):
    """Over 1000 octets: one 500, and nothing of the line runs as a command.

    The line ends in QUIT right after octet `cut`: a server that split long
    lines at that boundary would run it (221 and close).
    """
    c = session(petrel)
    expect(c.cmd("MAIL FROM:<a@example.org>"), 250, "2.1.0")
    line = b"NOOP " + b"x" * (cut - 5) + b"QUIT"
    c.send(line + b"\r\n")
    if len(line) + 2 <= 1000:
        expect(c.reply(), 250, "2.0.0")
    else:
        expect(c.reply(), 500, "5.5.2")
    # the transaction survived: no QUIT ran, nothing else was answered
    expect(c.cmd("RCPT TO:<u@localhost>"), 250, "2.1.5")
    assert c.silent_for(0.2), c.buf
    c.close()


def test_one_mebibyte_without_line_end(petrel):
    c = session(petrel)
    c.send(b"Z" * (1024 * 1024))
    # the server still answers while skipping: nothing until the line ends
    c.send(b"\r\n")
    expect(c.reply(), 500, "5.5.2")
    assert c.silent_for(0.3), c.buf  # exactly one reply for the whole line
    expect(c.cmd("NOOP"), 250, "2.0.0")
    c.close()
    # and a client that leaves in the middle of such a line changes nothing
    c = session(petrel)
    c.send(b"Z" * (1024 * 1024))
    c.close()
    alive(petrel)


def test_many_mebibytes_without_line_end_then_quit(petrel):
    c = session(petrel)
    chunk = b"\x00\xff" * (512 * 1024)
    for _ in range(8):
        c.send(chunk)
    c.send(b"\r\nQUIT\r\n")
    expect(c.reply(), 500, "5.5.2")
    expect(c.reply(), 221, "2.0.0")
    assert c.closed(10)
    c.close()


# ---- NUL and control bytes -------------------------------------------------------------


@pytest.mark.parametrize("line", [
    b"NO\x00OP", b"\x00NOOP", b"NOOP\x00", b"NO\x08OP", b"NOOP\x1b[31m", b"NOOP\x7f",
    b"RSET\x00", b"EHLO cl\x00ient.example", b"HELO a\x01b",
    b"MAIL FROM:<a\x00b@example.org>", b"MAIL FROM:<ab@exam\x00ple.org>",
    b"MAIL FROM:<ab@example.org>\x00", b"MAIL FROM:<ab@example.org> SIZE=1\x00",
    b"MAIL FROM:<\"a\x00b\"@example.org>", b"MAIL FROM:<\"a\\\x00b\"@example.org>",
    b"MAIL FROM:<a\x0cb@example.org>", b"MAIL FROM:<a@example.org>\x0b",
])
def test_control_bytes_in_commands_500(petrel, line):
    c = session(petrel)
    expect(c.cmd(line), 500, "5.5.2")
    # the session is intact: a normal transaction follows
    expect(c.cmd("MAIL FROM:<a@example.org>"), 250, "2.1.0")
    expect(c.cmd("RCPT TO:<u@localhost>"), 250, "2.1.5")
    c.close()


@pytest.mark.parametrize("rcpt", [b"u\x00@localhost", b"u@local\x00host", b"u\x01@localhost",
                                  b"\"u\x00\"@localhost", b"u@localhost\x00.evil",
                                  b"u\x7f@localhost"])
def test_control_bytes_in_recipient_refused_nothing_delivered(petrel, rcpt):
    c = session(petrel)
    expect(c.cmd("MAIL FROM:<a@example.org>"), 250, "2.1.0")
    expect(c.cmd(b"RCPT TO:<" + rcpt + b">"), 500, "5.5.2")
    expect(c.cmd("DATA"), 554, "5.5.1")  # no valid recipient
    expect(c.cmd("RCPT TO:<ok@localhost>"), 250, "2.1.5")
    c.close()
    time.sleep(0.2)
    assert not (petrel.mail_root / "localhost" / "u").exists()


def test_high_bit_and_utf8_garbage_in_commands(petrel):
    c = session(petrel)
    expect(c.cmd(b"\xff\xfe\xfd"), 500, "5.5.2")
    expect(c.cmd(b"NOOP \xc3\x28"), 250, "2.0.0")  # NOOP ignores its argument
    expect(c.cmd(b"MAIL FROM:<\xc3\x28@example.org> SMTPUTF8"), 501, "5.1.7")  # bad UTF-8
    expect(c.cmd(b"MAIL FROM:<a@example.org>"), 250, "2.1.0")
    expect(c.cmd(b"RCPT TO:<\xed\xa0\x80@localhost>"), 501, "5.1.3")  # a UTF-16 surrogate
    c.close()


# ---- lengths of addresses -------------------------------------------------------------


def test_address_lengths(petrel):
    """A path of 256 octets is accepted, 257 is 501 (RFC 5321 4.5.3.1.3); local part 64/65."""
    c = session(petrel)
    local = "l" * 64
    ok = f"{local}@{domain_of(256 - 65)}"
    assert len(ok) == 256
    expect(c.cmd(f"MAIL FROM:<{ok}>"), 250, "2.1.0")
    expect(c.cmd("RSET"), 250, "2.0.0")
    too_long = f"{local}@{domain_of(257 - 65)}"
    expect(c.cmd(f"MAIL FROM:<{too_long}>"), 501, "5.1.7")
    expect(c.cmd(f"MAIL FROM:<{'l' * 65}@example.org>"), 501, "5.1.7")
    expect(c.cmd(f"MAIL FROM:<a@{domain_of(300)}>"), 501, "5.1.7")
    expect(c.cmd(f"MAIL FROM:<{'q' * 900}@example.org>"), 501, "5.1.7")
    expect(c.cmd("MAIL FROM:<a@example.org>"), 250, "2.1.0")
    expect(c.cmd(f"RCPT TO:<{ok}>"), 250, "2.1.5")  # relaying is allowed from 127.0.0.1
    expect(c.cmd(f"RCPT TO:<{too_long}>"), 501, "5.1.3")
    expect(c.cmd(f"RCPT TO:<{'l' * 65}@localhost>"), 501, "5.1.3")
    expect(c.cmd(f"RCPT TO:<@{domain_of(200)},@{domain_of(60)}:u@localhost>"), 501, "5.1.3")
    expect(c.cmd(f"RCPT TO:<\"{'q' * 63}\"@localhost>"), 501, "5.1.3")  # 65 with quotes
    c.close()


# ---- CR / LF injection -----------------------------------------------------------------


@pytest.mark.parametrize("first", [
    b"MAIL FROM:<a@example.org> SIZE=10\rRCPT TO:<x@localhost>",
    b"MAIL FROM:<a@example.org>\rRCPT TO:<x@localhost>",
    b"MAIL FROM:<a@example.org\r> SIZE=10",
    b"MAIL FROM:<a@example.org> SIZE=10\r\r",
    b"EHLO client.example\rMAIL FROM:<a@example.org>",
])
def test_bare_cr_injection_in_parameters_500(petrel, first):
    """A bare CR is not a line end: the whole line is refused and nothing of it runs."""
    c = session(petrel)
    expect(c.cmd(first), 500, "5.5.2")
    expect(c.cmd("RCPT TO:<x@localhost>"), 503, "5.5.1")  # no MAIL took effect
    c.close()


def test_lf_ends_a_command_line_but_never_joins_a_parameter(petrel):
    """A bare LF ends a command line (as in Postfix): two commands, each whole."""
    c = session(petrel)
    c.send(b"MAIL FROM:<a@example.org> SIZE=10\nRCPT TO:<x@localhost>\r\n")
    expect(c.reply(), 250, "2.1.0")
    expect(c.reply(), 250, "2.1.5")
    expect(c.cmd("RSET"), 250, "2.0.0")
    # a parameter value cannot carry an LF into what the server stores
    c.send(b"MAIL FROM:<a@example.org> SIZE=10\nX-Injected: yes\r\n")
    expect(c.reply(), 250, "2.1.0")
    expect(c.reply(), 500, "5.5.2")
    c.close()


def test_crlf_injection_in_helo_does_not_reach_received_header(petrel):
    c = session(petrel)
    expect(c.cmd(b"EHLO evil\rX-Injected: yes"), 500, "5.5.2")
    expect(c.cmd(b"HELO evil\x00X-Injected"), 500, "5.5.2")
    c.ehlo("good.example")
    expect(c.cmd("MAIL FROM:<a@example.org>"), 250, "2.1.0")
    expect(c.cmd("RCPT TO:<inj@localhost>"), 250, "2.1.5")
    expect(c.cmd("DATA"), 354)
    c.send(b"Subject: x\r\n\r\nbody\r\n.\r\n")
    expect(c.reply(), 250, "2.0.0")
    c.close()
    m = petrel.wait_messages("inj@localhost", 1)
    assert len(m) == 1
    assert b"X-Injected" not in m[0]
    assert b"Received: from good.example " in m[0]


# ---- address forms: quoted @, source routes, relay tricks --------------------------


def deliver_raw(p, rcpt, source=None, sender="a@example.org"):
    """One transaction; returns the RCPT reply (and sends the message when accepted)."""
    c = session(p, source=source)
    expect(c.cmd(f"MAIL FROM:<{sender}>"), 250, "2.1.0")
    r = c.cmd(f"RCPT TO:<{rcpt}>")
    if r.code == 250:
        expect(c.cmd("DATA"), 354)
        c.send(f"Subject: to {rcpt}\r\n\r\nbody\r\n.\r\n".encode())
        expect(c.reply(), 250, "2.0.0")
    c.close()
    return r


def test_quoted_local_part_with_at_is_local(petrel):
    r = deliver_raw(petrel, '"a@b.example"@localhost')
    expect(r, 250, "2.1.5")
    m = wait_for(lambda: all_maildir_files(petrel.mail_root), 10)
    assert len(m) == 1
    assert m[0].parent.parent.parent == petrel.mail_root / "localhost", m
    assert wait_queue_empty(petrel), petrel.queue_files()
    assert not re.search(r"to=<[^>]*@b\.example>", petrel.log())


def test_source_route_accepted_delivered_to_mailbox(petrel):
    """RFC 5321 4.1.2 / Appendix C: the A-d-l is accepted and ignored."""
    c = session(petrel)
    expect(c.cmd("MAIL FROM:<@relay.example:sender@example.org>"), 250, "2.1.0")
    expect(c.cmd("RCPT TO:<@a.example,@b.example:u@localhost>"), 250, "2.1.5")
    expect(c.cmd("DATA"), 354)
    c.send(b"Subject: source route\r\n\r\nbody\r\n.\r\n")
    expect(c.reply(), 250, "2.0.0")
    c.close()
    m = petrel.wait_messages("u@localhost", 1)
    assert len(m) == 1
    assert m[0].startswith(b"Return-Path: <sender@example.org>\nDelivered-To: u@localhost\n")
    assert wait_queue_empty(petrel)
    assert not re.search(r"to=<[^>]*(a|b)\.example>", petrel.log())


# (recipient, reply); 250 means: accepted for LOCAL delivery only (checked below).
RELAY_TRICKS = [
    ("u@remote.example", "550 5.7.1"),
    ("u@REMOTE.EXAMPLE", "550 5.7.1"),
    ("u@remote.example.", "501 5.1.3"),       # no trailing dot in RFC 5321 Domain
    ("u@[127.0.0.1]", "550 5.7.1"),           # an address literal is not a local domain
    ("u@[IPv6:::1]", "550 5.7.1"),
    ("u%remote.example@localhost", "250 2.1.5"),  # the percent hack: a local part here
    ("u%remote.example", "501 5.1.3"),
    ("remote.example!u@localhost", "250 2.1.5"),  # a bang path: a local part here
    ("u@remote.example@localhost", "501 5.1.3"),
    ('"u@remote.example"@localhost', "250 2.1.5"),
    ("@localhost:u@remote.example", "550 5.7.1"),  # a source route through us: no
    ("@remote.example:u@localhost", "250 2.1.5"),  # the route is ignored (RFC 5321 C)
    ("u@localhost.remote.example", "550 5.7.1"),
    ("u@remote.example%localhost", "501 5.1.3"),
    ("u@localhost@remote.example", "501 5.1.3"),
    ("<u@remote.example>", "501 5.1.3"),
]


def test_open_relay_tricks_from_outside_relay_networks(petrel_factory):
    p = petrel_factory(relay_networks="127.0.0.1/32")
    accepted = 0
    for rcpt, want in RELAY_TRICKS:
        r = deliver_raw(p, rcpt, source="127.0.0.2")
        code, enh = want.split()
        expect(r, int(code), enh)
        accepted += r.code == 250
    # whatever was accepted is delivered here, and nothing waits for remote.example
    assert wait_for(lambda: len(all_maildir_files(p.mail_root)) >= accepted, 15)
    assert wait_queue_empty(p, 15), p.queue_files()
    files = all_maildir_files(p.mail_root)
    assert len(files) == accepted
    for f in files:
        assert f.parent.parent.parent == p.mail_root / "localhost", f
    log = p.log()
    # no delivery line for them (their refusals are logged as "reject: RCPT ... to=<...>")
    assert not re.search(r"to=<[^>]*@(remote\.example\.?|\[[^\]]*\])>, relay=", log, re.I), log
    assert "relay=none" not in log and "status=deferred" not in log, log


def test_relay_refused_outside_relay_networks_even_pipelined(petrel_factory):
    p = petrel_factory(relay_networks="127.0.0.1/32")
    c = session(p, source="127.0.0.2")
    c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<u@remote.example>\r\n"
           b"RCPT TO:<v@remote.example>\r\nDATA\r\n")
    expect(c.reply(), 250, "2.1.0")
    expect(c.reply(), 550, "5.7.1")
    expect(c.reply(), 550, "5.7.1")
    expect(c.reply(), 554, "5.5.1")
    c.close()
    time.sleep(0.3)
    assert p.queue_files() == []


# ---- a client that does not read -----------------------------------------------------------


def test_client_sends_faster_than_it_reads_memory_bounded(petrel_factory, monkeypatch):
    """100000 NOOPs and 500000 HELPs pipelined without reading: about 48 MB of
    replies.  The server must stop reading instead of buffering them (its
    VmRSS stays bounded), and must still answer every command once read."""
    if SANITIZED:
        # ASan keeps freed blocks in a quarantine (256 MB by default), which
        # VmRSS would count; a small one makes RSS track live memory again.
        monkeypatch.setenv("ASAN_OPTIONS", ASAN_DEFAULT + ":quarantine_size_mb=4")
    p = petrel_factory()
    n_noop, n_help = 100000, 500000
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    s.settimeout(60)
    s.connect((p.host, p.port))
    try:
        assert s.recv(4096).startswith(b"220 ")
        base = vm_rss_kb(p.proc.pid)
        payload = b"NOOP\r\n" * n_noop + b"HELP\r\n" * n_help + b"QUIT\r\n"
        err = []

        def sender():
            try:
                s.sendall(payload)
            except OSError as e:
                err.append(e)

        t = threading.Thread(target=sender, daemon=True)
        t.start()
        peak = base
        for _ in range(25):  # 2.5 s of not reading at all
            time.sleep(0.1)
            peak = max(peak, vm_rss_kb(p.proc.pid))
        growth_mb = (peak - base) / 1024
        assert growth_mb < 20, f"server grew by {growth_mb:.1f} MB for an unread pipeline"
        if not SANITIZED:
            assert peak / 1024 < 100, f"VmRSS {peak / 1024:.1f} MB"
        # now read everything: every reply arrives, none dropped, QUIT last
        data = bytearray()
        while True:
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            data += chunk
            if len(data) % (8 << 20) < len(chunk):
                peak = max(peak, vm_rss_kb(p.proc.pid))
        t.join(10)
        assert not err, err
        data = bytes(data)
        assert data.count(b"250 2.0.0 Ok\r\n") == n_noop
        assert data.count(b"214 2.0.0 See RFC 5321\r\n") == n_help
        assert data.endswith(b"214 2.0.0 See RFC 5321\r\n221 2.0.0 Bye\r\n")
        # in order, each whole: replies sent at once and those the socket could
        # not take yet (queued behind) never pass each other
        help_reply = data[14 * n_noop:data.index(b"214 2.0.0 See RFC 5321\r\n") + 24]
        assert help_reply.startswith(b"214-2.0.0 Commands: ")
        assert data == (b"250 2.0.0 Ok\r\n" * n_noop + help_reply * n_help
                        + b"221 2.0.0 Bye\r\n")
        assert (peak - base) / 1024 < 20, f"grew by {(peak - base) / 1024:.1f} MB"
    finally:
        s.close()
    alive(p)


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "starttls"])
def test_client_that_sends_without_end_is_made_to_wait(petrel_factory, certs, monkeypatch, tls):
    """A client pipelining NOOPs for 4 s and reading nothing: once its replies fill
    the socket the server stops reading, so the client's sends block (what it got
    in is the kernel's buffers, a few MB, not hundreds) and the server's memory
    does not grow with it, nor does it spin while it waits (after STARTTLS the
    loop busy-polled the socket at 100 % of a core).  Then every NOOP sent is
    answered, once, in order."""
    if SANITIZED:
        monkeypatch.setenv("ASAN_OPTIONS", ASAN_DEFAULT + ":quarantine_size_mb=4")
    p = tls_server(petrel_factory, certs) if tls else petrel_factory()
    c = session(p)
    if tls:
        c.starttls()
        c.ehlo()
    s = c.sock
    blocked = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)
    try:
        base = vm_rss_kb(p.proc.pid)
        chunk = b"NOOP\r\n" * 50000
        s.setblocking(False)
        # out: the stream from where it stands; after a refused send the same again
        # (TLS wants the same write retried)
        sent, peak, t0, out, owed = 0, base, time.monotonic(), chunk, False
        cpu_at = None  # (time, CPU seconds) once the client has been blocked 1 s
        while time.monotonic() - t0 < 4:
            try:
                sent += s.send(out)
                out, owed = chunk[sent % 6:], False
            except blocked:
                owed = True
                time.sleep(0.05)
                peak = max(peak, vm_rss_kb(p.proc.pid))
                if cpu_at is None and time.monotonic() - t0 >= 1.5:
                    cpu_at = (time.monotonic(), cpu_seconds(p.proc.pid))
        growth_mb = (peak - base) / 1024
        assert cpu_at is not None, "the client was never blocked"
        wall = time.monotonic() - cpu_at[0]
        busy = cpu_seconds(p.proc.pid) - cpu_at[1]
        assert busy < 0.5 * wall, f"the server used {busy:.2f} s of CPU in {wall:.2f} s, waiting"
        assert sent < 32 << 20, f"the server took {sent >> 20} MB from a client reading nothing"
        assert growth_mb < 16, f"server grew by {growth_mb:.1f} MB"
        # the refused send and the NOOP sent in part finished, QUIT, every reply read
        quit_cmd, data = b"QUIT\r\n", bytearray()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            moved = False
            try:
                if owed:  # the refused send again, as it was
                    sent += s.send(out)
                    owed = False
                    moved = True
                elif sent % 6:  # the rest of the NOOP sent in part, no more
                    sent += s.send(chunk[sent % 6:6])
                    moved = True
                elif quit_cmd:
                    quit_cmd = quit_cmd[s.send(quit_cmd):]
                    moved = True
            except blocked:
                pass
            try:
                got = s.recv(1 << 20)
                if not got:
                    break
                data += got
                moved = True
            except blocked:
                pass
            if not moved:
                time.sleep(0.001)
        else:
            pytest.fail(f"no end of the replies in 60 s: {sent} octets sent, {len(data)} read, "
                        f"QUIT {'sent' if not quit_cmd else 'not sent'}")
        assert bytes(data) == b"250 2.0.0 Ok\r\n" * (sent // 6) + b"221 2.0.0 Bye\r\n"
    finally:
        s.close()
    alive(p)


def test_input_pipelined_past_a_commit_is_all_answered(petrel):
    """A message's end and 240 KB of NOOPs after it in one send: reading stops while
    the commit runs (and while the NOOPs' replies wait to be read) and must resume
    after it: the 250 for the message, then one 250 for each NOOP, then the 221."""
    n = 40000
    c = session(petrel)
    c.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<check@localhost>\r\nDATA\r\n")
    expect(c.reply(), 250, "2.1.0")
    expect(c.reply(), 250, "2.1.5")
    expect(c.reply(), 354)
    data = bytearray(c.buf)
    c.buf = b""
    c.sock.settimeout(30)

    def reader():
        while True:
            got = c.sock.recv(1 << 20)
            if not got:
                return
            data.extend(got)

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    c.send(b"Subject: x\r\n\r\nbody\r\n.\r\n" + b"NOOP\r\n" * n + b"QUIT\r\n")
    t.join(60)
    assert not t.is_alive()
    c.sock.close()
    first, rest = bytes(data).split(b"\r\n", 1)
    assert re.match(rb"250 2\.0\.0 Ok: queued as \S+$", first), first
    assert rest == b"250 2.0.0 Ok\r\n" * n + b"221 2.0.0 Bye\r\n"
    assert wait_for(lambda: len(all_maildir_files(petrel.mail_root)) == 1, 10)
    alive(petrel)


def test_sigterm_during_a_commit_ends_that_session_too(petrel):
    """SIGTERM while a message is being committed: the stop passes that session by until
    the commit answers; then it gets its reply and a 421, and the server exits at once
    instead of serving the client on (or waiting for it) until its grace runs out."""
    p = petrel
    c = session(p)
    expect(c.cmd("MAIL FROM:<a@example.org>"), 250, "2.1.0")
    expect(c.cmd("RCPT TO:<check@localhost>"), 250, "2.1.5")
    expect(c.cmd("DATA"), 354)
    c.send(b"Subject: x\r\n\r\n" + (b"z" * 998 + b"\r\n") * 400)
    time.sleep(0.5)  # the body is on the disk; the commit (a flush or two) starts with the dot
    c.send(b".\r\n")
    time.sleep(0.0005)
    proc = p.proc
    t0 = time.monotonic()
    proc.terminate()
    replies = []
    try:
        while True:
            r = c.reply()
            replies.append(r)
            if r.code == 421:
                break
    except (EOFError, OSError):
        pass
    try:
        rc = proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        rc = None
    took = time.monotonic() - t0
    c.close()
    p.proc.wait(timeout=60)
    assert rc == 0, f"petrel still running {took:.0f}s after SIGTERM (a session committing)"
    assert took < 10, took
    codes = [r.code for r in replies]
    assert codes in ([250, 421], [421], [451, 421]), replies
    if codes[0] == 250:  # acknowledged: delivered, now or after the next start
        p.start()
        assert wait_for(lambda: len(all_maildir_files(p.mail_root)) == 1, 15)


def test_sigterm_not_held_up_by_a_client_that_does_not_read(petrel):
    """SIGTERM ends sessions; a client that reads nothing cannot delay the exit
    for smtp_timeout (300 s here)."""
    p = petrel
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(10)
    s.connect((p.host, p.port))
    s.setblocking(False)
    payload = b"HELP\r\n" * 20000
    t0 = time.monotonic()
    while time.monotonic() - t0 < 3:  # fill every buffer between us
        try:
            s.send(payload)
        except BlockingIOError:
            time.sleep(0.05)
    try:
        proc = p.proc
        t0 = time.monotonic()
        proc.terminate()
        try:
            rc = proc.wait(timeout=12)
        except subprocess.TimeoutExpired:
            rc = None
        took = time.monotonic() - t0
    finally:
        s.close()
        # once the client is gone the server ends; never signal it twice
        p.proc.wait(timeout=60)
    assert rc == 0, f"petrel still running {took:.0f}s after SIGTERM (a client not reading)"


def test_client_that_never_reads_is_dropped_and_server_stays_up(petrel_factory):
    """Replies pile up unread: after smtp_timeout without write progress the server
    drops the client (its buffers stay bounded meanwhile) and serves others."""
    p = petrel_factory(smtp_timeout="3s")
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(10)
    s.connect((p.host, p.port))
    s.setblocking(False)
    payload = b"HELP\r\n" * 10000
    t0 = time.monotonic()
    dropped, checked = False, False
    while time.monotonic() - t0 < 20:
        try:
            s.send(payload)
        except BlockingIOError:
            time.sleep(0.1)
        except (ConnectionResetError, BrokenPipeError):
            dropped = True
            break
        if not checked and time.monotonic() - t0 > 1:
            checked = True
            with Conn(p.port, timeout=5) as c:  # meanwhile others are served
                expect(c.cmd("NOOP"), 250, "2.0.0")
    elapsed = time.monotonic() - t0
    s.close()
    assert dropped, "a client that never reads was kept for 20 s with smtp_timeout=3s"
    assert elapsed < 3 * 2 + 5, elapsed
    assert re.search(r"timeout \(write\) from|timeout after \w+ from", p.log()), p.log()[-2000:]
    alive(p)


# ---- the log is no megaphone ---------------------------------------------------------------
#
# Every refused command has its log line, but a client sending garbage must not make the
# log grow without bound: a session logs a few protocol errors and at most 100 refusals of
# mail, then one line at the disconnect counting the rest.


def session_log(p, addr="127.0.0.1"):
    return [line for line in p.log().splitlines() if f"unknown[{addr}]" in line]


def send_all_read_all(p, data):
    """Sends data on a new connection at once, reads until the server closes."""
    s = socket.create_connection((p.host, p.port), timeout=20)
    got = b""
    try:
        s.sendall(data)
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
    except (ConnectionResetError, BrokenPipeError):
        pass  # closed after its 421 with our input unread
    finally:
        s.close()
    return got


def test_garbage_commands_make_a_bounded_log(petrel):
    wait_for(lambda: petrel.log().count("disconnect from") >= 1, 5)  # wait_port's probe
    before = len(session_log(petrel))
    got = send_all_read_all(petrel, b"EHLO client.test\r\n" + b"\x16\x03\x01 garbage\r\n" * 1000)
    assert b"421 4.7.0 " in got, got[-300:]
    assert wait_for(lambda: petrel.log().count("disconnect from") >= 2, 10)
    lines = session_log(petrel)[before:]
    rejects = [line for line in lines if ": reject: " in line]
    # the first few, and the 421 that ends the session
    assert 1 <= len(rejects) <= 6, lines
    assert "421 4.7.0 mx.petrel.test Error: too many errors" in rejects[-1], rejects
    m = re.search(r"unknown\[127\.0\.0\.1\]: (\d+) more refused commands not logged$",
                  lines[-2])
    assert m and int(m.group(1)) > 0, lines
    assert lines[-1].endswith("disconnect from unknown[127.0.0.1]"), lines
    assert len(lines) <= 10, lines


def test_recipient_flood_makes_a_bounded_log(petrel_factory):
    """Past max_recipients each RCPT gets a 452, which is no error and never closes the
    session: 1,000 of them log 100 lines and a count of the others."""
    p = petrel_factory(max_recipients=1)
    wait_for(lambda: p.log().count("disconnect from") >= 1, 5)
    got = send_all_read_all(p, b"EHLO client.test\r\nMAIL FROM:<a@example.org>\r\n"
                            + b"RCPT TO:<r@localhost>\r\n" * 1000 + b"QUIT\r\n")
    assert got.count(b"\r\n452 4.5.3 ") == 999 and got.endswith(b"221 2.0.0 Bye\r\n"), got[-300:]
    assert wait_for(lambda: p.log().count("disconnect from") >= 2, 10)
    log = p.log()
    logged = log.count(": reject: RCPT from unknown[127.0.0.1]: 452 4.5.3 ")
    m = re.search(r"unknown\[127\.0\.0\.1\]: (\d+) more refused commands not logged\n", log)
    assert m, log[-2000:]
    assert logged == 100 and logged + int(m.group(1)) == 999, (logged, m.group(0))
    alive(p)


# ---- slowloris -----------------------------------------------------------------------------


def test_slowloris_one_byte_a_second_gets_421(petrel_factory):
    p = petrel_factory(smtp_timeout="3s")
    c = Conn(p.port)
    t0 = time.monotonic()
    c.ehlo()  # a complete command resets the clock once
    t0 = time.monotonic()
    stop = threading.Event()

    def trickle():
        for b in b"MAIL FROM:<slow-loris@example.org> SIZE=1000\r\n"[:-2]:
            if stop.wait(1.0):
                return
            try:
                c.sock.send(bytes([b]))
            except OSError:
                return

    t = threading.Thread(target=trickle, daemon=True)
    t.start()
    try:
        c.sock.settimeout(15)
        r = c.reply()
        elapsed = time.monotonic() - t0
    finally:
        stop.set()
    expect(r, 421, "4.4.2")
    assert elapsed >= 2.5, elapsed  # not before smtp_timeout
    assert elapsed < 3 + 4, f"421 after {elapsed:.1f}s although smtp_timeout is 3s"
    assert c.closed(5)
    t.join(3)
    c.close()
    assert re.search(r"timeout after \w+ from unknown\[127\.0\.0\.1\]", p.log())
    alive(p)


def test_slowloris_connect_and_say_nothing(petrel_factory):
    p = petrel_factory(smtp_timeout="2s")
    c = Conn(p.port)
    t0 = time.monotonic()
    c.sock.settimeout(10)
    expect(c.reply(), 421, "4.4.2")
    assert 1.5 <= time.monotonic() - t0 < 6
    assert c.closed(5)
    c.close()


# ---- many idle connections ----------------------------------------------------------------


def test_2000_idle_connections_new_client_still_served(petrel_factory):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2000 + 512
    if soft < want:
        if hard != resource.RLIM_INFINITY and hard < want:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {want}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    p = petrel_factory(max_connections_per_ip=5000, max_connections=10000,
                       smtp_timeout="120s")
    idle = []
    try:
        for _ in range(2000):
            s = socket.create_connection((p.host, p.port), timeout=10)
            idle.append(s)  # never reads, never writes
        # every one of them holds a session
        assert wait_for(lambda: p.log().count("connect from unknown") >= 2001, 30)
        t0 = time.monotonic()
        with Conn(p.port, timeout=10) as c:
            expect(c.greeting, 220)
            took = time.monotonic() - t0
            c.ehlo()
            expect(c.cmd("MAIL FROM:<a@example.org>"), 250, "2.1.0")
        assert took < 3, f"greeting took {took:.1f}s with 2000 idle connections"
        # the idle ones are sessions, not a backlog: the first and the last answer
        for s in (idle[0], idle[-1]):
            s.settimeout(10)
            assert s.recv(4096).startswith(b"220 ")
            s.sendall(b"NOOP\r\n")
            assert s.recv(4096).startswith(b"250 2.0.0")
        assert "reject: CONNECT" not in p.log()
    finally:
        for s in idle:
            s.close()
    alive(p)


def test_peers_resetting_while_replies_go_out(petrel):
    """Clients that pipeline a whole transaction and reset at once (RST) while
    petrel is sending their replies: every such session is closed (no
    descriptor kept), every message it got a 250 for is delivered once, and
    the server goes on serving."""
    p = petrel
    fd_dir = Path(f"/proc/{p.proc.pid}/fd")

    def sockets():
        n = 0
        for f in fd_dir.iterdir():
            try:
                n += os.readlink(f).startswith("socket:")
            except OSError:
                pass  # closed meanwhile
        return n

    alive(p)
    base = sockets()
    n = 100
    for i in range(n):
        s = socket.create_connection((p.host, p.port), timeout=10)
        s.sendall(b"EHLO reset.example\r\nMAIL FROM:<a@example.org>\r\n"
                  + f"RCPT TO:<reset{i}@localhost>\r\n".encode()
                  + b"DATA\r\n" + f"Subject: reset {i}\r\n\r\nbody\r\n.\r\n".encode()
                  + b"NOOP\r\n" * 200 + b"QUIT\r\n")
        if i % 2:
            time.sleep(0.002)  # some after part of the replies went out
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    assert wait_for(lambda: sockets() <= base, 10), (sockets(), base)
    alive(p)
    # each message petrel committed is delivered exactly once (a reset before the
    # end of data leaves none)
    time.sleep(1)
    assert wait_queue_empty(p, 10)
    counts = {}
    for f in all_maildir_files(p.mail_root):
        counts[f.parent.parent.name] = counts.get(f.parent.parent.name, 0) + 1
    assert all(v == 1 for v in counts.values()), counts
    assert set(counts) <= {f"reset{i}" for i in range(n)} | {"check"}, counts


# ---- clients vanishing mid-DATA -----------------------------------------------------------


def test_clients_vanishing_mid_data_leave_nothing(petrel):
    p = petrel
    errors = []
    half = (b"X" * 998 + b"\r\n") * 200  # 200 kB of a 400 kB message

    def vanish(i):
        try:
            c = session(p)
            expect(c.cmd("MAIL FROM:<a@example.org>"), 250, "2.1.0")
            expect(c.cmd(f"RCPT TO:<v{i}@localhost>"), 250, "2.1.5")
            expect(c.cmd("DATA"), 354)
            c.send(f"Subject: vanish {i}\r\n\r\n".encode() + half[: 1000 * (50 + i * 3)])
            if i % 2:
                # an abortive close (RST) for half of them
                c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.sock.close()
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    threads = [threading.Thread(target=vanish, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    # the server notices every close and removes what it had written
    assert wait_for(lambda: spool_tmp_files(p) == [] and p.queue_files() == []
                    and not any((p.spool / "incoming").glob("*")), 10), \
        (spool_tmp_files(p), p.queue_files(), list((p.spool / "incoming").glob("*")))
    time.sleep(0.5)
    assert all_maildir_files(p.mail_root) == []
    assert not any(p.mail_root.glob("*/*/tmp/*")), list(p.mail_root.glob("*/*/tmp/*"))
    # the server is fine and still delivers
    c = session(p)
    expect(c.cmd("MAIL FROM:<a@example.org>"), 250, "2.1.0")
    expect(c.cmd("RCPT TO:<after@localhost>"), 250, "2.1.5")
    expect(c.cmd("DATA"), 354)
    c.send(b"Subject: after\r\n\r\n" + half + b".\r\n")
    expect(c.reply(), 250, "2.0.0")
    c.close()
    assert len(p.wait_messages("after@localhost", 1)) == 1
    assert [f.parent.parent.name for f in all_maildir_files(p.mail_root)] == ["after"]


# ---- AUTH input under TLS -----------------------------------------------------------------


def test_auth_oversized_and_malformed_responses(petrel_factory, certs, tmp_path):
    users = {"u@example.test": "u@example.test:{PLAIN}pw"}
    p = tls_server(petrel_factory, certs, users)
    c = Conn(p.port)
    c.ehlo()
    c.starttls()
    c.ehlo()
    long_user = "u" * 300 + "@example.test"
    t0 = time.monotonic()
    expect(c.cmd(f"AUTH PLAIN {plain_b64(long_user, 'pw')}"), 501, "5.5.2")
    expect(c.cmd(f"AUTH PLAIN {plain_b64('u@example.test', 'p' * 300)}"), 501, "5.5.2")
    expect(c.cmd("AUTH LOGIN"), 334)
    expect(c.cmd(b64("u" * 400)), 501, "5.5.2")
    expect(c.cmd("AUTH PLAIN " + "A" * 1200), 500, "5.5.2")  # over the line limit
    expect(c.cmd(b"AUTH PLAIN " + plain_b64("u@example.test", "pw").encode()[:-2] + b"\x00="),
           500, "5.5.2")
    expect(c.cmd(f"AUTH PLAIN {b64(b'u@example.test' + bytes([0]) + b'u@example.test' + bytes([0]) + b'p' + bytes([0]) + b'w')}"),
           501, "5.5.2")
    assert time.monotonic() - t0 < 5  # malformed is not a password check
    expect(c.auth_plain("u@example.test", "pw"), 235, "2.7.0")
    c.close()


# ---- privileges ------------------------------------------------------------------------------


@pytest.fixture
def shared_dir():
    """A directory any user may enter (pytest's tmp dirs are private to root)."""
    d = Path(tempfile.mkdtemp(prefix="petrel-priv-", dir="/tmp"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def start_in_shared_dir(petrel_factory, shared_dir, **conf):
    """A server started as root, its spool, mail and config file in shared_dir (the
    config must be readable after a drop of privileges, for SIGHUP, and by other users'
    `petrel sendmail`)."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    try:
        pw = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody'")
    p = petrel_factory(start=False, mail_root=str(shared_dir / "mail"),
                       spool_dir=str(shared_dir / "spool"), **conf)
    p.mail_root, p.spool = shared_dir / "mail", shared_dir / "spool"
    p.conf_path = shared_dir / "petrel.conf"
    p.start()
    p.conf_path.chmod(0o644)
    return p, pw


def start_as_nobody(petrel_factory, shared_dir, **conf):
    """A server started as root with user = nobody (see start_in_shared_dir)."""
    return start_in_shared_dir(petrel_factory, shared_dir, user="nobody", **conf)


def test_privilege_drop_to_user(petrel_factory, shared_dir):
    p, pw = start_as_nobody(petrel_factory, shared_dir)
    pid = p.proc.pid
    assert proc_ids(pid, "Uid") == [pw.pw_uid] * 4
    assert proc_ids(pid, "Gid") == [pw.pw_gid] * 4
    assert 0 not in proc_ids(pid, "Groups")
    assert re.search(rf"running as nobody \(uid {pw.pw_uid}, gid {pw.pw_gid}\)", p.log())
    # every thread, not only the main one
    for task in Path(f"/proc/{pid}/task").iterdir():
        st = (task / "status").read_text()
        assert re.search(rf"^Uid:\s+{pw.pw_uid}\s+{pw.pw_uid}\s+{pw.pw_uid}\s+{pw.pw_uid}$",
                         st, re.M), st
    # and mail is still received and delivered
    c = session(p)
    expect(c.cmd("MAIL FROM:<a@example.org>"), 250, "2.1.0")
    expect(c.cmd("RCPT TO:<dropped@localhost>"), 250, "2.1.5")
    expect(c.cmd("DATA"), 354)
    c.send(b"Subject: as nobody\r\n\r\nbody\r\n.\r\n")
    expect(c.reply(), 250, "2.0.0")
    c.close()
    m = p.wait_messages("dropped@localhost", 1)
    assert len(m) == 1
    f = next((p.maildir("dropped@localhost") / "new").iterdir())
    assert f.stat().st_uid == pw.pw_uid
    assert wait_queue_empty(p)


def test_privilege_drop_unknown_user_refuses_to_start(petrel_factory, shared_dir, monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    # server_run() returns on this fatal path without freeing its config:
    # LeakSanitizer would report that (harmless at exit) instead of the test.
    monkeypatch.setenv("ASAN_OPTIONS", ASAN_DEFAULT.replace("detect_leaks=1", "detect_leaks=0"))
    p = petrel_factory(start=False, user="no-such-user-petrel",
                       mail_root=str(shared_dir / "mail"), spool_dir=str(shared_dir / "spool"))
    p.start(wait=False)
    rc = p.proc.wait(timeout=20)
    assert rc != 0
    assert "no-such-user-petrel: no such user" in p.log()
    p.proc = None
    p.logf.close()


def half_closed_dialogue(p, payload, timeout=20):
    """Sends payload in one write, closes the sending side (shutdown(SHUT_WR), as
    `nc -N` and scripts piping into a socket do) and reads until the server closes."""
    s = socket.create_connection(("127.0.0.1", p.port), timeout=timeout)
    s.sendall(payload)
    s.shutdown(socket.SHUT_WR)
    got, deadline = b"", time.time() + timeout
    while time.time() < deadline:
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    s.close()
    return got


@pytest.mark.parametrize("transfer", ["data", "bdat"])
def test_client_that_half_closes_gets_every_reply(petrel, transfer):
    """A client that sends a whole transaction and QUIT, then closes its side, gets every
    reply — the message's 250 and the 221 — before the server closes (RFC 5321
    4.1.1.10).  The message it was told was accepted is delivered once."""
    msg = b"Subject: half-closed\r\n\r\nbody\r\n"
    if transfer == "data":
        xfer = b"DATA\r\n" + msg + b".\r\n"
    else:
        xfer = b"BDAT %d LAST\r\n" % len(msg) + msg
    payload = (b"EHLO client.example\r\nMAIL FROM:<a@example.test>\r\n"
               b"RCPT TO:<u@example.test>\r\n" + xfer + b"QUIT\r\n")
    got = half_closed_dialogue(petrel, payload)
    codes = re.findall(rb"(?m)^(\d{3}) ", got)
    want = [b"220", b"250", b"250", b"250"] + ([b"354"] if transfer == "data" else []) + \
        [b"250", b"221"]
    assert codes == want, got
    assert re.search(rb"(?m)^250 2\.0\.0 Ok: queued as \w+", got), got
    msgs = petrel.wait_messages("u@example.test", 1)
    assert len(msgs) == 1 and msgs[0].endswith(b"\n\nbody\n"), msgs


def test_client_that_half_closes_mid_message_delivers_nothing(petrel):
    """Closing the sending side inside DATA (no final dot) leaves the message unfinished:
    nothing is delivered, the server closes, and keeps serving others."""
    payload = (b"EHLO client.example\r\nMAIL FROM:<a@example.test>\r\n"
               b"RCPT TO:<u@example.test>\r\nDATA\r\nSubject: cut\r\n\r\nno end")
    got = half_closed_dialogue(petrel, payload)
    assert re.findall(rb"(?m)^(\d{3}) ", got) == [b"220", b"250", b"250", b"250", b"354"], got
    time.sleep(0.5)
    assert petrel.messages("u@example.test") == []
    alive(petrel)


def test_sendmail_from_root_and_other_users_reaches_a_server_running_as_user(
        petrel_factory, shared_dir):
    """The server runs as `user` (nobody); `petrel sendmail` is called by root (cron) and
    by another local user (a web server's): both messages are picked up and delivered.
    That other user can put files into incoming/ but not list it."""
    try:
        other = pwd.getpwnam("daemon")
    except KeyError:
        pytest.skip("no user 'daemon'")
    p, _ = start_as_nobody(petrel_factory, shared_dir)
    conf = p.conf_path
    for who, user in (("root", None), ("daemon", other)):
        r = subprocess.run([str(PETREL_BIN), "sendmail", "-c", str(conf), "to@localhost"],
                           input=f"Subject: from {who}\n\nhi\n".encode(), capture_output=True,
                           timeout=30, user=user.pw_uid if user else None,
                           group=user.pw_gid if user else None,
                           extra_groups=[] if user else None)
        assert r.returncode == 0, (who, r.stderr)
    msgs = p.wait_messages("to@localhost", 2)
    assert sorted(m.split(b"Subject: ")[1].split(b"\n")[0] for m in msgs) == \
        [b"from daemon", b"from root"], p.log()
    assert "Permission denied" not in p.log(), p.log()
    r = subprocess.run(["ls", str(p.spool / "incoming")], capture_output=True,
                       user=other.pw_uid, group=other.pw_gid, extra_groups=[])
    assert r.returncode != 0, r.stdout
    assert wait_queue_empty(p)


def test_reload_as_user_keeps_a_key_only_root_can_read(petrel_factory, shared_dir, certs):
    """Started as root, running as nobody: at SIGHUP the TLS key (root's alone, as
    certbot leaves it) cannot be read again.  The reload still applies the rest (a user
    added to users_file) with the certificate loaded at start, and says so."""
    users = shared_dir / "users"
    users.write_text("alice@localhost:{PLAIN}secret\n")
    users.chmod(0o644)
    p, _ = start_as_nobody(petrel_factory, shared_dir, users_file=str(users),
                           tls_cert=str(certs.cert), tls_key=str(certs.key))
    assert _rcpt(p, "carol@localhost") == 550
    users.write_text("alice@localhost:{PLAIN}secret\ncarol@localhost:{PLAIN}s\n")
    p.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: "configuration reloaded" in p.log()), p.log()
    assert re.search(r"Permission denied.*keeping the certificate loaded before", p.log()), \
        p.log()
    assert _rcpt(p, "carol@localhost") == 250
    c = session(p)
    assert "STARTTLS" in c.ehlo().keywords()
    c.starttls()
    expect(c.ehlo(), 250)
    c.close()


def send_one(p, rcpt, subject):
    """One message to rcpt; returns its queue id."""
    c = session(p)
    expect(c.cmd("MAIL FROM:<a@example.org>"), 250, "2.1.0")
    expect(c.cmd(f"RCPT TO:<{rcpt}>"), 250, "2.1.5")
    expect(c.cmd("DATA"), 354)
    c.send(f"Subject: {subject}\r\n\r\nbody\r\n.\r\n".encode())
    r = c.reply()
    expect(r, 250, "2.0.0")
    c.close()
    return re.search(r"queued as ([0-9A-F]{16})", r.text).group(1)


def sendmail_as(p, pw, rcpt, subject):
    """`petrel sendmail` as pw's user (root when pw is None)."""
    r = subprocess.run([str(PETREL_BIN), "sendmail", "-c", str(p.conf_path), rcpt],
                       input=f"Subject: {subject}\n\nhi\n".encode(), capture_output=True,
                       timeout=30, user=pw.pw_uid if pw else None,
                       group=pw.pw_gid if pw else None, extra_groups=[] if pw else None)
    assert r.returncode == 0, (subject, r.stderr)


def restart_as(p, user):
    """Stops p (cleanly unless already stopped) and starts it again with `user` set."""
    if p.proc is not None:
        assert p.stop() == 0, p.log()[-3000:]
    p.conf["user"] = user
    p.start()
    p.conf_path.chmod(0o644)


def not_owned_by(root, uid):
    """Paths under root (root included, symbolic links not followed) not owned by uid."""
    out = [] if root.lstat().st_uid == uid else [root]
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            path = Path(dirpath) / n
            if path.lstat().st_uid != uid:
                out.append(path)
    return out


def subjects(msgs):
    return sorted(m.split(b"Subject: ")[1].split(b"\n")[0].decode() for m in msgs)


HANDED_OVER = re.compile(r"user nobody: (\d+) entr(?:y|ies) under .* handed over")


def test_user_added_after_a_run_as_root_takes_over_its_spool_and_maildirs(
        petrel_factory, shared_dir):
    """petrel first run as root (no `user`), then with `user = nobody`, as the README
    suggests for production: the restart hands the spool the root run left (its queue
    files and their progress, the journal, the pid file) and the Maildirs it made to
    nobody.  The message the root run could not deliver is delivered once; mail dropped by
    root and by another user while the server was down is picked up; a Maildir made by
    the root run takes new mail."""
    try:
        other = pwd.getpwnam("daemon")
    except KeyError:
        pytest.skip("no user 'daemon'")
    p, pw = start_in_shared_dir(petrel_factory, shared_dir)
    send_one(p, "alice@localhost", "first, as root")
    assert len(p.wait_messages("alice@localhost", 1)) == 1
    blocker = block_maildir(p, "bob@localhost")
    qid = send_one(p, "bob@localhost", "held back")
    assert wait_for(lambda: {qid, qid + ".st"} <= set(p.queue_files())), p.log()[-3000:]
    assert p.stop() == 0
    # while the server is down: root's cron and another user's web server submit mail
    sendmail_as(p, None, "carol@localhost", "dropped by root")
    sendmail_as(p, other, "carol@localhost", "dropped by daemon")
    assert (p.spool / "queue" / qid).stat().st_uid == 0
    blocker.unlink()

    restart_as(p, "nobody")
    assert proc_ids(p.proc.pid, "Uid") == [pw.pw_uid] * 4
    m = HANDED_OVER.search(p.log())
    assert m and int(m.group(1)) > 0, p.log()
    assert len(HANDED_OVER.findall(p.log())) == 1, p.log()
    assert len(p.wait_messages("bob@localhost", 1, timeout=20)) == 1, log_lines(p, qid)
    assert subjects(p.wait_messages("carol@localhost", 2)) == \
        ["dropped by daemon", "dropped by root"], p.log()[-3000:]
    send_one(p, "alice@localhost", "second, as nobody")
    assert subjects(p.wait_messages("alice@localhost", 2)) == \
        ["first, as root", "second, as nobody"], p.log()[-3000:]
    assert wait_queue_empty(p), p.queue_files()
    time.sleep(1.5)  # retry_min is 1s: a second delivery would have happened by now
    assert len(p.messages("bob@localhost")) == 1
    assert len(re.findall(rf"{qid}: to=<bob@localhost>.*status=sent", p.log())) == 1, \
        log_lines(p, qid)
    assert "Permission denied" not in p.log(), p.log()[-3000:]
    assert not_owned_by(p.spool, pw.pw_uid) == []
    # incoming/ keeps its modes: others may drop into it, only the server may read it
    st = (p.spool / "incoming").stat()
    assert (st.st_mode & 0o7777, st.st_gid) == (0o3733, pw.pw_gid)
    assert (p.spool.stat().st_mode & 0o777) == 0o711
    # the Maildirs' directories are the server's; what the root run delivered is left as is
    for d in ("localhost", "localhost/alice", "localhost/alice/tmp", "localhost/alice/new",
              "localhost/alice/cur", "localhost/bob"):
        assert (p.mail_root / d).stat().st_uid == pw.pw_uid, d
    # a second start has nothing left to hand over
    restart_as(p, "nobody")
    assert len(HANDED_OVER.findall(p.log())) == 1, p.log()
    assert p.stop() == 0  # (before shared_dir goes)


def test_user_added_after_a_kill9_as_root_delivers_the_journal_once(petrel_factory,
                                                                   shared_dir):
    """petrel run as root is killed (-9) right after a 250: the message is in the
    journal (root's), perhaps delivered, perhaps not.  Started again with `user = nobody`
    it starts, and the message is delivered exactly once."""
    p, pw = start_in_shared_dir(petrel_factory, shared_dir)
    c = session(p)
    expect(c.cmd("MAIL FROM:<a@example.org>"), 250, "2.1.0")
    expect(c.cmd("RCPT TO:<dave@localhost>"), 250, "2.1.5")
    expect(c.cmd("DATA"), 354)
    c.send(b"Subject: before the crash\r\n\r\nbody\r\n.\r\n")
    r = c.reply()
    p.kill9()
    c.close()
    expect(r, 250, "2.0.0")
    qid = re.search(r"queued as ([0-9A-F]{16})", r.text).group(1)
    segs = [s for s in (p.spool / "journal").iterdir() if re.fullmatch(r"[0-9a-f]{16}", s.name)]
    assert segs and all(s.stat().st_uid == 0 for s in segs), segs
    assert any(qid.encode() in s.read_bytes() for s in segs)

    restart_as(p, "nobody")
    assert HANDED_OVER.search(p.log()), p.log()
    assert len(p.wait_messages("dave@localhost", 1, timeout=20)) == 1, log_lines(p, qid)
    assert wait_queue_empty(p), p.queue_files()
    time.sleep(1.5)
    assert len(p.messages("dave@localhost")) == 1, log_lines(p, qid)
    assert list((p.spool / "journal").iterdir()) == [] or \
        all(s.stat().st_uid == pw.pw_uid for s in (p.spool / "journal").iterdir())
    assert "Permission denied" not in p.log(), p.log()[-3000:]
    assert not_owned_by(p.spool, pw.pw_uid) == []
    assert p.stop() == 0


def test_user_takes_over_nothing_outside_the_spool_and_mail_root(petrel_factory, shared_dir):
    """What the start hands over it finds without following a symbolic link: a link in
    the spool or a Maildir to a file or directory outside, and a hard link to a file
    outside, leave that file or directory root's."""
    p, pw = start_in_shared_dir(petrel_factory, shared_dir)
    send_one(p, "alice@localhost", "as root")
    assert len(p.wait_messages("alice@localhost", 1)) == 1
    assert p.stop() == 0
    outside = shared_dir / "outside"
    outside.mkdir()
    (outside / "file").write_text("root's\n")
    (outside / "linked").write_text("root's too\n")
    (outside / "dir").mkdir()
    (outside / "dir" / "inner").write_text("root's\n")
    (p.spool / "queue" / "sym").symlink_to(outside / "file")
    (p.spool / "queue" / "symdir").symlink_to(outside / "dir")
    os.link(outside / "linked", p.spool / "queue" / "hard")
    (p.spool / "corrupt").symlink_to(outside / "dir")
    (p.mail_root / "localhost" / "eve").symlink_to(outside / "dir")
    (p.mail_root / "localhost" / "alice" / "link").symlink_to(outside / "file")

    restart_as(p, "nobody")
    assert HANDED_OVER.search(p.log()), p.log()
    for path in [outside] + list(outside.rglob("*")):
        assert path.stat().st_uid == 0, path
    for link in ("queue/sym", "queue/symdir", "corrupt"):
        assert (p.spool / link).lstat().st_uid == 0, link
    assert re.search(r"queue/hard has 2 links: not handed over", p.log()), p.log()
    send_one(p, "alice@localhost", "as nobody")
    assert len(p.wait_messages("alice@localhost", 2)) == 2, p.log()[-3000:]
    assert p.stop() == 0


def _rcpt(p, rcpt):
    with Conn(p.port, timeout=10) as c:
        expect(c.greeting, 220)
        c.ehlo()
        expect(c.cmd("MAIL FROM:<a@example.org>"), 250, "2.1.0")
        return c.cmd(f"RCPT TO:<{rcpt}>").code


def test_ipv4_and_ipv6_wildcard_listeners_side_by_side(petrel_factory):
    """listen_smtp = 0.0.0.0:P, [::]:P (the usual pair): the IPv6 socket is IPv6-only, so
    both bind and each takes its own family (without IPV6_V6ONLY the second bind failed
    with 'Address already in use' and the server did not start)."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    p = petrel_factory(start=False)
    p.conf["listen_smtp"] = f"0.0.0.0:{p.port}, [::]:{p.port}"
    p.start()
    for family, addr in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect((addr, p.port))
            assert s.recv(512).startswith(b"220 "), addr
    assert f"listening on [::]:{p.port}" in p.log(), p.log()


def test_out_of_descriptors_pauses_accepting_without_spinning(petrel_factory):
    """With its descriptors used up, the server cannot accept: a pending connection stays
    readable on the listener. It rests its listeners (250 ms at a time) instead of trying
    again at once: before, the loop spun at 100 % of a core and logged 'accept: Too many
    open files' about 400,000 times a second. Once descriptors are free, new clients are
    greeted again."""
    p = petrel_factory(max_connections=1000, max_connections_per_ip=1000)
    pid = p.proc.pid
    used = len(os.listdir(f"/proc/{pid}/fd"))
    hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)[1]
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (used + 16, hard))
    socks = []
    try:
        for i in range(40):
            s = socket.socket()
            s.bind((f"127.0.0.{2 + i % 50}", 0))
            s.settimeout(5)
            s.connect((p.host, p.port))  # completes in the backlog, accepted or not
            socks.append(s)
        assert wait_log(p, r"accept: Too many open files"), p.log()[-2000:]
        t0, cpu0 = time.monotonic(), cpu_seconds(pid)
        time.sleep(2)
        wall, busy = time.monotonic() - t0, cpu_seconds(pid) - cpu0
        assert busy < 0.5 * wall, f"{busy:.2f} s of CPU in {wall:.2f} s while out of descriptors"
        assert p.log().count("accept: Too many open files") < 40, p.log()[-2000:]
    finally:
        for s in socks:
            s.close()
    # descriptors free again: a new client is greeted
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection((p.host, p.port), timeout=2) as s:
                assert s.recv(512).startswith(b"220 ")
            break
        except (OSError, AssertionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_first_relayed_message_when_out_of_descriptors_keeps_the_server_up(petrel_factory):
    """The DNS resolver's thread starts with the server: started at the first relayed
    message while descriptors were used up, its event base could not be made and
    libevent exit()ed the whole server after the message's 250."""
    p = petrel_factory(max_connections_per_ip=1000)
    pid = p.proc.pid
    c = socket.create_connection((p.host, p.port), timeout=10)
    try:
        c.recv(512)
        c.sendall(b"EHLO x\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<x@remote.example>\r\n"
                  b"DATA\r\n")
        assert wait_for(lambda: b"354" in c.recv(4096), 5)
        used = len(os.listdir(f"/proc/{pid}/fd"))
        soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (used + 1, hard))
        c.sendall(b"Subject: x\r\n\r\nhi\r\n.\r\n")
        assert c.recv(4096).startswith(b"250 "), p.log()[-2000:]
        time.sleep(2)  # the relay looks remote.example up meanwhile
        assert p.proc.poll() is None, p.log()[-2000:]
    finally:
        c.close()
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
    with socket.create_connection((p.host, p.port), timeout=5) as s:
        assert s.recv(512).startswith(b"220 ")

