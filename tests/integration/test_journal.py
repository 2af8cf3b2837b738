"""The spool journal: a small all-local message is made durable in
spool/journal before its 250 and delivered into the Maildirs afterwards by a
background worker, which then appends a "finished" mark.

spool/journal/ holds segments named by 16 lower-case hex digits, only ever
appended to; each record is (src/queue/queue_jrec.h)

    magic "PJM1" (a message) or "PJD1" (finished mark) | len u32 LE |
    crc u32 LE = CRC-32C of magic, len, id and payload | id 16 octets | payload

with the queue-file image (src/queue/queue_file.c) as a message's payload.
At the start, every message without its mark becomes spool/queue/ID (unless
that file exists) and is delivered as a recovered message; the segments read
are then removed.  These tests write such segments by hand, crash the server
right after a 250 and under load, and check the Maildir directory cache that
came with the journal (a directory renamed or replaced behind petrel's back is
looked up again, and nothing is written through a symlink)."""
import json
import os
import re
import shutil
import smtplib
import struct
import subprocess
import threading
import time

import pytest

from conftest import PETREL_BIN, recv_reply, recv_replies
from mailtest import (flush_delivers_once, all_maildir_files, block_maildir, cli_queue, in_queue, load_then_kill9, log_lines,
                      maildir_names, marker_counts, send, wait_attempted,
                      spool_tmp_files, split_prepended, wait_for, wait_log, wait_queue_empty)

BODY = (b"From: Sender <sender@example.org>\r\n"
        b"To: alice@localhost\r\n"
        b"Subject: made durable in the journal\r\n"
        b"\r\n"
        b"first line\r\n"
        b".a line that starts with a dot\r\n"
        b"last line\r\n")
BODY_LF = BODY.replace(b"\r\n", b"\n")

HOSTNAME = "mx.petrel.test"  # conftest's hostname: the last part of every Maildir name
SEG_NAME = re.compile(r"[0-9a-f]{16}\Z")
RECOVERED_RE = r"queue: (\d+) message\(s\) from the journal queued"


# ---- the record format ------------------------------------------------------------------

def _crc32c_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data, crc=0):
    """CRC-32C (Castagnoli), as jrec_crc32c() computes it."""
    crc ^= 0xFFFFFFFF
    for b in data:
        crc = _CRC_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


assert crc32c(b"123456789") == 0xE3069283  # the standard check value


def jrec(magic, qid, payload=b"", crc=None):
    """One journal record; crc overrides the checksum (to write a bad one)."""
    head = magic + struct.pack("<I", len(payload))
    if crc is None:
        crc = crc32c(head + qid.encode() + payload)
    return head + struct.pack("<I", crc) + qid.encode() + payload


def msg_rec(qid, payload):
    return jrec(b"PJM1", qid, payload)


def done_rec(qid):
    return jrec(b"PJD1", qid)


def parse_records(data):
    """[(magic, id, payload)] of the whole, checked records at the start of data (as jrec_scan)."""
    out, off = [], 0
    while len(data) - off >= 28:
        magic = data[off:off + 4]
        ln, crc = struct.unpack_from("<II", data, off + 4)
        qid = data[off + 12:off + 28]
        if magic not in (b"PJM1", b"PJD1") or (magic == b"PJD1" and ln != 0):
            break
        if ln > len(data) - off - 28 or not re.fullmatch(rb"[0-9A-F]{16}", qid):
            break
        payload = data[off + 28:off + 28 + ln]
        if crc32c(data[off:off + 8] + qid + payload) != crc:
            break
        out.append((magic.decode(), qid.decode(), payload))
        off += 28 + ln
    return out


def queue_image(qid, rcpts, message, arrival, sender="sender@example.org",
                helo="client.example"):
    """A queue file's bytes (queue_file_header, then the message in wire form)."""
    if isinstance(rcpts, str):
        rcpts = [rcpts]
    head = (f"PETREL-QUEUE 1\nid {qid}\narrival {arrival}\nsender {sender}\n"
            + "".join(f"rcpt {r}\n" for r in rcpts)
            + f"helo {helo}\nclient_addr 127.0.0.1\nclient_name unknown\nprotocol ESMTP\n"
              "body 7BIT\nsmtputf8 0\nexpanded 1\n\n")
    return head.encode() + message


_id_lock = threading.Lock()
_id_seq = [0]


def new_id():
    """A queue id as util_id_new makes them (16 upper-case hex digits), unique in this run."""
    with _id_lock:
        _id_seq[0] += 1
        n = _id_seq[0]
    usec = int(time.time() * 1e6)
    return f"{usec & 0xFFFFFFFFF:09X}{(0xABC0000 + n) & 0xFFFFFFF:07X}"


def marked_message(marker, subject="from a hand-written journal"):
    return (f"Subject: {subject}\r\nX-Marker: {marker}\r\n\r\n"
            f"body of {marker}\r\n.a dot line\r\n").encode()


# ---- spool and Maildir helpers ------------------------------------------------------------

def journal_dir(p):
    return p.spool / "journal"


def segments(p):
    """Names of the segment files in spool/journal (what petrel would read)."""
    d = journal_dir(p)
    return sorted(f.name for f in d.iterdir() if SEG_NAME.match(f.name)) if d.is_dir() else []


def journal_records(p):
    """[(segment, magic, id, payload)] of every checked record in every segment."""
    out = []
    for name in segments(p):
        try:
            data = (journal_dir(p) / name).read_bytes()
        except FileNotFoundError:
            continue
        out += [(name, *r) for r in parse_records(data)]
    return out


def write_segment(p, seq, data):
    d = journal_dir(p)
    d.mkdir(parents=True, exist_ok=True)
    f = d / f"{seq:016x}"
    f.write_bytes(data)
    return f


def recovered_counts(p):
    return [int(n) for n in re.findall(RECOVERED_RE, p.log())]


def copies_of(mail_root, marker):
    """Files anywhere below mail_root (new/, cur/, tmp/ of any Maildir, moved ones too)
    holding marker."""
    out = []
    for dirpath, _dirs, files in os.walk(mail_root):
        for f in files:
            path = os.path.join(dirpath, f)
            try:
                with open(path, "rb") as fh:
                    if marker in fh.read():
                        out.append(path)
            except (FileNotFoundError, IsADirectoryError):
                continue
    return sorted(out)


def send_raw_then_kill9(p, rcpt, body):
    """One message over a raw socket; kill -9 as soon as its reply arrives.  Returns the reply."""
    s, _ = p.connect()
    try:
        s.sendall(b"EHLO client.example\r\nMAIL FROM:<sender@example.org>\r\n"
                  b"RCPT TO:<" + rcpt.encode() + b">\r\nDATA\r\n")
        assert recv_replies(s, 4)[-1].startswith("354")
        s.sendall(body.replace(b"\r\n.", b"\r\n..") + b".\r\n")
        reply = recv_reply(s)
        p.kill9()  # at once: the 250 is all the client knows
    finally:
        s.close()
    return reply


QUEUED_AS = re.compile(r"^250 2\.0\.0 Ok: queued as ([0-9A-F]{16})$")


def sent_lines(p, qid, addr):
    return re.findall(rf"{qid}: to=<{re.escape(addr)}>, relay=local, .*status=sent", p.log())


# ---- kill -9 right after the 250 -------------------------------------------------------------

def test_kill9_right_after_the_250_the_journal_has_it_and_it_is_delivered_once(petrel):
    reply = send_raw_then_kill9(petrel, "alice@localhost", BODY)
    m = QUEUED_AS.match(reply.strip())
    assert m, reply
    qid = m.group(1)

    # The 250 came after the journal's flush: the record is there, whole and checked.
    recs = journal_records(petrel)
    mine = [r for r in recs if r[2] == qid]
    assert [r[1] for r in mine if r[1] == "PJM1"] == ["PJM1"], recs
    payload = next(r[3] for r in mine if r[1] == "PJM1")
    arrival = int(re.search(rb"\narrival (\d+)\n", payload).group(1))
    # exactly a queue file's image: envelope header, then the message unstuffed, CRLF kept
    assert payload == queue_image(qid, "alice@localhost", BODY, arrival), payload[:400]
    finished = any(r[1] == "PJD1" for r in mine)
    assert petrel.queue_files() == []  # never a queue file before the crash

    petrel.start()
    # the journal is read (and emptied) before the server listens
    assert segments(petrel) == [], segments(petrel)
    # a segment is made of zeros before its records: those are no torn write to warn about
    assert "after the last whole record ignored" not in petrel.log(), petrel.log()[-2000:]
    if not finished:
        assert recovered_counts(petrel) == [1], petrel.log()[-2000:]
    else:
        assert recovered_counts(petrel) == [], petrel.log()[-2000:]
    assert wait_for(lambda: len(petrel.messages("alice@localhost")) >= 1), log_lines(petrel, qid)
    assert wait_queue_empty(petrel), petrel.queue_files()
    time.sleep(1.5)  # retry_min is 1s: a second delivery would have happened by now
    msgs = petrel.messages("alice@localhost")
    assert len(msgs) == 1, [x[:200] for x in msgs]
    head, body = split_prepended(msgs[0])
    assert f" id {qid}\n".encode() in head, head
    assert body == BODY_LF
    assert maildir_names(petrel, "alice@localhost") == [f"{arrival}.P{qid}R0T0.{HOSTNAME}"]
    assert maildir_names(petrel, "alice@localhost", "tmp") == []
    assert petrel.queue_files() == [] and spool_tmp_files(petrel) == []
    assert segments(petrel) == []


def _deliver_then_crash_without_the_mark(p, marker):
    """Sends one all-local message, waits for its delivery and its finished mark, kills -9,
    and takes the mark out of the segment again: the state of a crash between the
    Maildir's rename and the mark.  Returns (qid, arrival, the Maildir file's name)."""
    body = BODY.replace(b"Subject: ", b"X-Marker: " + marker + b"\r\nSubject: ")
    qid = send(p, "sender@example.org", "alice@localhost", body)
    assert wait_for(lambda: any(r[1:3] == ("PJD1", qid) for r in journal_records(p))), \
        (journal_records(p), log_lines(p, qid))
    p.kill9()
    (seg,) = segments(p)
    recs = parse_records((journal_dir(p) / seg).read_bytes())
    assert [r[:2] for r in recs] == [("PJM1", qid), ("PJD1", qid)], recs
    (journal_dir(p) / seg).write_bytes(msg_rec(qid, recs[0][2]))
    (name,) = maildir_names(p, "alice@localhost")
    arrival = int(re.search(rb"\narrival (\d+)\n", recs[0][2]).group(1))
    assert name == f"{arrival}.P{qid}R0T0.{HOSTNAME}"
    return qid, body, name


def test_redelivery_after_a_crash_replaces_a_torn_copy_in_new(petrel):
    qid, body, name = _deliver_then_crash_without_the_mark(petrel, b"TORN-COPY")
    f = petrel.maildir("alice@localhost") / "new" / name
    whole = f.read_bytes()
    with open(f, "r+b") as fh:  # a damaged copy: the redelivery writes it whole again
        fh.truncate(len(whole) // 2)
    petrel.start()
    assert recovered_counts(petrel) == [1], petrel.log()[-2000:]
    assert segments(petrel) == []
    assert wait_for(lambda: f.stat().st_size == len(whole)), (f.stat().st_size, len(whole))
    assert wait_queue_empty(petrel), petrel.queue_files()
    time.sleep(1)
    assert maildir_names(petrel, "alice@localhost") == [name]
    assert split_prepended(f.read_bytes())[1] == body.replace(b"\r\n", b"\n")
    assert maildir_names(petrel, "alice@localhost", "tmp") == []
    assert maildir_names(petrel, "alice@localhost", "cur") == []
    assert len(sent_lines(petrel, qid, "alice@localhost")) == 2  # before the crash, and after


def test_redelivery_after_a_crash_skips_a_copy_already_read(petrel):
    qid, _body, name = _deliver_then_crash_without_the_mark(petrel, b"READ-COPY")
    md = petrel.maildir("alice@localhost")
    os.rename(md / "new" / name, md / "cur" / f"{name}:2,S")  # the user read it
    petrel.start()
    assert recovered_counts(petrel) == [1], petrel.log()[-2000:]
    assert segments(petrel) == []
    assert wait_queue_empty(petrel), petrel.queue_files()
    assert wait_for(lambda: len(sent_lines(petrel, qid, "alice@localhost")) >= 2), \
        log_lines(petrel, qid)
    time.sleep(1)
    assert maildir_names(petrel, "alice@localhost") == []
    assert maildir_names(petrel, "alice@localhost", "cur") == [f"{name}:2,S"]
    assert maildir_names(petrel, "alice@localhost", "tmp") == []
    assert len(copies_of(petrel.mail_root, b"READ-COPY")) == 1


def test_finished_marks_keep_delivered_messages_from_coming_back(petrel):
    """kill -9 once three messages are delivered and marked: nothing is queued at the start
    (marks need no flush of their own: kill -9 keeps the page cache), no second copy."""
    qids = [send(petrel, "sender@example.org", "alice@localhost",
                 marked_message(f"MARKED-{i}")) for i in range(3)]
    assert wait_for(lambda: {r[2] for r in journal_records(petrel) if r[1] == "PJD1"}
                    >= set(qids)), journal_records(petrel)
    assert len(petrel.messages("alice@localhost")) == 3
    assert segments(petrel) != []  # the current segment stays while it may take more
    petrel.kill9()
    petrel.start()
    assert segments(petrel) == []
    assert recovered_counts(petrel) == [], petrel.log()[-2000:]
    time.sleep(1.5)
    assert len(petrel.messages("alice@localhost")) == 3
    assert petrel.queue_files() == []
    for q in qids:
        assert len(sent_lines(petrel, q, "alice@localhost")) == 1, log_lines(petrel, q)


def test_clean_stop_removes_the_finished_segment(petrel):
    qid = send(petrel, "sender@example.org", "alice@localhost", BODY)
    assert wait_for(lambda: any(r[1:3] == ("PJD1", qid) for r in journal_records(petrel)))
    assert segments(petrel) != []
    assert petrel.stop() == 0
    assert list(journal_dir(petrel).iterdir()) == []
    petrel.start()
    time.sleep(1)
    assert recovered_counts(petrel) == []
    assert len(petrel.messages("alice@localhost")) == 1


def test_full_segment_is_removed_once_its_messages_are_delivered(petrel):
    """A segment takes no more past 4 MiB: the next message opens the next one, and the
    full one goes once every message in it is finished."""
    size = 240 * 1024
    line = b"x" * 78 + b"\r\n"
    qids = []
    for i in range(20):  # 20 * 240 KiB: past 4 MiB
        body = (f"Subject: big {i}\r\nX-Marker: ROTATE-{i}\r\n\r\n".encode()
                + line * (size // len(line)))
        qids.append(send(petrel, "sender@example.org", "alice@localhost", body))
    assert wait_for(lambda: len(petrel.messages("alice@localhost")) == 20, timeout=30)
    assert wait_for(lambda: segments(petrel) == ["0000000000000002"]), segments(petrel)
    recs = journal_records(petrel)
    assert recs and all(r[0] == "0000000000000002" for r in recs)
    assert {r[2] for r in recs if r[1] == "PJM1"} <= set(qids[15:])  # only the last few
    assert petrel.queue_files() == []
    assert petrel.stop() == 0
    assert list(journal_dir(petrel).iterdir()) == []


# ---- segments written by hand before the start -------------------------------------------

@pytest.fixture
def stopped(petrel_factory):
    """A server not yet started: the test writes its journal, then starts it."""
    return petrel_factory(start=False)


def _hand_message(marker, rcpt="alice@localhost"):
    qid = new_id()
    arrival = int(time.time())
    msg = marked_message(marker)
    return qid, arrival, msg, queue_image(qid, rcpt, msg, arrival)


def _settle(p, present, absent, addr="alice@localhost"):
    """Waits for the markers in present (each must arrive) and the queue to empty, then checks
    each present marker is there once and none of absent anywhere."""
    assert wait_for(lambda: all(copies_of(p.mail_root, m) for m in present), timeout=20), \
        (present, p.log()[-3000:])
    assert wait_queue_empty(p), p.queue_files()
    time.sleep(1.5)  # retry_min 1s: a second delivery would have happened by now
    for m in present:
        assert len(copies_of(p.mail_root, m)) == 1, (m, copies_of(p.mail_root, m))
    for m in absent:
        assert copies_of(p.mail_root, m) == [], m
    assert len(p.messages(addr)) == len(present)
    assert p.queue_files() == [] and spool_tmp_files(p) == []


def test_hand_written_record_is_delivered_once_at_the_start(stopped):
    p = stopped
    qid, arrival, msg, image = _hand_message("HAND-ONE")
    write_segment(p, 1, msg_rec(qid, image))
    p.start()
    assert recovered_counts(p) == [1], p.log()
    assert segments(p) == []
    _settle(p, [b"HAND-ONE"], [])
    (data,) = p.messages("alice@localhost")
    head, body = split_prepended(data)
    assert head.startswith(b"Return-Path: <sender@example.org>\nDelivered-To: alice@localhost\n")
    assert f" id {qid}\n".encode() in head
    assert body == msg.replace(b"\r\n", b"\n")
    assert maildir_names(p, "alice@localhost") == [f"{arrival}.P{qid}R0T0.{HOSTNAME}"]
    assert len(sent_lines(p, qid, "alice@localhost")) == 1, log_lines(p, qid)
    assert list(journal_dir(p).iterdir()) == []


def test_several_segments_each_message_to_all_its_recipients(stopped):
    p = stopped
    q1, _a1, _m1, i1 = _hand_message("SEG-ONE")
    q2 = new_id()
    i2 = queue_image(q2, ["bob@localhost", "carol@example.test"], marked_message("SEG-TWO"),
                     int(time.time()))
    write_segment(p, 0x1f, msg_rec(q1, i1))
    write_segment(p, 0x2a, msg_rec(q2, i2))
    p.start()
    assert recovered_counts(p) == [2], p.log()
    assert segments(p) == []
    assert wait_for(lambda: len(p.messages("bob@localhost")) == 1
                    and len(p.messages("carol@example.test")) == 1), p.log()[-2000:]
    _settle(p, [b"SEG-ONE"], [])
    assert len(copies_of(p.mail_root, b"SEG-TWO")) == 2


def test_message_with_a_finished_mark_is_not_delivered(stopped):
    p = stopped
    qa, _, _, ia = _hand_message("MARK-DONE")
    qb, _, _, ib = _hand_message("MARK-OPEN")
    write_segment(p, 1, msg_rec(qa, ia) + msg_rec(qb, ib) + done_rec(qa))
    p.start()
    assert recovered_counts(p) == [1], p.log()
    assert segments(p) == []
    _settle(p, [b"MARK-OPEN"], [b"MARK-DONE"])
    assert log_lines(p, qa) == []


@pytest.mark.parametrize("cut", ["in-head", "in-payload", "last-octet"])
def test_torn_last_record_is_ignored(stopped, cut):
    p = stopped
    qa, _, _, ia = _hand_message("TORN-BEFORE")
    qb, _, _, ib = _hand_message("TORN-LAST")
    last = msg_rec(qb, ib)
    keep = {"in-head": 17, "in-payload": 28 + len(ib) // 2, "last-octet": len(last) - 1}[cut]
    write_segment(p, 1, msg_rec(qa, ia) + last[:keep])
    p.start()
    assert recovered_counts(p) == [1], p.log()
    assert segments(p) == []
    _settle(p, [b"TORN-BEFORE"], [b"TORN-LAST"])
    assert log_lines(p, qb) == []


def test_bad_crc_stops_the_scan_of_its_segment(stopped):
    """A record that does not check out ends its segment: what follows it was never
    acknowledged.  The next segment is read all the same."""
    p = stopped
    qa, _, _, ia = _hand_message("CRC-BEFORE")
    qb, _, _, ib = _hand_message("CRC-BAD")
    qc, _, _, ic = _hand_message("CRC-AFTER")
    qd, _, _, id_ = _hand_message("CRC-NEXT-SEGMENT")
    good_b = msg_rec(qb, ib)
    bad_b = jrec(b"PJM1", qb, ib, crc=struct.unpack_from("<I", good_b, 8)[0] ^ 0x00010000)
    write_segment(p, 1, msg_rec(qa, ia) + bad_b + msg_rec(qc, ic))
    write_segment(p, 2, msg_rec(qd, id_))
    p.start()
    assert recovered_counts(p) == [2], p.log()
    assert segments(p) == []
    _settle(p, [b"CRC-BEFORE", b"CRC-NEXT-SEGMENT"], [b"CRC-BAD", b"CRC-AFTER"])
    assert log_lines(p, qb) == [] and log_lines(p, qc) == []


def test_flipped_payload_bit_fails_the_crc(stopped):
    p = stopped
    qa, _, _, ia = _hand_message("FLIP-BEFORE")
    qb, _, _, ib = _hand_message("FLIP-BAD")
    rec = bytearray(msg_rec(qb, ib))
    pos = 28 + ib.index(b"FLIP-BAD")
    rec[pos] ^= 0x20  # "f": the marker would read fLIP-BAD
    write_segment(p, 1, msg_rec(qa, ia) + bytes(rec))
    p.start()
    assert recovered_counts(p) == [1], p.log()
    _settle(p, [b"FLIP-BEFORE"], [b"FLIP-BAD", b"fLIP-BAD"])


def test_files_not_named_like_a_segment_are_left_alone(stopped):
    p = stopped
    q, _, _, image = _hand_message("NAMED-OK")
    write_segment(p, 7, msg_rec(q, image))
    others = {}
    for i, name in enumerate(["000000000000000A",     # upper-case hex
                              "00000000000000001",    # 17 digits
                              "000000000000001",      # 15 digits
                              "0000000000000001.old",
                              "000000000000000g",
                              ".0000000000000001",
                              "README"]):
        qo, _, _, io = _hand_message(f"NAMED-NOT-{i}")
        data = msg_rec(qo, io)
        (journal_dir(p) / name).write_bytes(data)
        others[name] = (data, f"NAMED-NOT-{i}".encode())
    p.start()
    assert recovered_counts(p) == [1], p.log()
    _settle(p, [b"NAMED-OK"], [m for _d, m in others.values()])
    assert segments(p) == []
    left = {f.name: f.read_bytes() for f in journal_dir(p).iterdir()}
    assert left == {n: d for n, (d, _m) in others.items()}
    assert p.stop() == 0  # nor at the stop
    left = {f.name: f.read_bytes() for f in journal_dir(p).iterdir()}
    assert left == {n: d for n, (d, _m) in others.items()}


def test_segment_that_cannot_be_read_stops_the_start(stopped):
    """Its messages were acknowledged: petrel does not start without them (and removes
    nothing)."""
    p = stopped
    q, _, _, image = _hand_message("BEFORE-UNREADABLE")
    write_segment(p, 1, msg_rec(q, image))
    (journal_dir(p) / "0000000000000002").mkdir()  # a segment's name, not a file
    with pytest.raises(RuntimeError, match="exited early"):
        p.start()
    rc = p.stop()
    assert rc not in (None, 0), rc
    assert re.search(r"journal/0000000000000002: ", p.log()), p.log()
    assert segments(p) == ["0000000000000001", "0000000000000002"]
    assert all_maildir_files(p.mail_root) == []  # (the first segment's may be queued)
    # once it is out of the way the start goes on, and the message comes
    (journal_dir(p) / "0000000000000002").rmdir()
    p.start()
    assert recovered_counts(p) == [1], p.log()
    _settle(p, [b"BEFORE-UNREADABLE"], [])


def test_record_whose_queue_file_exists_is_not_queued_twice(stopped):
    """The journal's message was already moved to queue/ID before the crash (its delivery
    had failed): the queue file stays as it is and the message is delivered once."""
    p = stopped
    qid = new_id()
    arrival = int(time.time())
    from_queue = queue_image(qid, "alice@localhost", marked_message("COPY-IN-QUEUE"), arrival)
    from_journal = queue_image(qid, "alice@localhost", marked_message("COPY-IN-JOURNAL"), arrival)
    (p.spool / "queue").mkdir(parents=True)
    (p.spool / "queue" / qid).write_bytes(from_queue)
    write_segment(p, 1, msg_rec(qid, from_journal))
    p.start()
    assert segments(p) == []
    _settle(p, [b"COPY-IN-QUEUE"], [b"COPY-IN-JOURNAL"])
    assert len(sent_lines(p, qid, "alice@localhost")) == 1, log_lines(p, qid)
    assert maildir_names(p, "alice@localhost") == [f"{arrival}.P{qid}R0T0.{HOSTNAME}"]


def test_progress_file_without_its_message_is_used_when_the_journal_requeues_it(stopped):
    """A crash after a journaled message's progress (queue/ID.st: recipient 0 done) was
    written and before queue/ID was: the journal's copy is queued at the start and the
    progress applies — recipient 0 gets no second copy."""
    p = stopped
    qid = new_id()
    arrival = int(time.time())
    img = queue_image(qid, ["alice@localhost", "bob@localhost"], marked_message("HALF-DONE"),
                      arrival)
    (p.spool / "queue").mkdir(parents=True)
    (p.spool / "queue" / f"{qid}.st").write_text("attempts 1\ndone 0\nerror \n")
    write_segment(p, 1, msg_rec(qid, img))
    p.start()
    assert wait_for(lambda: copies_of(p.mail_root, b"HALF-DONE"), timeout=20), log_lines(p, qid)
    assert wait_queue_empty(p), p.queue_files()
    assert len(p.messages("bob@localhost")) == 1
    assert p.messages("alice@localhost") == []  # done before the crash: not again
    assert sent_lines(p, qid, "alice@localhost") == []


def test_orphaned_progress_file_is_removed_at_start(stopped):
    """queue/ID.st with neither queue/ID nor a journal record (its message was finished
    after a failed spool, then a crash): removed at the start; other names are left."""
    p = stopped
    orphan = new_id()
    (p.spool / "queue").mkdir(parents=True)
    (p.spool / "queue" / f"{orphan}.st").write_text("attempts 1\nerror \n")
    (p.spool / "queue" / "notes.st").write_text("not petrel's\n")
    p.start()
    assert wait_for(lambda: not (p.spool / "queue" / f"{orphan}.st").exists())
    assert (p.spool / "queue" / "notes.st").exists()
    qid = send(p, "sender@example.org", "alice@localhost", BODY)
    assert wait_for(lambda: sent_lines(p, qid, "alice@localhost")), log_lines(p, qid)


# ---- the Maildir directory cache --------------------------------------------------------------

def _first_delivery(p, marker=b"CACHE-FIRST"):
    qid = send(p, "sender@example.org", "alice@localhost",
               BODY.replace(b"Subject: ", b"X-Marker: " + marker + b"\r\nSubject: "))
    assert wait_for(lambda: sent_lines(p, qid, "alice@localhost")), log_lines(p, qid)
    assert len(p.messages("alice@localhost")) == 1
    return qid


def _second_delivery(p, marker=b"CACHE-SECOND"):
    return send(p, "sender@example.org", "alice@localhost",
                BODY.replace(b"Subject: ", b"X-Marker: " + marker + b"\r\nSubject: "))


def test_cache_maildir_renamed_away_next_message_goes_to_a_fresh_one(petrel):
    _first_delivery(petrel)
    md = petrel.maildir("alice@localhost")
    moved = md.with_name("alice.moved")
    os.rename(md, moved)
    qid = _second_delivery(petrel)
    assert wait_for(lambda: sent_lines(petrel, qid, "alice@localhost")), log_lines(petrel, qid)
    assert wait_for(lambda: len(petrel.messages("alice@localhost")) == 1)
    assert copies_of(petrel.mail_root, b"CACHE-SECOND") == [
        str(md / "new" / maildir_names(petrel, "alice@localhost")[0])]
    assert len(list((moved / "new").iterdir())) == 1  # only the first
    assert copies_of(moved, b"CACHE-SECOND") == []
    assert (md / "cur").is_dir() and (md / "tmp").is_dir()


def test_cache_domain_renamed_away_next_message_goes_to_a_fresh_one(petrel):
    _first_delivery(petrel)
    dom = petrel.mail_root / "localhost"
    moved = petrel.mail_root / "localhost.moved"
    os.rename(dom, moved)
    qid = _second_delivery(petrel)
    assert wait_for(lambda: sent_lines(petrel, qid, "alice@localhost")), log_lines(petrel, qid)
    assert wait_for(lambda: len(petrel.messages("alice@localhost")) == 1)
    assert copies_of(moved, b"CACHE-SECOND") == []
    assert len(copies_of(dom, b"CACHE-SECOND")) == 1
    assert len(list((moved / "alice" / "new").iterdir())) == 1


def test_cache_maildir_replaced_by_a_directory_of_the_same_name(petrel):
    """Removed and made again (a new inode at the same path): the new one gets the mail."""
    _first_delivery(petrel)
    md = petrel.maildir("alice@localhost")
    shutil.rmtree(md)
    for sub in ("tmp", "new", "cur"):
        (md / sub).mkdir(parents=True)
    qid = _second_delivery(petrel)
    assert wait_for(lambda: sent_lines(petrel, qid, "alice@localhost")), log_lines(petrel, qid)
    assert wait_for(lambda: len(petrel.messages("alice@localhost")) == 1)
    assert b"CACHE-SECOND" in petrel.messages("alice@localhost")[0]


def test_cache_new_replaced_by_a_symlink_nothing_written_through_it(petrel_factory, tmp_path):
    p = petrel_factory(retry_min="1h", retry_max="1h")
    _first_delivery(p)
    target = tmp_path / "elsewhere"
    target.mkdir()
    md = p.maildir("alice@localhost")
    os.rename(md / "new", md / "new.saved")
    os.symlink(target, md / "new")
    qid = _second_delivery(p)
    # not through the symlink: the delivery fails, and the queue takes the message over
    assert wait_log(p, rf"{qid}: from=<[^>]*>, size=\d+, nrcpt=1 \(queue active\)$"), \
        log_lines(p, qid)
    assert wait_log(p, rf"{qid}: to=<alice@localhost>, relay=local, .*status=deferred"), \
        log_lines(p, qid)
    assert wait_for(lambda: in_queue(p, qid)), p.queue_files()
    assert list(target.iterdir()) == []
    assert list((md / "new.saved").iterdir()) != [] and \
        copies_of(md / "new.saved", b"CACHE-SECOND") == []
    assert copies_of(p.mail_root, b"CACHE-SECOND") == []
    assert copies_of(target, b"CACHE-SECOND") == []
    # a queue retry takes the same (uncached) path: still nothing through it
    wait_attempted(p, qid)
    assert list(target.iterdir()) == []

    # the symlink gone: the flush delivers it into a real new/
    (md / "new").unlink()
    assert cli_queue(p, "flush").returncode == 0
    assert wait_for(lambda: len(p.messages("alice@localhost")) == 1, timeout=20), \
        log_lines(p, qid)
    assert not (md / "new").is_symlink()
    assert b"CACHE-SECOND" in p.messages("alice@localhost")[0]
    assert wait_queue_empty(p), p.queue_files()
    assert list(target.iterdir()) == []
    assert len(copies_of(p.mail_root, b"CACHE-SECOND")) == 1


def _symlink_level(p, level):
    """The path component of alice's Maildir that the test turns into a symlink."""
    md = p.maildir("alice@localhost")
    return {"new": md / "new", "maildir": md, "domain": md.parent}[level]


@pytest.mark.parametrize("cached", [
    False,
    True,
], ids=["uncached", "cached"])
@pytest.mark.parametrize("level", ["new", "maildir", "domain"])
def test_symlink_in_the_maildir_path_is_never_followed(petrel_factory, level, cached):
    """A component of the Maildir path (new/, the Maildir, the domain) is a symlink to a
    real directory of the same layout.  Looked up component by component with O_NOFOLLOW,
    the path is refused: the delivery is deferred, the queue keeps the message.  Cached
    or not (the cached case: the directory was delivered into, then renamed, and the
    symlink to it took its old name), nothing may be written through the symlink."""
    p = petrel_factory(retry_min="1h", retry_max="1h")
    path = _symlink_level(p, level)
    real = path.with_name(path.name + ".real")
    if cached:
        _first_delivery(p)
        os.rename(path, real)
        assert len(copies_of(real, b"CACHE-FIRST")) == 1
    else:
        md = p.maildir("alice@localhost")
        for sub in ("tmp", "new", "cur"):
            (md / sub).mkdir(parents=True)
        os.rename(path, real)
    os.symlink(real.name, path)
    qid = _second_delivery(p)
    assert wait_log(p, rf"{qid}: to=<alice@localhost>, relay=local, .*status=(sent|deferred)"), \
        log_lines(p, qid)
    time.sleep(0.5)
    assert copies_of(real, b"CACHE-SECOND") == [], (
        f"delivered through the symlink {path.name} -> {real.name}:\n"
        + "\n".join(log_lines(p, qid)))
    assert wait_log(p, rf"{qid}: from=<[^>]*>, size=\d+, nrcpt=1 \(queue active\)$"), \
        log_lines(p, qid)
    assert wait_for(lambda: in_queue(p, qid)), p.queue_files()
    assert path.is_symlink()


# ---- under load ----------------------------------------------------------------------------

def copies_wanted(marker):
    """Every fifth message of a load thread goes to two mailboxes."""
    return 2 if int(marker.rsplit("-M", 1)[1]) % 5 == 4 else 1


def test_kill9_under_load_every_acknowledged_message_exactly_once(petrel_factory):
    """Threads send small all-local messages (journaled); kill -9 in the middle.  After the
    restart every acknowledged message is in each of its mailboxes once, and none twice."""
    p = petrel_factory()
    mark_re = re.compile(rb"X-Marker: (J\d+-T\d+-M\d+)\n")
    all_acked = {}

    def counts():
        return marker_counts(p.mail_root, mark_re)

    for rnd, delay in enumerate([0.4, 1.0]):
        def rcpts(t, marker):
            # every fifth message to a second local mailbox
            return [f"load{t % 3}@localhost"] + (
                ["bob@example.test"] if copies_wanted(marker) == 2 else [])

        acked = load_then_kill9(p, f"J{rnd}", rcpts, delay, min_acked=20)
        all_acked.update(acked)
        p.start()
        assert segments(p) == [], segments(p)  # read and removed before the server listens
        assert spool_tmp_files(p) == []

        def complete():
            c = counts()
            return all(c[k] >= copies_wanted(k) for k in all_acked)

        ok = wait_for(complete, timeout=90, interval=0.2)
        c = counts()
        missing = sorted(k for k in all_acked if c[k] < copies_wanted(k))
        assert ok, f"round {rnd}: lost {missing[:5]} of {len(all_acked)}; " + str(
            recovered_counts(p))
        assert wait_queue_empty(p, timeout=30), p.queue_files()
        time.sleep(2.5)  # the queue's retries after the restart
        # (a message the kill cut off before its 250 may be there too, but also only once)
        c = counts()
        twice = {k: v for k, v in c.items() if v > copies_wanted(k)}
        assert not twice, f"round {rnd}: delivered more than once: {list(twice.items())[:5]}"
    for f in all_maildir_files(p.mail_root):
        _head, body = split_prepended(f.read_bytes())
        assert body.endswith(b" \n") and b"X-Marker: J" in body, body[:200]
    assert p.stop() == 0
    assert list(journal_dir(p).iterdir()) == []


# ---- a Maildir that cannot be written: from the journal to the queue ------------------------

def test_unwritable_maildir_journal_to_queue_then_delivered_once_after_flush(petrel_factory):
    p = petrel_factory(retry_min="1h", retry_max="1h")
    blocker = block_maildir(p, "bob@localhost")
    qid = send(p, "sender@example.org", "bob@localhost", BODY)  # still a 250
    assert wait_log(p, rf"{qid}: from=<sender@example\.org>, size={len(BODY)}, nrcpt=1 "
                       r"\(queue active\)$"), log_lines(p, qid)
    # at the commit's worker, then the queue's first attempt
    assert wait_for(lambda: len(re.findall(
        rf"{qid}: to=<bob@localhost>, relay=local, .*status=deferred", p.log())) >= 2), \
        log_lines(p, qid)
    assert in_queue(p, qid), p.queue_files()
    # in the queue now: the journal marks it finished
    assert wait_for(lambda: [r[1] for r in journal_records(p) if r[2] == qid]
                    == ["PJM1", "PJD1"]), journal_records(p)
    assert (p.spool / "queue" / qid).read_bytes().endswith(BODY)
    assert blocker.read_text() == "not a directory\n"
    assert not any(p.maildir("bob@localhost").glob("tmp/*")), "a tmp file was left behind"
    wait_attempted(p, qid)

    blocker.unlink()
    flush_delivers_once(p, qid, "bob@localhost", BODY_LF)
    assert p.stop() == 0
    assert list(journal_dir(p).iterdir()) == []  # no segment stays behind
    # and a start after it queues nothing from the journal
    p.start()
    time.sleep(1)
    assert recovered_counts(p) == []
    assert len(p.messages("bob@localhost")) == 1


def test_unwritable_maildir_kill9_after_it_was_queued_is_delivered_once(petrel_factory):
    """Queued from the journal, then a crash: the queue file and the journal both hold it;
    the start queues it once (the queue file is there) and it is delivered once."""
    p = petrel_factory(retry_min="1h", retry_max="1h")
    blocker = block_maildir(p, "bob@localhost")
    qid = send(p, "sender@example.org", "bob@localhost", BODY)
    assert wait_log(p, rf"{qid}: .*\(queue active\)$"), log_lines(p, qid)
    assert wait_for(lambda: in_queue(p, qid))
    p.kill9()
    # the mark may or may not be written; take it out (a crash before it)
    (seg,) = segments(p)
    recs = parse_records((journal_dir(p) / seg).read_bytes())
    (journal_dir(p) / seg).write_bytes(b"".join(msg_rec(q, pl) for m, q, pl in recs
                                                if m == "PJM1"))
    blocker.unlink()
    p.start()
    assert segments(p) == []
    msgs = p.wait_messages("bob@localhost", 1, timeout=20)
    assert len(msgs) == 1, log_lines(p, qid)
    assert wait_queue_empty(p), p.queue_files()
    time.sleep(1.5)
    assert len(p.messages("bob@localhost")) == 1
    assert split_prepended(p.messages("bob@localhost")[0])[1] == BODY_LF
    assert len(sent_lines(p, qid, "bob@localhost")) == 1, log_lines(p, qid)


def test_neither_delivered_nor_queued_stays_in_memory_and_the_journal_until_it_can_be(
        petrel_factory):
    """After the 250 the Maildir cannot be written and neither can the queue (spool/tmp is
    gone under the running server): the message is kept, in memory and in the journal, and
    tried again every retry_min; once the Maildir is writable it is delivered, once, and
    marked finished."""
    p = petrel_factory(retry_min="1s", retry_max="1s")
    blocker = block_maildir(p, "bob@localhost")
    (p.spool / "tmp").rmdir()  # the server's open descriptor now names a removed directory
    qid = send(p, "sender@example.org", "bob@localhost", BODY)
    stuck = rf"{qid}: cannot deliver or queue \(No such file or directory\); kept in the journal"
    assert wait_log(p, stuck), log_lines(p, qid)
    assert wait_for(lambda: len(re.findall(stuck, p.log())) >= 2, timeout=10), log_lines(p, qid)
    assert not in_queue(p, qid) and p.messages("bob@localhost") == []
    assert [m for _s, m, q, _pl in journal_records(p) if q == qid] == ["PJM1"]
    blocker.unlink()
    msgs = p.wait_messages("bob@localhost", 1, timeout=20)
    assert len(msgs) == 1, log_lines(p, qid)
    assert split_prepended(msgs[0])[1] == BODY_LF
    assert wait_for(lambda: [m for _s, m, q, _pl in journal_records(p) if q == qid] == ["PJM1", "PJD1"])
    time.sleep(2.5)  # retries would have come by now
    assert len(p.messages("bob@localhost")) == 1
    assert len(sent_lines(p, qid, "bob@localhost")) == 1, log_lines(p, qid)
    assert not in_queue(p, qid)
