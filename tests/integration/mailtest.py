"""Helpers shared by the delivery, durability and CLI black-box tests.

Kept apart from conftest.py (which owns the fixtures): small functions that
send mail with smtplib, wait for log lines, and pick Maildir files apart.
"""
import collections
import re
import subprocess
import smtplib
import time
from pathlib import Path

QUEUED_RE = re.compile(r"queued as ([A-Za-z0-9]+)")

# RFC 5322 date-time, as written at the end of the Received: header.
DATE_RE = (rb"(?:(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), )?\d{1,2} "
           rb"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} "
           rb"\d\d:\d\d(?::\d\d)? [+-]\d{4}(?: \([A-Za-z]+\))?")

# The three headers petrel prepends to every delivered message.
PREPENDED_RE = re.compile(
    rb"\AReturn-Path: <[^>\n]*>\nDelivered-To: [^\n]*\nReceived: [^\n]*\n\t[^\n]*\n\t[^\n]*\n")


def smtp(p, timeout=30):
    return smtplib.SMTP(p.host, p.port, timeout=timeout)


def queue_id(resp):
    """The queue id from a DATA reply text (bytes or str)."""
    if isinstance(resp, bytes):
        resp = resp.decode(errors="replace")
    m = QUEUED_RE.search(resp)
    assert m, f"no queue id in {resp!r}"
    return m.group(1)


def send(p, sender, rcpts, body, helo="client.example", esmtp=True, timeout=30):
    """One transaction over its own session; returns the queue id of the 250."""
    if isinstance(rcpts, str):
        rcpts = [rcpts]
    with smtp(p, timeout) as s:
        code, _ = s.ehlo(helo) if esmtp else s.helo(helo)
        assert code == 250
        code, resp = s.docmd(f"MAIL FROM:<{sender}>")
        assert code == 250, resp
        for r in rcpts:
            code, resp = s.docmd(f"RCPT TO:<{r}>")
            assert code == 250, (r, code, resp)
        code, resp = s.data(body)
        assert code == 250, (code, resp)
        return queue_id(resp)


def wait_for(pred, timeout=15.0, interval=0.05):
    """Polls pred() until it returns something true; returns its last value."""
    deadline = time.time() + timeout
    while True:
        v = pred()
        if v or time.time() >= deadline:
            return v
        time.sleep(interval)


def wait_log(p, pattern, timeout=15.0):
    """Waits for a log line matching the regex; returns the match (or None)."""
    rx = re.compile(pattern, re.M)
    return wait_for(lambda: rx.search(p.log()), timeout)


def wait_queue_empty(p, timeout=15.0):
    return wait_for(lambda: not p.queue_files(), timeout)


def in_queue(p, qid):
    return any(n.startswith(qid) for n in p.queue_files())


def split_prepended(data):
    """Splits a Maildir file into (the three prepended headers, the message)."""
    m = PREPENDED_RE.match(data)
    assert m, f"no Return-Path/Delivered-To/Received prefix: {data[:400]!r}"
    return data[:m.end()], data[m.end():]


def all_maildir_files(mail_root):
    """Every file under any Maildir new/ below mail_root."""
    root = Path(mail_root)
    if not root.is_dir():
        return []
    return [f for f in root.glob("*/*/new/*") if f.is_file()]


def spool_tmp_files(p):
    d = p.spool / "tmp"
    return sorted(x.name for x in d.iterdir()) if d.is_dir() else []


def marker_counts(mail_root, rx):
    """How many copies of each message, named by rx's group 1 (an X-Marker header), are in
    the Maildirs below mail_root.  A file that vanishes while read (moved to cur/) is skipped."""
    c = collections.Counter()
    for f in all_maildir_files(mail_root):
        try:
            data = f.read_bytes()
        except FileNotFoundError:
            continue
        for m in rx.finditer(data):
            c[m.group(1).decode()] += 1
    return c


def mount_tmpfs(path, size="2m"):
    """A small tmpfs at path (skips the test when mounting is not allowed)."""
    import pytest
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True, text=True, timeout=20)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")


def fill_fs(path):
    """Fills the file system holding path; returns the filler files (unlink them for room)."""
    files = []
    for name, chunk in (("filler", 65536), ("filler2", 512)):  # then the last partial blocks
        f = path / name
        files.append(f)
        # unbuffered: a buffered close would raise ENOSPC again on its final flush
        with open(f, "wb", buffering=0) as fh:
            try:
                while True:
                    fh.write(b"\0" * chunk)
            except OSError:
                pass
    return files
