"""Durability and signals: kill -9 after 250s loses nothing, SIGTERM mid-message
keeps nothing of it, a restart picks up the queue, SIGHUP reloads safely."""
import re
import signal
import smtplib
import threading
import time

from conftest import recv_reply, recv_replies
from mailtest import (marker_counts, all_maildir_files, in_queue, send, smtp, spool_tmp_files,
                      split_prepended, wait_for, wait_log, wait_queue_empty)

MARK_RE = re.compile(rb"X-Marker: (R\d+-T\d+-M\d+)\n")


class Load:
    """Threads sending mail as fast as they can; records each acknowledged marker."""

    def __init__(self, p, rnd, nthreads=8):
        self.p = p
        self.rnd = rnd
        self.acked = {}  # marker -> queue id, only after the 250 arrived
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(t,), daemon=True)
                        for t in range(nthreads)]

    def run(self, t):
        m = 0
        while not self.stop.is_set():
            try:
                with smtplib.SMTP(self.p.host, self.p.port, timeout=10) as s:
                    s.ehlo(f"load{t}.example")
                    while not self.stop.is_set():
                        marker = f"R{self.rnd}-T{t}-M{m}"
                        m += 1
                        rcpt = f"dur{t % 4}@localhost"
                        assert s.docmd("MAIL FROM:<load@example.org>")[0] == 250
                        assert s.docmd(f"RCPT TO:<{rcpt}>")[0] == 250
                        code, resp = s.data(
                            f"Subject: {marker}\r\nX-Marker: {marker}\r\n\r\n"
                            f"{marker} {'filler ' * 50}\r\n".encode())
                        if code == 250:
                            qid = resp.decode().rsplit(" ", 1)[-1]
                            with self.lock:
                                self.acked[marker] = qid
            except (OSError, smtplib.SMTPException, AssertionError):
                # the server is gone (killed) or refuses: try again until told to stop
                time.sleep(0.02)

    def start(self):
        for th in self.threads:
            th.start()

    def finish(self):
        self.stop.set()
        for th in self.threads:
            th.join(timeout=30)
        assert not any(th.is_alive() for th in self.threads), "load threads hang"
        with self.lock:
            return dict(self.acked)


def test_kill9_under_load_loses_no_acknowledged_message(petrel_factory):
    p = petrel_factory()
    all_acked = {}
    for rnd, delay in enumerate([0.15, 0.6, 1.3]):
        load = Load(p, rnd)
        load.start()
        # kill once at least a few messages were acknowledged, then after `delay`
        wait_for(lambda: len(load.acked) >= 3, timeout=20)
        time.sleep(delay)
        p.kill9()
        acked = load.finish()
        assert acked, "no message was acknowledged before the kill"
        all_acked.update(acked)
        print(f"round {rnd}: {len(acked)} acknowledged before kill -9")

        p.start()
        assert spool_tmp_files(p) == [], spool_tmp_files(p)
        ok = wait_for(lambda: set(all_acked) <= set(marker_counts(p.mail_root, MARK_RE)),
                      timeout=60,
                      interval=0.2)
        missing = sorted(set(all_acked) - set(marker_counts(p.mail_root, MARK_RE)))
        assert ok, (f"round {rnd}: {len(missing)} of {len(all_acked)} acknowledged messages "
                    f"lost, e.g. {[(k, all_acked[k]) for k in missing[:5]]}")
        assert wait_queue_empty(p, timeout=30), p.queue_files()[:10]
        assert spool_tmp_files(p) == []
    # every delivered copy is a whole message
    for f in all_maildir_files(p.mail_root):
        head, body = split_prepended(f.read_bytes())
        assert body.endswith(b" \n") and b"X-Marker: " in body, body[:200]
    assert len(all_acked) >= 3


def test_sigterm_mid_data_keeps_nothing(petrel):
    s, greeting = petrel.connect()
    try:
        s.sendall(b"EHLO partial.example\r\nMAIL FROM:<p@example.org>\r\n"
                  b"RCPT TO:<someone@localhost>\r\nDATA\r\n")
        replies = recv_replies(s, 4)
        assert replies[-1].startswith("354"), replies
        s.sendall(b"Subject: half\r\nX-Marker: PARTIAL-MARKER\r\n\r\n"
                  + b"PARTIAL-MARKER body line\r\n" * 2000)
        time.sleep(0.5)  # let the server take (and spool) what was sent
        rc = petrel.stop(signal.SIGTERM, timeout=20)
        assert rc == 0, petrel.log()[-3000:]
        reply = recv_reply(s, timeout=5)
        assert reply == "" or reply.startswith("421"), reply
    finally:
        s.close()
    assert re.search(r"signal 15|stopping|SIGTERM", petrel.log(), re.I)
    for f in petrel.mail_root.rglob("*"):
        if f.is_file():
            assert b"PARTIAL-MARKER" not in f.read_bytes(), f
    assert all_maildir_files(petrel.mail_root) == []
    assert spool_tmp_files(petrel) == []
    assert petrel.queue_files() == []
    # a restart finds nothing of it either
    petrel.start()
    assert spool_tmp_files(petrel) == []
    time.sleep(1.5)
    assert all_maildir_files(petrel.mail_root) == []
    assert petrel.queue_files() == []


def test_sigterm_idle_session_gets_421_and_exit_0(petrel):
    s, greeting = petrel.connect()
    try:
        s.sendall(b"EHLO idle.example\r\n")
        assert recv_reply(s).startswith("250")
        rc = petrel.stop(signal.SIGTERM, timeout=20)
        assert rc == 0, petrel.log()[-3000:]
        reply = recv_reply(s, timeout=5)
        assert reply == "" or reply.startswith("421"), reply
    finally:
        s.close()


def test_restart_delivers_queued_message(petrel):
    (petrel.mail_root / "localhost").mkdir(parents=True, exist_ok=True)
    blocker = petrel.mail_root / "localhost" / "bob"
    blocker.write_text("not a directory\n")
    body = b"Subject: queued across a restart\r\n\r\nRESTART-MARKER\r\n"
    qid = send(petrel, "sender@example.org", "bob@localhost", body)
    assert wait_log(petrel, rf"{qid}: to=<bob@localhost>.*status=deferred"), petrel.log()
    rc = petrel.stop()
    assert rc == 0, petrel.log()[-3000:]
    assert in_queue(petrel, qid), petrel.queue_files()
    blocker.unlink()
    petrel.start()
    msgs = petrel.wait_messages("bob@localhost", 1, timeout=20)
    assert len(msgs) == 1, petrel.log()[-3000:]
    head, got = split_prepended(msgs[0])
    assert f" id {qid}\n".encode() in head
    assert got == body.replace(b"\r\n", b"\n")
    assert wait_queue_empty(petrel), petrel.queue_files()
    time.sleep(1.5)
    assert len(petrel.messages("bob@localhost")) == 1


def _rcpt_code(p, rcpt):
    with smtp(p, timeout=10) as s:
        s.ehlo("reload.example")
        assert s.docmd("MAIL FROM:<sender@example.org>")[0] == 250
        return s.docmd(f"RCPT TO:<{rcpt}>")[0]


def test_sighup_reloads_users_file(petrel_factory, tmp_path):
    users = tmp_path / "users"
    users.write_text("alice@localhost:{PLAIN}secret\n")
    p = petrel_factory(users_file=str(users))
    assert _rcpt_code(p, "alice@localhost") == 250
    assert _rcpt_code(p, "carol@localhost") == 550
    users.write_text("alice@localhost:{PLAIN}secret\ncarol@localhost:{PLAIN}secret\n")
    p.proc.send_signal(signal.SIGHUP)
    assert wait_log(p, r"reloaded"), p.log()
    assert _rcpt_code(p, "carol@localhost") == 250
    send(p, "sender@example.org", "carol@localhost", b"Subject: hi\r\n\r\nhi\r\n")
    assert len(p.wait_messages("carol@localhost", 1)) == 1


def test_sighup_with_broken_config_keeps_running(petrel_factory, tmp_path):
    users = tmp_path / "users"
    users.write_text("alice@localhost:{PLAIN}secret\n")
    p = petrel_factory(users_file=str(users))
    good = p.conf_path.read_text()
    # a broken config file: an unknown key, and a user the old config does not know
    users.write_text("alice@localhost:{PLAIN}secret\ncarol@localhost:{PLAIN}secret\n")
    p.conf_path.write_text(good + "no_such_key = 1\n")
    p.proc.send_signal(signal.SIGHUP)
    assert wait_log(p, r"reload failed"), p.log()
    assert p.proc.poll() is None
    assert "no_such_key" in p.log()
    # still up, still the old configuration (the users file was not re-read)
    assert _rcpt_code(p, "alice@localhost") == 250
    assert _rcpt_code(p, "carol@localhost") == 550
    send(p, "sender@example.org", "alice@localhost", b"Subject: hi\r\n\r\nhi\r\n")
    assert len(p.wait_messages("alice@localhost", 1)) == 1
    # a fixed file then reloads fine
    p.conf_path.write_text(good)
    p.proc.send_signal(signal.SIGHUP)
    assert wait_log(p, r"reloaded"), p.log()
    assert _rcpt_code(p, "carol@localhost") == 250


def test_sighup_with_broken_users_file_keeps_running(petrel_factory, tmp_path):
    users = tmp_path / "users"
    users.write_text("alice@localhost:{PLAIN}secret\n")
    p = petrel_factory(users_file=str(users))
    users.write_text("alice@localhost:{PLAIN}secret\nthis line is not a user\n")
    p.proc.send_signal(signal.SIGHUP)
    assert wait_log(p, r"reload failed"), p.log()
    assert p.proc.poll() is None
    assert _rcpt_code(p, "alice@localhost") == 250


def test_damaged_queue_files_are_moved_aside(petrel):
    """Queue files that cannot be read (garbage, a truncated header, an arrival time
    past any clock) are moved to spool/corrupt/ once and logged, not retried for ever;
    the server keeps running and delivering."""
    petrel.stop()
    q = petrel.spool / "queue"
    q.mkdir(parents=True, exist_ok=True)
    (q / "00000000000000B1").write_bytes(b"garbage\x00\xff\n")
    (q / "00000000000000B2").write_bytes(b"PETREL-QUEUE 1\nid 00000000000000B2\nsender a@b\n")
    (q / "00000000000000B2.st").write_bytes(b"whatever\n")
    (q / "00000000000000B3").write_bytes(
        b"PETREL-QUEUE 1\nid 00000000000000B3\narrival -99999999999999999999\n"
        b"sender a@example.org\nrcpt far@localhost\n\nSubject: old\r\n\r\nx\r\n")
    petrel.start()
    for n in ("B1", "B2"):
        assert wait_log(petrel, rf"00000000000000{n}: unreadable queue file: .*; moved to "
                                r"corrupt/"), petrel.log()
    assert wait_for(lambda: sorted(x.name for x in (petrel.spool / "corrupt").iterdir())
                    == ["00000000000000B1", "00000000000000B2", "00000000000000B2.st"]), \
        petrel.log()
    # the one with an absurd arrival time is kept and delivered (no overflow)
    assert len(petrel.wait_messages("far@localhost", 1)) == 1, petrel.log()
    send(petrel, "sender@example.org", "bob@localhost", b"Subject: after\r\n\r\nok\r\n")
    assert len(petrel.wait_messages("bob@localhost", 1)) == 1
    assert wait_queue_empty(petrel), petrel.queue_files()
    assert len(re.findall(r"00000000000000B1: unreadable", petrel.log())) == 1


def test_sighup_applies_queue_lifetime_and_retry(petrel_factory):
    """queue_lifetime and the retry bounds take effect at SIGHUP, for the attempts that
    end after it (they were read once at start: the reload said it was done and kept
    the old values)."""
    p = petrel_factory(queue_lifetime="1h", retry_min="1s", retry_max="1s")
    (p.mail_root / "localhost").mkdir(parents=True, exist_ok=True)
    (p.mail_root / "localhost" / "bob").write_text("not a directory\n")
    qid = send(p, "sender@example.org", "bob@localhost", b"Subject: x\r\n\r\nx\r\n")
    assert wait_log(p, rf"{qid}: to=<bob@localhost>.*status=deferred"), p.log()
    p.conf["queue_lifetime"] = "1s"
    p.write_conf()
    p.proc.send_signal(signal.SIGHUP)
    assert wait_log(p, r"configuration reloaded"), p.log()
    assert wait_log(p, rf"{qid}: to=<bob@localhost>.*status=expired", timeout=20), p.log()


def test_sighup_renames_the_reporting_host_of_bounces(petrel_factory):
    """A bounce built after a SIGHUP that changed `hostname` names the new host in From:,
    Message-ID and Reporting-MTA (the name was copied once at start)."""
    p = petrel_factory(hostname="mx1.example.test", queue_lifetime="1h", retry_min="1s",
                       retry_max="1s")
    (p.mail_root / "localhost").mkdir(parents=True, exist_ok=True)
    (p.mail_root / "localhost" / "bob").write_text("not a directory\n")
    qid = send(p, "alice@localhost", "bob@localhost", b"Subject: x\r\n\r\nx\r\n")
    assert wait_log(p, rf"{qid}: to=<bob@localhost>.*status=deferred"), p.log()
    p.conf["hostname"] = "mx2.example.test"
    p.conf["queue_lifetime"] = "1s"
    p.write_conf()
    p.proc.send_signal(signal.SIGHUP)
    assert wait_log(p, r"configuration reloaded"), p.log()
    [dsn] = p.wait_messages("alice@localhost", 1, timeout=20)
    assert b"From: MAILER-DAEMON@mx2.example.test" in dsn, dsn
    assert b"Reporting-MTA: dns; mx2.example.test" in dsn, dsn
    assert b"mx1.example.test" not in dsn, dsn
