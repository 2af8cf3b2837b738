"""Helpers shared by the delivery, durability and CLI black-box tests.

Kept apart from conftest.py (which owns the fixtures): small functions that
send mail with smtplib, wait for log lines, and pick Maildir files apart.
"""
import collections
import json
import re
import subprocess
import smtplib
import threading
import time
from pathlib import Path

from conftest import PETREL_BIN

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


def load_then_kill9(p, prefix, rcpts_for, delay, min_acked, nthreads=6):
    """nthreads clients send marked messages (header "X-Marker: <prefix>-T<t>-M<m>") over
    kept sessions to p until it is killed with SIGKILL, min_acked acknowledgements and delay
    seconds after the start; rcpts_for(t, marker) gives each message's recipients.  Returns
    {marker: queue id} of every message that got its 250."""
    acked, stop = {}, threading.Event()
    lock = threading.Lock()

    def run(t):
        m = 0
        while not stop.is_set():
            try:
                with smtplib.SMTP(p.host, p.port, timeout=10) as s:
                    s.ehlo(f"load{t}.example")
                    while not stop.is_set():
                        marker = f"{prefix}-T{t}-M{m}"
                        m += 1
                        assert s.docmd("MAIL FROM:<load@example.org>")[0] == 250
                        for r in rcpts_for(t, marker):
                            assert s.docmd(f"RCPT TO:<{r}>")[0] == 250
                        code, resp = s.data(f"Subject: {marker}\r\nX-Marker: {marker}"
                                            f"\r\n\r\n{'filler ' * 40}\r\n".encode())
                        if code == 250:
                            with lock:
                                acked[marker] = queue_id(resp)
            except (OSError, smtplib.SMTPException, AssertionError):
                time.sleep(0.02)

    threads = [threading.Thread(target=run, args=(t,), daemon=True) for t in range(nthreads)]
    for th in threads:
        th.start()
    assert wait_for(lambda: len(acked) >= min_acked, timeout=30), len(acked)
    time.sleep(delay)
    p.kill9()
    stop.set()
    for th in threads:
        th.join(timeout=30)
    assert not any(th.is_alive() for th in threads)
    assert acked, "nothing acknowledged before the kill"
    return dict(acked)


# ---- shared by test_direct.py and test_journal.py ------------------------------


def log_lines(p, qid):
    return [l for l in p.log().splitlines() if f"{qid}: " in l]



def maildir_names(p, addr, sub="new"):
    d = p.maildir(addr) / sub
    return sorted(x.name for x in d.iterdir()) if d.is_dir() else []



def cli_queue(p, *args):
    return subprocess.run([str(PETREL_BIN), "queue", *args, "-c", str(p.conf_path)],
                          capture_output=True, text=True, timeout=30)


QUEUED_AS = re.compile(r"^250 2\.0\.0 Ok: queued as (\S+)$")



def wait_attempted(p, qid):
    """Waits until the queue recorded an attempt of qid (so a flush finds it back in the queue)."""
    def attempts():
        r = cli_queue(p, "list", "--json")
        if r.returncode != 0:
            return 0
        e = next((e for e in json.loads(r.stdout) if e["id"] == qid), None)
        return (e or {}).get("attempts", 0)

    assert wait_for(lambda: attempts() >= 1), cli_queue(p, "list").stdout
    time.sleep(0.3)  # the attempt's end reaches the event loop



def flush_delivers_once(p, qid, addr, body_lf):
    """Once what blocked qid's delivery to addr is gone: `petrel queue flush` delivers it,
    byte for byte, the queue and spool/tmp empty, and a second flush brings no second copy
    (one status=sent line, no bounce)."""
    r = cli_queue(p, "flush")
    assert r.returncode == 0, r.stderr
    msgs = p.wait_messages(addr, 1, timeout=20)
    assert len(msgs) == 1, log_lines(p, qid)
    assert split_prepended(msgs[0])[1] == body_lf
    assert wait_queue_empty(p), p.queue_files()
    assert spool_tmp_files(p) == []
    assert cli_queue(p, "flush").returncode == 0  # another flush: nothing more
    time.sleep(1.5)
    assert len(p.messages(addr)) == 1
    assert len(re.findall(rf"{qid}: to=<{re.escape(addr)}>.*status=sent", p.log())) == 1, \
        log_lines(p, qid)
    assert "status=bounced" not in p.log()


def block_maildir(p, addr):
    """Makes addr's Maildir unwritable for root too: its new/ is a regular file."""
    md = p.maildir(addr)
    for sub in ("tmp", "cur"):
        (md / sub).mkdir(parents=True, exist_ok=True)
    blocker = md / "new"
    blocker.write_text("not a directory\n")
    return blocker
