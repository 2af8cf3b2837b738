"""The queue commands (`petrel queue list|show|flush|delete`, `mailq`) and
`petrel passwd`.

A message is kept deferred by making the recipient's Maildir path a regular
file (local delivery fails temporarily); retry_min = retry_max = 1h, so only
a flush can make a retry happen within a test.

A small message acknowledged in the spool journal has no queue file while its
delivery runs; `queue list` / `show` find it in the journal's segments and
show it as in delivery.  A relay destination that takes the message and holds
back its reply to the final dot keeps such a delivery running."""
import json
import os
import re
import socketserver
import subprocess
import threading
import time
import warnings

import pytest

from conftest import PETREL_BIN
from mailtest import cli_queue, send, wait_for
from test_journal import done_rec, journal_dir, msg_rec, new_id, queue_image, write_segment

QUEUED_SIZE_RE = re.compile(r"-- (\d+) Kbytes in (\d+) Requests?\.")


def cli(*args, input=None, timeout=30, argv0=None):
    cmd = [str(argv0)] if argv0 else [str(PETREL_BIN)]
    return subprocess.run(cmd + list(args), input=input, capture_output=True, text=True,
                          timeout=timeout)


def queue(p, *args):
    return cli("queue", *args, "-c", str(p.conf_path))


def queue_json(p):
    r = queue(p, "list", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def entry(p, qid):
    return next((e for e in queue_json(p) if e["id"] == qid), None)


def block(p, addr):
    """Makes addr's Maildir a regular file: its deliveries are deferred until unblocked."""
    user, domain = addr.split("@")
    (p.mail_root / domain).mkdir(parents=True, exist_ok=True)
    blocker = p.mail_root / domain / user
    blocker.write_text("not a directory\n")
    return blocker


def deferred(p, rcpts=("bob@example.test",), sender="sender@example.org", subject="stuck"):
    """Sends a message whose delivery to bob@example.test is deferred; returns its id."""
    qid = send(p, sender, list(rcpts), f"Subject: {subject}\r\n\r\nbody\r\n")
    e = wait_for(lambda: (entry(p, qid) or {}).get("attempts", 0) >= 1 and entry(p, qid))
    assert e, (queue_json(p), p.log())
    return qid


@pytest.fixture
def slow(petrel_factory):
    """A server that retries only after an hour."""
    p = petrel_factory(retry_min="1h", retry_max="1h")
    block(p, "bob@example.test")
    return p


def test_list_shows_a_deferred_message(slow):
    sender = '"odd\\"one"@example.org'  # a quote inside: JSON must escape it
    qid = deferred(slow, rcpts=["alice@example.test", "bob@example.test"], sender=sender)
    # alice got hers; bob's is what remains
    assert slow.wait_messages("alice@example.test", 1)

    r = queue(slow, "list")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("-Queue ID-"), r.stdout
    m = re.search(rf"(?m)^{qid} +(\d+) \w{{3}} \w{{3}} [ \d]\d \d\d:\d\d:\d\d +(.+)$", r.stdout)
    assert m, r.stdout
    assert m.group(2) == sender
    assert re.search(r"(?m)^ +\(4\.2\.0 .+\)$", r.stdout), r.stdout
    assert re.search(r"(?m)^ +bob@example\.test$", r.stdout), r.stdout
    assert "alice@example.test" not in r.stdout  # done: not listed
    assert re.search(r"(?m)^-- 1 Kbytes in 1 Request\.$", r.stdout), r.stdout

    e = entry(slow, qid)
    qfile = (slow.spool / "queue" / qid).read_bytes()
    assert e["size"] == len(qfile) - (qfile.index(b"\n\n") + 2) == int(m.group(1))
    assert e["size"] == len(b"Subject: stuck\r\n\r\nbody\r\n")
    assert abs(e["arrival"] - time.time()) < 120
    assert e["sender"] == sender
    assert e["status"] == "deferred"
    assert e["attempts"] >= 1
    assert e["last_error"].startswith("4.2.0"), e
    assert e["recipients"] == [
        {"address": "alice@example.test", "original": "alice@example.test", "done": True,
         "failed": False},
        {"address": "bob@example.test", "original": "bob@example.test", "done": False,
         "failed": False},
    ]


def test_show_prints_envelope_and_message(slow):
    qid = deferred(slow)
    r = queue(slow, "show", qid.lower())  # ids are case-insensitive on the command line
    assert r.returncode == 0, r.stderr
    assert f"*** ENVELOPE RECORDS {qid} ***" in r.stdout
    assert "sender: <sender@example.org>\n" in r.stdout
    assert "recipient: <bob@example.test> pending\n" in r.stdout
    assert re.search(r"(?m)^last_error: 4\.2\.0 ", r.stdout), r.stdout
    # the message as stored: wire form, CRLF line ends
    raw = subprocess.run([str(PETREL_BIN), "queue", "show", qid, "-c", str(slow.conf_path)],
                         capture_output=True, timeout=30).stdout
    assert raw.endswith(f"*** MESSAGE CONTENTS {qid} ***\n".encode()
                        + b"Subject: stuck\r\n\r\nbody\r\n"), raw


@pytest.mark.parametrize("bad", ["0123456789ABCDEF", "../../etc/passwd", "XYZ", ""])
def test_show_unknown_id(slow, bad):
    r = queue(slow, "show", bad)
    assert r.returncode == 1
    assert "no such message" in r.stderr
    assert r.stdout == ""


def test_delete_removes_it(slow):
    qid = deferred(slow)
    assert (slow.spool / "queue" / f"{qid}.st").exists()
    r = queue(slow, "delete", qid)
    assert r.returncode == 0, r.stderr
    assert "Deleted: 1 message" in r.stdout
    assert not (slow.spool / "queue" / qid).exists()
    assert not (slow.spool / "queue" / f"{qid}.st").exists()
    r = queue(slow, "list")
    assert r.returncode == 0 and r.stdout == "Mail queue is empty\n", r.stdout
    assert queue_json(slow) == []
    # gone for good: another delete fails, and a flush of the server does not resurrect it
    r = queue(slow, "delete", qid)
    assert r.returncode != 0 and "no such message" in r.stderr
    (slow.mail_root / "example.test" / "bob").unlink()
    assert queue(slow, "flush").returncode == 0
    time.sleep(1)
    assert slow.messages("bob@example.test") == []
    assert slow.proc.poll() is None


def test_delete_several_and_all(slow):
    ids = [deferred(slow, subject=f"m{i}") for i in range(3)]
    r = queue(slow, "delete", ids[0], "0123456789ABCDEF")
    assert r.returncode != 0  # one of them was unknown
    assert "Deleted: 1 message" in r.stdout
    assert {e["id"] for e in queue_json(slow)} == set(ids[1:])
    r = queue(slow, "delete", "ALL")
    assert r.returncode == 0, r.stderr
    assert "Deleted: 2 messages" in r.stdout
    assert queue_json(slow) == []


def test_flush_delivers_after_the_cause_is_fixed(slow):
    qid = deferred(slow)
    (slow.mail_root / "example.test" / "bob").unlink()
    time.sleep(1.5)
    assert slow.messages("bob@example.test") == [], "retried without a flush"
    r = queue(slow, "flush")
    assert r.returncode == 0, r.stderr
    msgs = slow.wait_messages("bob@example.test", 1, timeout=10)
    assert len(msgs) == 1, slow.log()
    assert msgs[0].endswith(b"Subject: stuck\n\nbody\n")
    assert wait_for(lambda: queue_json(slow) == []), queue_json(slow)
    assert re.search(rf"{qid}: to=<bob@example.test>.*status=sent", slow.log())


def test_flush_without_a_server(petrel_factory):
    p = petrel_factory(start=False)
    p.write_conf()
    r = queue(p, "flush")
    assert r.returncode == 1
    assert "no petrel server" in r.stderr
    # a stale pid file left by a killed server, naming a live process that is not petrel
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        p.spool.mkdir(parents=True, exist_ok=True)
        (p.spool / "petrel.pid").write_text(f"{bystander.pid}\n")
        r = queue(p, "flush")
        assert r.returncode == 1, r.stderr
        time.sleep(0.2)
        assert bystander.poll() is None, "SIGUSR1 went to a process that is not petrel"
    finally:
        bystander.kill()
        bystander.wait()
    # and one naming a process that is gone
    (p.spool / "petrel.pid").write_text(f"{bystander.pid}\n")
    assert queue(p, "flush").returncode == 1


def test_incoming_messages_are_listed(petrel_factory):
    p = petrel_factory(start=False)
    p.write_conf()
    assert queue(p, "list").stdout == "Mail queue is empty\n"
    r = cli("sendmail", "-c", str(p.conf_path), "-f", "me@example.org", "a@example.test",
            input="Subject: waiting\n\nx\n")
    assert r.returncode == 0, r.stderr
    [e] = queue_json(p)
    assert e["status"] == "incoming" and e["sender"] == "me@example.org"
    assert e["recipients"][0]["address"] == "a@example.test"
    r = queue(p, "list")
    assert re.search(rf"(?m)^{e['id']} ", r.stdout) and "incoming" in r.stdout, r.stdout
    r = queue(p, "show", e["id"])
    assert r.returncode == 0 and "status: incoming" in r.stdout, r.stdout
    p.start()
    assert p.wait_messages("a@example.test", 1)
    assert wait_for(lambda: queue_json(p) == [])


def test_mailq_and_sendmail_bp(slow, tmp_path):
    qid = deferred(slow)
    link = tmp_path / "mailq"
    link.symlink_to(PETREL_BIN)
    r = cli("-c", str(slow.conf_path), argv0=link)
    assert r.returncode == 0, r.stderr
    assert re.search(rf"(?m)^{qid} ", r.stdout), r.stdout
    r = cli("sendmail", "-bp", "-c", str(slow.conf_path))
    assert r.returncode == 0 and re.search(rf"(?m)^{qid} ", r.stdout), r.stdout


@pytest.mark.parametrize("args", [[], ["frobnicate"], ["show"], ["delete"], ["list", "x"],
                                  ["flush", "--json"]])
def test_queue_usage(petrel_factory, args):
    p = petrel_factory(start=False)
    p.write_conf()
    r = queue(p, *args)
    assert r.returncode == 2
    assert "usage:" in r.stderr


# ---- messages in delivery from the journal ----------------------------------------------------

JOURNAL_NOTE = "(in delivery, held in the spool journal)"


def listed_ids(p):
    r = cli_queue(p, "list", "--json")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    return [e["id"] for e in json.loads(r.stdout)]


class StallingSmtp:
    """An SMTP server on 127.0.0.1 that takes a whole message and keeps its reply to the final
    dot back until release() (then 250): the client's delivery runs until then."""

    def __init__(self):
        self.release_ev = threading.Event()
        self.got_data = threading.Event()
        self.messages = []
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                self.request.settimeout(60)
                self.wfile.write(b"220 stall.test ESMTP\r\n")
                while True:
                    line = self.rfile.readline()
                    if not line:
                        return
                    cmd = line[:4].upper()
                    if cmd in (b"EHLO", b"HELO"):
                        self.wfile.write(b"250 stall.test\r\n")
                    elif cmd == b"DATA":
                        self.wfile.write(b"354 go ahead\r\n")
                        data = b""
                        while not data.endswith(b"\r\n.\r\n"):
                            chunk = self.rfile.readline()
                            if not chunk:
                                return
                            data += chunk
                        outer.messages.append(data)
                        outer.got_data.set()
                        outer.release_ev.wait(60)
                        self.wfile.write(b"250 2.0.0 taken at last\r\n")
                    elif cmd == b"QUIT":
                        self.wfile.write(b"221 bye\r\n")
                        return
                    else:  # MAIL, RCPT, RSET, NOOP
                        self.wfile.write(b"250 ok\r\n")

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def release(self):
        self.release_ev.set()

    def close(self):
        self.release_ev.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stalling():
    s = StallingSmtp()
    yield s
    s.close()


def test_message_in_delivery_from_the_journal_is_listed(petrel_factory, stalling):
    """A small relayed message goes through the journal and is delivered from memory: while the
    remote server holds its reply back, it has no queue file, and list / show still find it."""
    p = petrel_factory(relayhost=f"[127.0.0.1]:{stalling.port}", retry_min="1h",
                       retry_max="1h")
    body = "Subject: slow remote\r\n\r\nheld by the remote server\r\n"
    qid = send(p, "sender@example.org", ["carol@remote.test"], body)
    assert stalling.got_data.wait(20), p.log()[-3000:]
    assert not (p.spool / "queue" / qid).exists(), p.queue_files()  # only the journal has it

    r = cli_queue(p, "list")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    m = re.search(rf"(?m)^{qid} +(\d+) \w{{3}} \w{{3}} [ \d]\d \d\d:\d\d:\d\d +(.+)\n"
                  rf" +(.+)\n +(.+)\n", r.stdout)
    assert m, r.stdout
    assert int(m.group(1)) == len(body.encode())
    assert m.group(2) == "sender@example.org"
    assert m.group(3) == JOURNAL_NOTE
    assert m.group(4) == "carol@remote.test"
    assert re.search(r"(?m)^-- 1 Kbytes in 1 Request\.$", r.stdout), r.stdout

    [e] = json.loads(cli_queue(p, "list", "--json").stdout)
    assert e["id"] == qid and e["status"] == "delivering", e
    assert e["size"] == len(body.encode()) and e["attempts"] == 0 and e["last_error"] is None
    assert e["recipients"] == [{"address": "carol@remote.test", "original": "carol@remote.test",
                                "done": False, "failed": False}]

    r = subprocess.run([str(PETREL_BIN), "queue", "show", qid, "-c", str(p.conf_path)],
                       capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert b"status: delivering (held in the spool journal)\n" in r.stdout, r.stdout
    assert b"recipient: <carol@remote.test> pending\n" in r.stdout
    assert r.stdout.endswith(f"*** MESSAGE CONTENTS {qid} ***\n".encode() + body.encode())

    r = cli_queue(p, "delete", qid)
    assert r.returncode == 1, r.stdout
    assert f"{qid}: message is being delivered" in r.stderr and "try again" in r.stderr, r.stderr
    assert "Deleted: 0 messages" in r.stdout
    r = cli_queue(p, "delete", "ALL")
    assert r.returncode == 0 and "Deleted: 0 messages" in r.stdout, r.stdout
    assert "1 message being delivered from the spool journal not deleted" in r.stderr, r.stderr
    assert listed_ids(p) == [qid]  # delete took nothing from the delivery

    stalling.release()
    assert wait_for(lambda: re.search(rf"{qid}: to=<carol@remote\.test>.*status=sent", p.log())), \
        p.log()[-3000:]
    assert wait_for(lambda: listed_ids(p) == []), cli_queue(p, "list").stdout
    assert cli_queue(p, "list").stdout == "Mail queue is empty\n"
    r = cli_queue(p, "show", qid)
    assert r.returncode == 1 and "no such message" in r.stderr
    assert len(stalling.messages) == 1 and b"held by the remote server" in stalling.messages[0]


def _hand_journal(p):
    """Segments as the server leaves them: messages with and without their finished mark (in
    the same or a later segment), one that also has a queue file, a torn record at the end;
    and files that are not segments.  Returns the ids {name: id}."""
    ids = {k: new_id() for k in ("A", "B", "C", "D", "E", "F")}
    arrival = int(time.time())

    def rec(k, rcpt=None):
        return msg_rec(ids[k], queue_image(ids[k], rcpt or f"{k.lower()}@remote.test",
                                           f"Subject: {k}\r\n\r\nbody {k}\r\n".encode(),
                                           arrival))

    write_segment(p, 1, rec("A") + rec("B") + done_rec(ids["B"]) + rec("C") + rec("F"))
    torn = rec("E")
    write_segment(p, 2, rec("D", ["d1@remote.test", "d2@remote.test"]) + done_rec(ids["C"])
                  + torn[:len(torn) - 5])
    (journal_dir(p) / "not-a-segment").write_bytes(rec("E"))
    (journal_dir(p) / "000000000000000G").write_bytes(rec("E"))
    q = p.spool / "queue"
    q.mkdir(parents=True, exist_ok=True)
    # F was queued (its delivery failed) and the server had not yet written its mark
    (q / ids["F"]).write_bytes(queue_image(ids["F"], "f@remote.test", b"Subject: F\r\n\r\nx\r\n",
                                           arrival))
    return ids


def test_hand_written_journal_unfinished_messages_are_listed(petrel_factory):
    p = petrel_factory(start=False)
    p.write_conf()
    ids = _hand_journal(p)
    r = cli_queue(p, "list", "--json")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    entries = json.loads(r.stdout)
    # queue/ first, then the journal's by id; B and C are finished, E's record is torn
    assert [(e["id"], e["status"]) for e in entries] == [
        (ids["F"], "queued"), (ids["A"], "delivering"), (ids["D"], "delivering")], entries
    d = entries[2]
    assert [x["address"] for x in d["recipients"]] == ["d1@remote.test", "d2@remote.test"]
    assert d["size"] == len(b"Subject: D\r\n\r\nbody D\r\n") and d["sender"] == "sender@example.org"

    r = cli_queue(p, "list")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    for k in ("A", "D", "F"):
        assert re.search(rf"(?m)^{ids[k]} ", r.stdout), (k, r.stdout)
    for k in ("B", "C", "E"):
        assert ids[k] not in r.stdout, (k, r.stdout)
    assert r.stdout.count(JOURNAL_NOTE) == 2, r.stdout
    assert re.search(r"(?m)^-- 1 Kbytes in 3 Requests\.$", r.stdout), r.stdout

    r = cli_queue(p, "show", ids["A"].lower())
    assert r.returncode == 0, r.stderr
    assert "status: delivering (held in the spool journal)\n" in r.stdout
    assert r.stdout.endswith(f"*** MESSAGE CONTENTS {ids['A']} ***\nSubject: A\n\nbody A\n"), \
        r.stdout  # (text mode: CRLF read as LF)
    for k in ("B", "C", "E"):
        r = cli_queue(p, "show", ids[k])
        assert r.returncode == 1 and "no such message" in r.stderr, (k, r.stdout, r.stderr)

    r = cli_queue(p, "delete", ids["A"], ids["B"])
    assert r.returncode == 1
    assert f"{ids['A']}: message is being delivered" in r.stderr, r.stderr
    assert f"{ids['B']}: no such message" in r.stderr, r.stderr
    r = cli_queue(p, "delete", "ALL")
    assert r.returncode == 0 and "Deleted: 1 message\n" in r.stdout, (r.stdout, r.stderr)  # F
    assert "2 messages being delivered from the spool journal not deleted" in r.stderr
    left = listed_ids(p)
    assert ids["A"] in left and ids["D"] in left, left
    # the CLI never writes the journal
    assert sorted(f.name for f in journal_dir(p).iterdir()) == [
        "0000000000000001", "0000000000000002", "000000000000000G", "not-a-segment"]


def test_list_while_segments_come_and_go(petrel_factory):
    """The server appends to segments (a record half written) and removes finished ones while
    `queue list` reads them: never an error, never a torn or finished message listed."""
    p = petrel_factory(start=False)
    p.write_conf()
    keep = new_id()
    arrival = int(time.time())
    write_segment(p, 1, msg_rec(keep, queue_image(keep, "k@remote.test", b"x\r\n", arrival)))
    stop = threading.Event()
    errors = []

    def churn():
        seq = 2
        try:
            while not stop.is_set():
                qid = new_id()
                rec = msg_rec(qid, queue_image(qid, "c@remote.test", b"y" * 3000 + b"\r\n",
                                               arrival))
                path = journal_dir(p) / f"{seq:016x}"
                with open(path, "wb", buffering=0) as f:
                    for i in range(0, len(rec), 700):  # appended piece by piece
                        f.write(rec[i:i + 700])
                    f.write(done_rec(qid))
                os.unlink(path)
                seq += 1
        except Exception as e:  # noqa: BLE001 (reported by the test)
            errors.append(e)

    t = threading.Thread(target=churn, daemon=True)
    t.start()
    try:
        deadline = time.time() + 3
        runs = 0
        while time.time() < deadline:
            r = cli_queue(p, "list", "--json")
            assert r.returncode == 0 and r.stderr == "", r.stderr
            entries = json.loads(r.stdout)
            assert keep in [e["id"] for e in entries], entries
            # at most the one whose record is whole and whose mark is not written yet
            others = [e for e in entries if e["id"] != keep]
            assert len(others) <= 1, entries
            for e in others:
                assert e["status"] == "delivering" and e["size"] == 3002, e
                assert [x["address"] for x in e["recipients"]] == ["c@remote.test"], e
            runs += 1
    finally:
        stop.set()
        t.join(10)
    assert not errors, errors
    assert runs > 5


# ---- petrel passwd ---------------------------------------------------------------------------

HASH_RE = re.compile(r"\{SHA512-CRYPT\}(\$6\$[./0-9A-Za-z]{1,16}\$[./0-9A-Za-z]{86})")


def check_crypt(password, hashed):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt
    return crypt.crypt(password, hashed) == hashed


@pytest.mark.parametrize("line,password", [
    ("secret\n", "secret"),
    ("with spaces and \u00fcml\u00e4uts\r\n", "with spaces and \u00fcml\u00e4uts"),
    ("no-newline", "no-newline"),
    ("first line\nsecond line\n", "first line"),
])
def test_passwd_hash_verifies(line, password):
    r = cli("passwd", input=line)
    assert r.returncode == 0, r.stderr
    m = HASH_RE.fullmatch(r.stdout.rstrip("\n"))
    assert m and r.stdout.endswith("\n"), r.stdout
    assert check_crypt(password, m.group(1))
    assert not check_crypt(password + "x", m.group(1))


def test_passwd_salts_differ():
    a = cli("passwd", input="same\n").stdout
    b = cli("passwd", input="same\n").stdout
    assert a != b and a.startswith("{SHA512-CRYPT}$6$")


@pytest.mark.parametrize("line", ["", "\n", "\r\n"])
def test_passwd_empty_is_refused(line):
    r = cli("passwd", input=line)
    assert r.returncode == 1
    assert r.stdout == "" and "empty" in r.stderr


def test_passwd_with_openssl(tmp_path):
    """The salt from the hash reproduces it with `openssl passwd -6` (another implementation)."""
    r = cli("passwd", input="s3cret\n")
    m = HASH_RE.fullmatch(r.stdout.strip())
    assert m, r.stdout
    salt = m.group(1).split("$")[2]
    try:
        o = subprocess.run(["openssl", "passwd", "-6", "-salt", salt, "-stdin"],
                           input="s3cret\n", capture_output=True, text=True, timeout=20)
    except FileNotFoundError:
        pytest.skip("no openssl CLI")
    assert o.returncode == 0, o.stderr
    assert o.stdout.strip() == m.group(1)


# ---- spare queue files (finished files kept to be rewritten) ---------------------------

def test_spares_at_start_only_canonical_names_kept(slow):
    """Finished queue files are kept as queue/.spare.N; at start, a name the server would not
    have made (leading zero, not a number) is removed, and `petrel queue` never lists one."""
    p = slow
    qid = deferred(p)
    p.stop()
    q = p.spool / "queue"
    for name in (".spare.7", ".spare.07", ".spare.x1", ".spare."):
        (q / name).write_bytes(b"old contents\n")
    p.start()
    assert wait_for(lambda: not (q / ".spare.07").exists())
    assert sorted(n.name for n in q.iterdir() if n.name.startswith(".spare.")) == [".spare.7"]
    assert [e["id"] for e in queue_json(p)] == [qid]


def test_queue_file_naming_another_message_is_removed_at_start(slow):
    """A spare rewritten for message B whose rename lost in a crash left B's contents under
    the finished message A's name: B was never acknowledged, A was finished; the file and its
    status file are removed, not delivered."""
    p = slow
    a = deferred(p, subject="A")
    b = deferred(p, subject="B")
    p.stop()
    q = p.spool / "queue"
    (q / a).write_bytes((q / b).read_bytes())  # B's contents under A's name
    (q / b).unlink()
    (q / f"{b}.st").unlink()
    assert (q / f"{a}.st").exists()
    p.start()
    assert wait_for(lambda: f"{a}: queue file holds message {b} (never acknowledged); removed"
                    in p.log(), timeout=15), p.log()[-2000:]
    assert not (q / a).exists() and not (q / f"{a}.st").exists()
    assert queue_json(p) == []


def test_list_with_a_fifo_in_incoming_does_not_hang(petrel_factory):
    """incoming/ takes files from any local user: a FIFO named like a message there must
    not block `petrel queue list` (it waits for a writer that never comes)."""
    p = petrel_factory(start=False)
    p.write_conf()
    inc = p.spool / "incoming"
    inc.mkdir(parents=True, exist_ok=True)
    os.mkfifo(inc / "00000000DEADBEEF")
    r = cli("queue", "list", "-c", str(p.conf_path), timeout=20)
    assert "00000000DEADBEEF" in r.stderr and "not a regular file" in r.stderr, r.stderr
