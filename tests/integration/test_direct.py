"""The direct way: a message held in memory (up to 256 KiB) whose recipients
all expand to local mailboxes is made durable in the spool journal before
the 250 (spool/journal, tests in test_journal.py) and written into the
Maildirs right after it, never touching spool/tmp or spool/queue; anything
else (a foreign recipient, a bigger message, a Maildir that cannot be
written, the 64 MiB held in memory by all sessions together) is spooled and
delivered from the queue, and in every case each recipient gets exactly one
copy.

"The spool stays empty" is checked with inotify on spool/tmp and spool/queue,
so not even a file that exists for a moment goes unseen; the tests where the
message must be spooled double as the proof that the watch sees files."""
import collections
import ctypes
import json
import os
import re
import signal
import smtplib
import socket
import struct
import subprocess
import threading
import time

import pytest

from conftest import PETREL_BIN, recv_reply, recv_replies
from mailtest import (flush_delivers_once, QUEUED_AS, block_maildir, cli_queue, fill_fs, load_then_kill9, log_lines,
                      maildir_names, marker_counts, wait_attempted, mount_tmpfs, DATE_RE, all_maildir_files, in_queue, queue_id, send, smtp,
                      spool_tmp_files, split_prepended, wait_for, wait_log,
                      wait_queue_empty)

BODY = (b"From: Sender <sender@example.org>\r\n"
        b"To: alice@localhost\r\n"
        b"Subject: delivered at the commit\r\n"
        b"\r\n"
        b"first line\r\n"
        b".a line that starts with a dot\r\n"
        b"last line\r\n")
BODY_LF = BODY.replace(b"\r\n", b"\n")

MEM_MSG_MAX = 256 * 1024          # src/queue/queue.c: held in memory up to this size
MEM_TOTAL_MAX = 64 * 1024 * 1024  # ... and this much for all messages being received


# ---- helpers ------------------------------------------------------------------------

IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_Q_OVERFLOW = 0x00004000


class SpoolWatch:
    """Every name created in (or renamed into) spool/tmp and spool/queue while it runs."""

    def __init__(self, p):
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0, os.strerror(ctypes.get_errno())
        self.wds = {}
        for sub in ("tmp", "queue"):
            path = str(p.spool / sub).encode()
            wd = self.libc.inotify_add_watch(self.fd, path, IN_CREATE | IN_MOVED_TO)
            assert wd >= 0, (path, os.strerror(ctypes.get_errno()))
            self.wds[wd] = sub
        self.seen = []

    def events(self):
        """[(subdirectory, name)] seen so far."""
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
            off = 0
            while off < len(data):
                wd, mask, _cookie, ln = struct.unpack_from("iIII", data, off)
                name = data[off + 16:off + 16 + ln].rstrip(b"\0").decode(errors="replace")
                off += 16 + ln
                if mask & IN_Q_OVERFLOW:
                    self.seen.append(("?", "<inotify overflow>"))
                else:
                    self.seen.append((self.wds.get(wd, "?"), name))
        return list(self.seen)

    def names(self, qid):
        return [e for e in self.events() if e[1].startswith(qid)]

    def close(self):
        os.close(self.fd)


@pytest.fixture
def watch():
    watches = []

    def make(p):
        w = SpoolWatch(p)
        watches.append(w)
        return w

    yield make
    for w in watches:
        w.close()


def direct_line(p, qid):
    return wait_log(p, rf"{qid}: from=<[^>]*>, size=\d+, nrcpt=\d+ \(delivering at once\)$")


def queued_line(p, qid):
    return wait_log(p, rf"{qid}: from=<[^>]*>, size=\d+, nrcpt=\d+ \(queue active\)$")


def assert_direct(p, qid, w=None):
    """qid was delivered at the commit: logged so, never spooled."""
    assert direct_line(p, qid), log_lines(p, qid)
    assert not re.search(rf"{qid}: .*\(queue active\)", p.log()), log_lines(p, qid)
    if w is not None:
        assert w.names(qid) == [], w.events()


def assert_spooled(p, qid, w=None):
    """qid went through the queue: logged so and seen as a file in tmp/ then queue/."""
    assert queued_line(p, qid), log_lines(p, qid)
    if w is not None:
        seen = wait_for(lambda: {d for d, _ in w.names(qid)} >= {"tmp", "queue"}, timeout=5)
        assert seen, w.events()


def assert_journaled_then_queued(p, qid, w):
    """qid (with a foreign recipient) was acknowledged from the journal and delivered from
    memory; only when its foreign recipient was deferred did it get queue/ID and ID.st."""
    assert queued_line(p, qid), log_lines(p, qid)
    assert not re.search(rf"{qid}: .*\(delivering at once\)", p.log()), log_lines(p, qid)
    assert wait_log(p, rf"{qid}: to=<[^>]*remote\.example>.*status=deferred"), log_lines(p, qid)
    names = lambda: {n for d, n in w.names(qid) if d == "queue"}  # noqa: E731
    assert wait_for(lambda: {qid, qid + ".st"} <= names(), timeout=10), w.events()


def count_copies(p, addr, marker):
    """Copies of the message carrying marker in addr's new/ and cur/."""
    n = 0
    for sub in ("new", "cur"):
        d = p.maildir(addr) / sub
        if d.is_dir():
            n += sum(marker in f.read_bytes() for f in d.iterdir())
    return n


def lines_body(size, marker=b"X"):
    """A message of exactly size octets: CRLF lines, no line starts with a dot."""
    head = b"Subject: " + marker + b"\r\nX-Marker: " + marker + b"\r\n\r\n"
    out = [head]
    left = size - len(head)
    assert left >= 3
    line = b"%s-line-of-a-body-" % marker
    while left > 0:
        n = min(left, 80)
        if left - n in (1, 2):  # never leave a remainder too short for a line
            n -= 3
        chunk = (line * 10)[:n - 2] + b"\r\n"
        out.append(chunk)
        left -= n
    data = b"".join(out)
    assert len(data) == size, (len(data), size)
    return data


def expected_prefix_re(sender, rcpt, qid, delivered_to=None, helo="client.example"):
    delivered_to = delivered_to or rcpt
    return re.compile(
        b"\\AReturn-Path: <" + re.escape(sender.encode()) + b">\n"
        b"Delivered-To: " + re.escape(delivered_to.encode()) + b"\n"
        b"Received: from " + re.escape(helo.encode()) + b" \\(unknown \\[127\\.0\\.0\\.1\\]\\)\n"
        b"\tby mx\\.petrel\\.test \\(petrel\\) with ESMTP id " + re.escape(qid.encode()) + b"\n"
        b"\tfor <" + re.escape(rcpt.encode()) + b">; " + DATE_RE + b"\n")


def queued_ids(replies):
    return [m.group(1) for m in (QUEUED_AS.match(r) for r in replies) if m]


def unread_octets(port):
    """Octets sent to port over established loopback connections not yet read by the server."""
    total = 0
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                rows = f.read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for row in rows:
            f = row.split()
            if f[3] != "01":  # ESTABLISHED only (a listener's rx_queue is its backlog)
                continue
            lport = int(f[1].rsplit(":", 1)[1], 16)
            rport = int(f[2].rsplit(":", 1)[1], 16)
            tx, rx = (int(x, 16) for x in f[4].split(":"))
            if lport == port:
                total += rx  # arrived, petrel has not read it
            if rport == port:
                total += tx  # the client's side: not yet arrived
    return total


# ---- all-local: at the commit, no spool ---------------------------------------------

def send_from_sessions(p, nthreads, per, send, timeout=120):
    """nthreads SMTP sessions at once, each calling send(session, t, i) for i < per; returns
    {key: value} of what send returned as (key, value); every session must end cleanly."""
    got, errors = {}, []
    lock = threading.Lock()

    def run(t):
        try:
            with smtp(p, timeout=timeout) as s:
                s.ehlo("client.example")
                for i in range(per):
                    key, value = send(s, t, i)
                    with lock:
                        got[key] = value
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=run, args=(t,)) for t in range(nthreads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=5 * timeout)
    assert not any(th.is_alive() for th in threads)
    assert not errors, errors[:3]
    assert len(got) == nthreads * per
    return got


def test_all_local_message_is_delivered_right_after_the_250(petrel, watch):
    w = watch(petrel)
    qid = send(petrel, "sender@example.org", "alice@localhost", BODY)
    msgs = petrel.wait_messages("alice@localhost", 1)
    assert len(msgs) == 1, petrel.log()[-3000:]
    m = expected_prefix_re("sender@example.org", "alice@localhost", qid).match(msgs[0])
    assert m, msgs[0][:500]
    assert msgs[0][m.end():] == BODY_LF
    # the stable name the queue would also use: <arrival>.P<id>R<rcpt>T<target>.<hostname>
    names = maildir_names(petrel, "alice@localhost")
    assert re.fullmatch(rf"\d+\.P{qid}R0T0\.mx\.petrel\.test", names[0]), names
    assert maildir_names(petrel, "alice@localhost", "tmp") == []

    assert re.search(rf"{qid}: from=<sender@example\.org>, size={len(BODY)}, nrcpt=1 "
                     r"\(delivering at once\)$", petrel.log(), re.M), log_lines(petrel, qid)
    sent = wait_log(petrel, rf"{qid}: to=<alice@localhost>, relay=local, delay=\d+, "
                            r"status=sent \(delivered to maildir\)$")
    assert sent, log_lines(petrel, qid)
    log = petrel.log()
    assert log.index("(delivering at once)") < log.index("status=sent")
    assert_direct(petrel, qid, w)

    time.sleep(2.5)  # retry_min is 1s: a queue attempt would have happened by now
    assert w.events() == []
    assert petrel.queue_files() == [] and spool_tmp_files(petrel) == []
    assert len(petrel.messages("alice@localhost")) == 1
    lines = log_lines(petrel, qid)
    assert len(lines) == 3, lines  # client=, from= (delivering at once), to= sent
    assert not any("deferred" in l or "bounced" in l for l in lines), lines


def test_several_local_recipients_and_an_alias_one_copy_each(petrel_factory, tmp_path, watch):
    aliases = tmp_path / "aliases"
    aliases.write_text("team@localhost: alice@localhost, bob@localhost\n")
    p = petrel_factory(aliases_file=str(aliases))
    w = watch(p)
    # alice directly and through the alias; Postmaster without a domain; another local domain
    rcpts = ["alice@localhost", "carol@example.test", "team@localhost", "Postmaster"]
    qid = send(p, "sender@example.org", rcpts, BODY)
    want = {"alice@localhost": 1, "bob@localhost": 1, "carol@example.test": 1,
            "postmaster@localhost": 1}
    wait_for(lambda: all(len(p.messages(a)) >= 1 for a in want))
    got = {a: len(p.messages(a)) for a in want}
    assert got == want, (got, p.log()[-3000:])
    assert not p.maildir("team@localhost").exists()
    for addr in want:
        head, body = split_prepended(p.messages(addr)[0])
        assert f"Delivered-To: {addr}\n".encode() in head, head
        assert f" id {qid}\n".encode() in head
        assert body == BODY_LF
    assert_direct(p, qid, w)
    time.sleep(2.5)
    assert {a: len(p.messages(a)) for a in want} == want
    assert w.events() == [] and p.queue_files() == []
    assert "status=deferred" not in p.log()


def test_many_sessions_at_once_each_message_once(petrel, watch):
    """Parallel commits into the same Maildirs (sharing new/ flushes): none lost or doubled."""
    w = watch(petrel)

    def send(s, t, i):
        marker = f"PAR-{t}-{i}"
        assert s.docmd("MAIL FROM:<load@example.org>")[0] == 250
        for r in ("alice@localhost", f"user{i % 3}@localhost"):
            assert s.docmd(f"RCPT TO:<{r}>")[0] == 250
        code, resp = s.data(f"Subject: {marker}\r\n\r\n{marker}\r\n".encode())
        assert code == 250, resp
        return marker, queue_id(resp)

    nthreads, per = 8, 10
    acked = send_from_sessions(petrel, nthreads, per, send)
    assert wait_for(lambda: len(petrel.messages("alice@localhost")) >= len(acked))
    for qid in acked.values():
        assert wait_log(petrel, rf"{qid}: to=<user\d@localhost>, relay=local, .*status=sent")
    alice = collections.Counter()
    for data in petrel.messages("alice@localhost"):
        alice[data.rsplit(b"\n\n", 1)[-1].strip().decode()] += 1
    assert alice == collections.Counter({m: 1 for m in acked}), alice.most_common(3)
    for i in range(3):
        assert len(petrel.messages(f"user{i}@localhost")) == nthreads * len(range(i, per, 3))
    for qid in acked.values():
        assert_direct(petrel, qid)
    assert w.events() == [] and petrel.queue_files() == []


# ---- anything else goes through the queue ----------------------------------------------

def test_local_and_foreign_recipient_is_queued_once_deferred(petrel, watch):
    w = watch(petrel)
    qid = send(petrel, "sender@example.org", ["alice@localhost", "friend@remote.example"], BODY)
    assert_journaled_then_queued(petrel, qid, w)
    msgs = petrel.wait_messages("alice@localhost", 1)
    assert len(msgs) == 1
    assert split_prepended(msgs[0])[1] == BODY_LF
    assert wait_log(petrel, rf"{qid}: to=<friend@remote\.example>.*status=deferred"), \
        log_lines(petrel, qid)
    time.sleep(3)  # retries (retry_min 1s) must not deliver alice's copy again
    assert len(petrel.messages("alice@localhost")) == 1
    assert in_queue(petrel, qid), petrel.queue_files()
    assert len(re.findall(rf"{qid}: to=<alice@localhost>.*status=sent", petrel.log())) == 1


def test_message_over_256k_is_spooled_and_delivered_once(petrel, watch):
    w = watch(petrel)
    body = lines_body(300 * 1024, b"BIG")
    qid = send(petrel, "sender@example.org", "alice@localhost", body)
    assert_spooled(petrel, qid, w)
    assert not re.search(rf"{qid}: .*\(delivering at once\)", petrel.log())
    msgs = petrel.wait_messages("alice@localhost", 1)
    assert len(msgs) == 1
    assert split_prepended(msgs[0])[1] == body.replace(b"\r\n", b"\n")
    assert wait_queue_empty(petrel), petrel.queue_files()
    assert spool_tmp_files(petrel) == []
    time.sleep(1.5)
    assert len(petrel.messages("alice@localhost")) == 1


@pytest.mark.parametrize("size,direct", [(MEM_MSG_MAX, True), (MEM_MSG_MAX + 1, False)])
def test_256k_boundary(petrel, watch, size, direct):
    w = watch(petrel)
    body = lines_body(size, b"EDGE")
    qid = send(petrel, "sender@example.org", "alice@localhost", body)
    if direct:
        assert_direct(petrel, qid, w)
        assert re.search(rf"{qid}: from=<[^>]*>, size={size}, ", petrel.log())
    else:
        assert_spooled(petrel, qid, w)
    msgs = petrel.wait_messages("alice@localhost", 1)
    assert len(msgs) == 1
    assert split_prepended(msgs[0])[1] == body.replace(b"\r\n", b"\n")
    assert wait_queue_empty(petrel)
    time.sleep(1.5)
    assert len(petrel.messages("alice@localhost")) == 1


@pytest.mark.parametrize("how", ["DATA", "BDAT"])
def test_empty_message_is_delivered_at_once(petrel, watch, how):
    """A message of no octets at all (nothing was ever held in memory for it)."""
    w = watch(petrel)
    s, _ = petrel.connect()
    try:
        s.sendall(b"EHLO client.example\r\nMAIL FROM:<sender@example.org>\r\n"
                  b"RCPT TO:<alice@localhost>\r\n"
                  + (b"DATA\r\n.\r\n" if how == "DATA" else b"BDAT 0 LAST\r\n")
                  + b"QUIT\r\n")
        replies = recv_replies(s, 6 if how == "DATA" else 5)
    finally:
        s.close()
    (qid,) = queued_ids(replies)
    assert_direct(petrel, qid, w)
    assert re.search(rf"{qid}: from=<[^>]*>, size=0, nrcpt=1 ", petrel.log()), \
        log_lines(petrel, qid)
    msgs = petrel.wait_messages("alice@localhost", 1)
    assert len(msgs) == 1
    assert split_prepended(msgs[0])[1] == b""
    assert petrel.queue_files() == [] and spool_tmp_files(petrel) == []


# ---- a Maildir that cannot be written ------------------------------------------------

def test_unwritable_maildir_is_spooled_then_delivered_once_after_flush(petrel_factory, watch):
    # retries only when told: a copy can come from the commit, the first queue attempt or the flush
    p = petrel_factory(retry_min="1h", retry_max="1h")
    w = watch(p)
    blocker = block_maildir(p, "bob@localhost")
    qid = send(p, "sender@example.org", "bob@localhost", BODY)  # still a 250
    assert direct_line(p, qid), log_lines(p, qid)  # tried at the commit ...
    assert_spooled(p, qid, w)                      # ... then spooled
    deferrals = wait_for(lambda: len(re.findall(
        rf"{qid}: to=<bob@localhost>, relay=local, .*status=deferred", p.log())) >= 2)
    assert deferrals, log_lines(p, qid)  # at the commit, then the queue's first attempt
    assert in_queue(p, qid), p.queue_files()
    assert blocker.read_text() == "not a directory\n"
    assert not any(p.maildir("bob@localhost").glob("tmp/*")), "a tmp file was left behind"
    wait_attempted(p, qid)

    blocker.unlink()
    flush_delivers_once(p, qid, "bob@localhost", BODY_LF)


def test_partly_unwritable_no_recipient_gets_two_copies(petrel_factory, watch):
    """alice's copy is made at the commit, bob's Maildir fails: alice's copy is taken back
    (all or nothing) and the queue takes the whole message over.  It delivers alice's copy,
    and on the retry finds it by its name (even once she has read it) and delivers only
    bob's."""
    p = petrel_factory(retry_min="1h", retry_max="1h")
    w = watch(p)
    blocker = block_maildir(p, "bob@localhost")
    qid = send(p, "sender@example.org", ["alice@localhost", "bob@localhost"], BODY)
    assert direct_line(p, qid)
    assert wait_log(p, rf"{qid}: delivery at once failed for a recipient; 1 copy\(ies\) taken back")
    assert len(p.wait_messages("alice@localhost", 1, timeout=20)) == 1  # from the queue
    assert_spooled(p, qid, w)
    assert wait_for(lambda: len(re.findall(
        rf"{qid}: to=<bob@localhost>, relay=local, .*status=deferred", p.log())) >= 2), \
        log_lines(p, qid)
    assert len(p.messages("alice@localhost")) == 1
    wait_attempted(p, qid)

    # alice reads her copy (new/ -> cur/ with flags), then bob's Maildir is fixed
    (name,) = maildir_names(p, "alice@localhost")
    md = p.maildir("alice@localhost")
    os.rename(md / "new" / name, md / "cur" / f"{name}:2,S")
    blocker.unlink()
    p.proc.send_signal(signal.SIGUSR1)  # what `petrel queue flush` does
    msgs = p.wait_messages("bob@localhost", 1, timeout=20)
    assert len(msgs) == 1, log_lines(p, qid)
    assert split_prepended(msgs[0])[1] == BODY_LF
    assert wait_queue_empty(p), p.queue_files()
    time.sleep(1.5)
    assert count_copies(p, "alice@localhost", b"delivered at the commit") == 1
    assert maildir_names(p, "alice@localhost") == []
    assert len(p.messages("bob@localhost")) == 1


def test_batches_with_a_broken_maildir_deliver_the_rest_and_queue_its_messages(petrel_factory):
    """Ten sessions send 200 messages each at once, each to one recipient, so that many
    journaled all-local messages wait at a time and the direct way takes them in batches
    of several.  A few go to broken@localhost, whose Maildir cannot be opened (its tmp/ is a
    regular file): each of those is taken out of its batch and queued whole, while the rest
    of its batch is delivered; alice and bob get every message of theirs exactly once.
    Once the Maildir is repaired, a flush delivers the queued ones, once each."""
    p = petrel_factory(retry_min="1h", retry_max="1h")  # queue retries only when flushed
    broken = "broken@localhost"
    good = ("alice@localhost", "bob@example.test")
    blocker = p.maildir(broken) / "tmp"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("not a directory\n")
    nthreads, per = 10, 200

    def rcpt_for(t, i):
        return broken if i % 40 == 3 + t else good[(t + i) % 2]

    def body_for(marker):
        return (f"Subject: {marker}\r\nMessage-ID: <{marker}@client.example>\r\n"
                f"X-Marker: {marker}\r\n\r\nbody of {marker}\r\n..dot\r\nend\r\n").encode()

    def send(s, t, i):
        marker, rcpt = f"BATCH-{t}-{i}", rcpt_for(t, i)
        assert s.docmd("MAIL FROM:<load@example.org>")[0] == 250
        assert s.docmd(f"RCPT TO:<{rcpt}>")[0] == 250
        code, resp = s.data(body_for(marker))
        assert code == 250, resp
        return marker, (rcpt, queue_id(resp))

    sent = send_from_sessions(p, nthreads, per, send)  # marker -> (recipient, queue id)
    want = {a: {m for m, (r, _q) in sent.items() if r == a} for a in (*good, broken)}
    assert len(want[broken]) == nthreads * 5 and all(len(want[a]) > 900 for a in good)
    broken_ids = {sent[m][1] for m in want[broken]}
    good_ids = {sent[m][1]: sent[m][0] for a in good for m in want[a]}
    assert len(broken_ids) + len(good_ids) == len(sent)
    sent_re = re.compile(r"(\w+): to=<([^>]*)>, relay=local, delay=\d+, "
                         r"status=sent \(delivered to maildir\)$", re.M)

    def sent_lines():
        return collections.Counter(sent_re.findall(p.log()))

    def copies(addr):
        """{marker: number of files} in addr's new/ and cur/, each checked byte for byte."""
        c = collections.Counter()
        for sub in ("new", "cur"):
            d = p.maildir(addr) / sub
            for f in (sorted(d.iterdir()) if d.is_dir() else []):
                head, body = split_prepended(f.read_bytes())
                marker = re.search(rb"^X-Marker: (\S+)$", body, re.M).group(1).decode()
                assert f"Delivered-To: {addr}\n".encode() in head, (f, head)
                assert f" id {sent[marker][1]}\n".encode() in head, (f, head)
                assert body == body_for(marker).replace(b"\r\n", b"\n"), (f, body)
                c[marker] += 1
        return c

    # the direct way is over for every message: each good one logged as sent, each broken one
    # queued (queue/ID and ID.st) after its failure at once
    assert wait_for(lambda: sum(n for (q, _a), n in sent_lines().items() if q in good_ids)
                    >= len(good_ids), timeout=180, interval=0.5), \
        f"{len(good_ids) - len(sent_lines())} not logged as sent"
    assert wait_for(lambda: {n.split(".")[0] for n in p.queue_files()} >= broken_ids,
                    timeout=60, interval=0.2), sorted(broken_ids - set(p.queue_files()))[:5]
    log = p.log()
    for qid in broken_ids:
        assert re.search(rf"{qid}: delivery at once failed for a recipient; 0 copy\(ies\) taken "
                         r"back, the message goes to the queue$", log, re.M), log_lines(p, qid)
        assert re.search(rf"{qid}: from=<[^>]*>, size=\d+, nrcpt=1 \(queue active\)$", log,
                         re.M), log_lines(p, qid)
    assert "delivery at once of" not in log  # no commit of a batch failed
    assert "status=bounced" not in log

    # alice and bob: each message exactly once, delivered at once, nothing left in tmp/
    lines = sent_lines()
    assert {q: n for (q, a), n in lines.items() if q in good_ids} == {q: 1 for q in good_ids}
    assert all(good_ids[q] == a for (q, a) in lines if q in good_ids)
    assert not any(q in broken_ids for q, _a in lines), "a broken-user message was sent"
    for a in good:
        got = copies(a)
        assert got == collections.Counter({m: 1 for m in want[a]}), (
            f"{a}: missing {sorted(set(want[a]) - set(got))[:5]}, "
            f"twice {[m for m, n in got.items() if n > 1][:5]}, "
            f"foreign {sorted(set(got) - want[a])[:5]}")
        assert maildir_names(p, a, "tmp") == []
    assert {n.split(".")[0] for n in p.queue_files()} == broken_ids, p.queue_files()
    assert blocker.read_text() == "not a directory\n"
    assert not (p.maildir(broken) / "new").exists()

    # the server is still up and serving
    assert p.proc.poll() is None
    with smtp(p) as s:
        assert s.ehlo("client.example")[0] == 250
        assert s.noop()[0] == 250

    # every queued message had its first queue attempt (deferred: tmp/ is still a file) ...
    def attempted():
        r = cli_queue(p, "list", "--json")
        if r.returncode != 0:
            return False
        done = {e["id"] for e in json.loads(r.stdout) if e.get("attempts", 0) >= 1}
        return done >= broken_ids

    assert wait_for(attempted, timeout=60, interval=0.2), cli_queue(p, "list").stdout
    time.sleep(0.3)  # the attempts' ends reach the event loop (as in wait_attempted)
    assert copies(broken) == collections.Counter()

    # ... then the Maildir is repaired (petrel makes tmp/ itself) and a flush delivers each once
    blocker.unlink()
    r = cli_queue(p, "flush")
    assert r.returncode == 0, r.stderr
    assert wait_for(lambda: set(copies(broken)) >= want[broken], timeout=60, interval=0.2), \
        sorted(want[broken] - set(copies(broken)))[:5]
    assert wait_queue_empty(p, timeout=30), p.queue_files()
    # the queue is empty: nothing can deliver another copy now
    assert copies(broken) == collections.Counter({m: 1 for m in want[broken]})
    assert maildir_names(p, broken, "tmp") == []
    lines = sent_lines()
    assert {q: n for (q, a), n in lines.items() if q in broken_ids} == {q: 1 for q in broken_ids}
    for a in good:
        assert copies(a) == collections.Counter({m: 1 for m in want[a]})
        assert maildir_names(p, a, "tmp") == []
    assert spool_tmp_files(p) == []
    assert "status=bounced" not in p.log()
    assert p.proc.poll() is None


# ---- a full spool ----------------------------------------------------------------------

@pytest.fixture
def full_spool(petrel_factory):
    """A server whose spool is a full tmpfs (the Maildirs are elsewhere, with room)."""
    p = petrel_factory(start=False, retry_min="1h", retry_max="1h")
    mount_tmpfs(p.spool)
    try:
        p.start()
        p.fillers = fill_fs(p.spool)
        yield p
    finally:
        if p.proc is not None:
            p.stop()
        subprocess.run(["umount", "-l", str(p.spool)], capture_output=True, timeout=20)


def _try_send(p, rcpts, body):
    """One transaction; returns (code, reply text) of the end of data."""
    with smtp(p) as s:
        s.ehlo("client.example")
        assert s.docmd("MAIL FROM:<sender@example.org>")[0] == 250
        for r in rcpts:
            assert s.docmd(f"RCPT TO:<{r}>")[0] == 250
        try:
            code, resp = s.data(body)
        except smtplib.SMTPResponseException as e:
            code, resp = e.smtp_code, e.smtp_error
        assert s.noop()[0] == 250
        return code, resp.decode(errors="replace")


def test_full_spool_does_not_stop_all_local_mail(full_spool):
    p = full_spool
    code, resp = _try_send(p, ["alice@localhost", "bob@localhost"], BODY)
    assert code == 250, (code, resp)
    qid = queue_id(resp)
    assert_direct(p, qid)
    assert len(p.messages("alice@localhost")) == 1 and len(p.messages("bob@localhost")) == 1
    # what needs the spool is refused with a 452, as before
    code, resp = _try_send(p, ["alice@localhost", "far@remote.example"], BODY)
    assert code == 452 and resp.startswith("4.3.1"), (code, resp)
    assert len(p.messages("alice@localhost")) == 1


def test_full_spool_refused_message_was_not_delivered_to_anyone(full_spool):
    """alice's Maildir works, bob's does not, and the spool is full: the message can be
    neither finished at the commit nor queued, so the client gets a 4xx and will send it
    again.  A 4xx means "not accepted": no recipient may have it yet, or the retry gives
    alice a second copy.  (The retry, once there is room, is what a client does.)"""
    p = full_spool
    blocker = block_maildir(p, "bob@localhost")
    body = BODY.replace(b"Subject: ", b"X-Marker: REFUSED-ONCE\r\nSubject: ")
    refused, resp = _try_send(p, ["alice@localhost", "bob@localhost"], body)
    assert 400 <= refused < 500, (refused, resp)
    copies_after_4xx = count_copies(p, "alice@localhost", b"REFUSED-ONCE")

    # room again, the client retries; bob's Maildir is fixed and the queue flushed
    for f in p.fillers:
        f.unlink()
    code, resp = _try_send(p, ["alice@localhost", "bob@localhost"], body)
    assert code == 250, (code, resp)
    qid = queue_id(resp)
    wait_attempted(p, qid)
    blocker.unlink()
    assert cli_queue(p, "flush").returncode == 0
    assert len(p.wait_messages("bob@localhost", 1, timeout=20)) == 1
    assert wait_queue_empty(p), p.queue_files()
    time.sleep(1)
    alice = count_copies(p, "alice@localhost", b"REFUSED-ONCE")
    assert (copies_after_4xx, alice) == (0, 1), (
        f"alice had {copies_after_4xx} copy/copies of a message refused with {refused} and has "
        f"{alice} after the client's retry; log:\n" + "\n".join(
            l for l in p.log().splitlines() if "to=<alice" in l or "not queued" in l
            or "delivering at once" in l))


# ---- crashes ---------------------------------------------------------------------------

def test_kill9_right_after_the_250(petrel, watch):
    w = watch(petrel)
    s, _ = petrel.connect()
    try:
        s.sendall(b"EHLO client.example\r\nMAIL FROM:<sender@example.org>\r\n"
                  b"RCPT TO:<alice@localhost>\r\nDATA\r\n")
        assert recv_replies(s, 4)[-1].startswith("354")
        s.sendall(BODY.replace(b"\r\n.", b"\r\n..") + b".\r\n")
        reply = recv_reply(s)
        petrel.kill9()  # at once: the 250 is all the client knows
    finally:
        s.close()
    m = QUEUED_AS.match(reply.strip())
    assert m, reply
    qid = m.group(1)
    # Delivered already, or still only in the journal: either way not in spool/queue.
    assert w.events() == []
    petrel.start()
    msgs = petrel.wait_messages("alice@localhost", 1)
    time.sleep(2)  # a second copy would come from the queue's retries meanwhile
    msgs = petrel.messages("alice@localhost")
    assert len(msgs) == 1
    assert f" id {qid}\n".encode() in split_prepended(msgs[0])[0]
    assert split_prepended(msgs[0])[1] == BODY_LF
    assert wait_queue_empty(petrel), petrel.queue_files()
    assert spool_tmp_files(petrel) == []


def test_kill9_under_load_every_acknowledged_message_exactly_once(petrel_factory):
    """Threads send all-local messages (the journal, the direct way) and local+foreign ones
    (spooled; the local copy comes from the queue); kill -9 in between.  Every marker
    acknowledged is in the Maildir after a restart, and no marker is there twice."""
    p = petrel_factory()
    mark_re = re.compile(rb"X-Marker: (K\d+-T\d+-M\d+)\n")
    all_acked = {}

    def counts():
        return marker_counts(p.mail_root, mark_re)

    for rnd, delay in enumerate([0.3, 0.9]):
        def rcpts(t, marker):
            # every fourth message also to a foreign recipient: spooled
            n = int(marker.rsplit("-M", 1)[1]) + 1
            return [f"kill{t % 3}@localhost"] + (["far@remote.example"] if n % 4 == 0 else [])

        acked = load_then_kill9(p, f"K{rnd}", rcpts, delay, min_acked=3)
        all_acked.update(acked)
        p.start()
        assert spool_tmp_files(p) == []
        ok = wait_for(lambda: set(all_acked) <= set(counts()), timeout=60, interval=0.2)
        missing = sorted(set(all_acked) - set(counts()))
        assert ok, f"round {rnd}: lost {missing[:5]} of {len(all_acked)}"
        time.sleep(2.5)  # the queue's retries after the restart
        twice = {k: v for k, v in counts().items() if v > 1}
        assert not twice, f"round {rnd}: delivered more than once: {list(twice.items())[:5]}"
    for f in all_maildir_files(p.mail_root):
        _head, body = split_prepended(f.read_bytes())
        assert body.endswith(b" \n") and b"X-Marker: " in body, body[:200]


# ---- CHUNKING and pipelining ----------------------------------------------------------

def test_bdat_and_pipelined_messages_each_delivered_once(petrel, watch):
    w = watch(petrel)
    # two chunks that only together pass 256 KiB
    whole_big = lines_body(320 * 1024, b"BDATBIG")
    big_a, big_b = whole_big[:200 * 1024], whole_big[200 * 1024:]
    m1 = b"Subject: one\r\nX-Marker: BDAT-ONE\r\n\r\nchunked\r\nmessage\r\n"
    m2 = b"Subject: two\r\nX-Marker: BDAT-TWO\r\n\r\nlocal and foreign\r\n"
    m4 = b"Subject: four\r\nX-Marker: DATA-FOUR\r\n\r\nafter the bdat ones\r\n"
    m5 = b"Subject: five\r\nX-Marker: BDAT-ABORTED\r\n\r\nnever\r\n"
    m6 = b"Subject: six\r\nX-Marker: BDAT-SIX\r\n\r\nafter the rset\r\n"
    data = (b"EHLO client.example\r\n"
            # 1: three chunks, the first ending in CR, to alice: at the commit
            b"MAIL FROM:<a@example.org>\r\nRCPT TO:<alice@localhost>\r\n"
            + b"BDAT 13\r\n" + m1[:13] + b"BDAT 10\r\n" + m1[13:23]
            + b"BDAT %d LAST\r\n" % len(m1[23:]) + m1[23:]
            # 2: local and foreign: journaled, queued once the foreign one is deferred
            + b"MAIL FROM:<a@example.org>\r\nRCPT TO:<alice@localhost>\r\n"
            b"RCPT TO:<far@remote.example>\r\n"
            + b"BDAT %d LAST\r\n" % len(m2) + m2
            # 3: two chunks that together pass 256 KiB: spooled while received
            + b"MAIL FROM:<a@example.org>\r\nRCPT TO:<bob@localhost>\r\n"
            + b"BDAT %d\r\n" % len(big_a) + big_a + b"BDAT %d\r\n" % len(big_b) + big_b
            + b"BDAT 0 LAST\r\n"
            # 4: DATA, dot-stuffed, to alice and bob: at the commit
            + b"MAIL FROM:<a@example.org>\r\nRCPT TO:<alice@localhost>\r\n"
            b"RCPT TO:<bob@localhost>\r\nDATA\r\n" + m4 + b".\r\n"
            # 5: a chunk, then RSET: nothing of it is kept
            + b"MAIL FROM:<a@example.org>\r\nRCPT TO:<alice@localhost>\r\n"
            + b"BDAT %d\r\n" % len(m5) + m5 + b"RSET\r\n"
            # 6: one more after the RSET
            + b"MAIL FROM:<a@example.org>\r\nRCPT TO:<alice@localhost>\r\n"
            + b"BDAT %d LAST\r\n" % len(m6) + m6
            + b"QUIT\r\n")
    s, _ = petrel.connect()
    try:
        s.sendall(data)
        # EHLO 1; #1: 2+3; #2: 3+1; #3: 2+3; #4: 3+1+1; #5: 2+1+1; #6: 2+1; QUIT 1
        replies = recv_replies(s, 1 + 5 + 4 + 5 + 5 + 4 + 3 + 1, timeout=30)
    finally:
        s.close()
    assert replies[-1].startswith("221"), replies
    bad = [r for r in replies if not r.startswith(("250", "354", "221"))]
    assert not bad, replies
    ids = queued_ids(replies)
    assert len(ids) == 5 and len(set(ids)) == 5, replies
    q1, q2, q3, q4, q6 = ids
    for q in (q1, q4, q6):
        assert_direct(petrel, q, w)
    assert_journaled_then_queued(petrel, q2, w)
    assert_spooled(petrel, q3, w)

    assert wait_for(lambda: len(petrel.messages("alice@localhost")) >= 4)
    assert wait_for(lambda: len(petrel.messages("bob@localhost")) >= 2)
    time.sleep(2.5)
    alice = [split_prepended(m)[1] for m in petrel.messages("alice@localhost")]
    bob = [split_prepended(m)[1] for m in petrel.messages("bob@localhost")]
    assert sorted(alice) == sorted(x.replace(b"\r\n", b"\n") for x in (m1, m2, m4, m6)), alice
    assert sorted(bob) == sorted([whole_big.replace(b"\r\n", b"\n"),
                                  m4.replace(b"\r\n", b"\n")]), [b[:60] for b in bob]
    for f in all_maildir_files(petrel.mail_root):
        assert b"BDAT-ABORTED" not in f.read_bytes()
    # only the local+foreign message stays (its foreign part is deferred)
    assert [n for n in petrel.queue_files() if not n.startswith(q2)] == []
    assert spool_tmp_files(petrel) == []


def test_pipelined_data_messages_in_one_write(petrel, watch):
    w = watch(petrel)
    n = 12
    data = b"EHLO client.example\r\n"
    for i in range(n):
        # every fourth also has a foreign recipient; the others name the same one twice
        rcpt = b"far@remote.example" if i % 4 == 3 else b"pipe%d@localhost" % (i % 2)
        data += (b"MAIL FROM:<a@example.org>\r\nRCPT TO:<pipe%d@localhost>\r\n"
                 b"RCPT TO:<%s>\r\nDATA\r\n"
                 b"Subject: message %d\r\nX-Marker: PIPE-%d\r\n\r\n..dot %d\r\n.\r\n"
                 % (i % 2, rcpt, i, i, i))
    data += b"QUIT\r\n"
    s, _ = petrel.connect()
    try:
        s.sendall(data)
        replies = recv_replies(s, 1 + 5 * n + 1, timeout=30)
    finally:
        s.close()
    ids = queued_ids(replies)
    assert len(ids) == n and len(set(ids)) == n, replies
    for i, q in enumerate(ids):
        if i % 4 == 3:
            assert_journaled_then_queued(petrel, q, w)
        else:
            assert_direct(petrel, q, w)
    assert wait_for(lambda: len(petrel.messages("pipe0@localhost")) >= n // 2)
    assert wait_for(lambda: len(petrel.messages("pipe1@localhost")) >= n // 2)
    time.sleep(2.5)
    for u in (0, 1):
        got = collections.Counter(re.search(rb"X-Marker: (PIPE-\d+)", m).group(1).decode()
                                  for m in petrel.messages(f"pipe{u}@localhost"))
        assert got == collections.Counter({f"PIPE-{i}": 1 for i in range(u, n, 2)}), got
    for m in petrel.messages("pipe0@localhost"):
        assert b"\n.dot " in split_prepended(m)[1]  # the stuffed dot is removed once


# ---- the 64 MiB held in memory by all sessions together ----------------------------------

# The session hands the body over in pieces of about 64 KiB: of 200 KiB sent, more than
# 128 KiB reach the queue, which then holds a buffer of 256 KiB for the message.
HOLD_BODY = 200 * 1024
HOLDERS = MEM_TOTAL_MAX // MEM_MSG_MAX  # exactly fill the 64 MiB


def _open_holders(p, count, tag):
    """count sessions, each in the middle of a HOLD_BODY message (sent, no final dot)."""
    socks = []
    head = (b"EHLO hold.example\r\nMAIL FROM:<hold@example.org>\r\n"
            b"RCPT TO:<hold%d@localhost>\r\nDATA\r\n")
    for i in range(count):
        s = socket.create_connection((p.host, p.port), timeout=30)
        socks.append(s)
        recv_reply(s)
        s.sendall(head % (i % 4))
    for i, s in enumerate(socks):
        r = recv_replies(s, 4)
        assert r[-1].startswith("354"), (i, r)
        s.sendall(lines_body(HOLD_BODY, b"%s-%d" % (tag, i)))
    # every octet sent has been read by petrel (nothing waits in either socket buffer)
    assert wait_for(lambda: unread_octets(p.port) == 0, timeout=60, interval=0.1), \
        unread_octets(p.port)
    return socks


def _finish(socks):
    ids = []
    for s in socks:
        s.sendall(b".\r\nQUIT\r\n")
    for s in socks:
        r = recv_replies(s, 2, timeout=60)
        ids += queued_ids(r)
        s.close()
    return ids


def test_memory_limit_spills_to_the_spool_and_is_given_back(petrel_factory, watch):
    p = petrel_factory(max_connections_per_ip=2 * HOLDERS + 10)
    w = watch(p)
    socks = []
    try:
        # 256 messages holding 256 KiB each in memory: exactly the 64 MiB, nothing on disk
        socks = _open_holders(p, HOLDERS, b"H1")
        assert spool_tmp_files(p) == [] and w.events() == [], w.events()[:5]

        # one more: no memory left, so it goes to spool/tmp while it is received
        extra = socket.create_connection((p.host, p.port), timeout=30)
        socks.append(extra)
        recv_reply(extra)
        extra.sendall(b"EHLO extra.example\r\nMAIL FROM:<x@example.org>\r\n"
                      b"RCPT TO:<extra@localhost>\r\nDATA\r\n")
        assert recv_replies(extra, 4)[-1].startswith("354")
        extra_body = lines_body(100 * 1024, b"EXTRA")  # its first 64 KiB reach the queue
        extra.sendall(extra_body)
        assert wait_for(lambda: spool_tmp_files(p), timeout=20), "the extra message was not spilled"
        extra_id = spool_tmp_files(p)[0]
        extra.sendall(b".\r\nQUIT\r\n")
        r = recv_replies(extra, 2, timeout=30)
        extra.close()
        socks.remove(extra)
        assert queued_ids(r) == [extra_id], r
        assert_spooled(p, extra_id, w)
        assert len(p.wait_messages("extra@localhost", 1)) == 1

        # the 256 end the direct way (their memory was never taken away) ...
        ids = _finish(socks)
        socks = []
        assert len(ids) == HOLDERS
        for q in ids:
            assert_direct(p, q, w)
        # ... and are held until delivered, right after their 250s
        assert wait_for(lambda: len(all_maildir_files(p.mail_root)) >= HOLDERS + 1, timeout=60)

        # all of it was given back: the next 256 fit again, whole, in memory ...
        before = len(w.events())
        socks = _open_holders(p, HOLDERS, b"H2")
        assert spool_tmp_files(p) == [] and len(w.events()) == before, w.events()[before:][:5]
        # ... and when their clients leave mid-message, theirs is given back too
        gone = p.log().count("disconnect from")
        for s in socks:
            s.close()
        socks = []
        assert wait_for(lambda: p.log().count("disconnect from") >= gone + HOLDERS, timeout=60)
        socks = _open_holders(p, HOLDERS, b"H3")
        assert spool_tmp_files(p) == [] and len(w.events()) == before, w.events()[before:][:5]
        ids = _finish(socks)
        socks = []
        assert len(ids) == HOLDERS
        assert wait_for(lambda: len(all_maildir_files(p.mail_root)) >= 2 * HOLDERS + 1,
                        timeout=60)
    finally:
        for s in socks:
            s.close()
    # every holder message of rounds 1 and 3 once, none of round 2
    c = collections.Counter()
    for f in all_maildir_files(p.mail_root):
        m = re.search(rb"X-Marker: (H\d-\d+)\n", f.read_bytes())
        if m:
            c[m.group(1).decode()] += 1
    assert set(c.values()) == {1}, c.most_common(3)
    assert sorted(c) == sorted([f"H1-{i}" for i in range(HOLDERS)]
                               + [f"H3-{i}" for i in range(HOLDERS)])
    assert p.queue_files() == [] and spool_tmp_files(p) == []
