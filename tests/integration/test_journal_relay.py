"""Journaled messages with foreign recipients: every small message (held in
memory, up to 256 KiB) is made durable in spool/journal before its 250, also
when some or all of its recipients are relayed.  The deliverer then takes it
from memory (Maildirs and relay client alike) without any queue file; only an
attempt that leaves recipients for later writes spool/queue/ID with its
progress file ID.st (and the journal marks the message finished).  A kill -9
turns the journal's unfinished messages into queue files at the next start;
a clean stop leaves them in the journal.

The network (dnsmasq, receivers on 127.0.0.X, smtp-sink for 4xx/5xx and
stalls) is test_relay.py's; the spool watch is test_direct.py's and the
journal reader test_journal.py's.  Bounces go to alice@a.test, local at A."""
import re
import time

from mailtest import (cli_queue, in_queue, log_lines, send, wait_attempted, wait_for, wait_log,
                      wait_queue_empty)
from test_direct import watch  # noqa: F401  (fixture)
from test_journal import journal_dir, journal_records, recovered_counts, segments
from test_relay import (ALICE, BODY, bounce_of, check_relayed, dsn_check, log_re,  # noqa: F401
                        net)

MX_B = ("--mx-host=b.test,mx.b.test,10", "--host-record=mx.b.test,127.0.0.2")
CAROL = "carol@a.test"  # a second local user of A
LEFT_RE = r"queue: (\d+) message\(s\) left in the journal for the next start"


def marks(p, qid):
    """The magics of qid's records in A's journal, in order ("PJM1", then "PJD1" once
    finished)."""
    return [m for _seg, m, q, _pl in journal_records(p) if q == qid]


def journal_payload(p, qid):
    return next(pl for _seg, m, q, pl in journal_records(p) if q == qid and m == "PJM1")


def sent_lines(p, qid, rcpt):
    return re.findall(rf"{qid}: to=<{re.escape(rcpt)}>, relay=[^,]*, .*status=sent", p.log())


def from_lines(p, qid):
    return re.findall(rf"^.*{qid}: from=<[^>]*>, size=\d+, nrcpt=\d+ .*$", p.log(), re.M)


def sink_in_data(sink):
    """The stalling sink got the whole envelope and A's DATA: the relay is in flight."""
    log = sink.log().upper()
    return "RCPT" in log and "DATA" in log


def stop_clean(a):
    """SIGTERM; the stop must be clean and leave nothing in the journal."""
    before = len(a.log())
    assert a.stop() == 0
    assert not re.search(LEFT_RE, a.log()[before:]), a.log()[-2000:]
    assert list(journal_dir(a).iterdir()) == [], list(journal_dir(a).iterdir())


# ---- relayed from memory ---------------------------------------------------------------------

def test_relayed_from_memory_without_a_queue_file(net, watch):
    net.start_dns(*MX_B)
    b = net.receiver("127.0.0.2")
    a = net.sender()
    w = watch(a)
    qid = send(a, ALICE, "bob@b.test", BODY)
    # made durable in the journal before the 250: the record is a queue file's image
    assert marks(a, qid)[:1] == ["PJM1"], journal_records(a)
    assert journal_payload(a, qid).endswith(BODY)
    assert re.search(rb"\nrcpt bob@b\.test\n", journal_payload(a, qid))
    msgs = b.wait_messages("bob@b.test", 1)
    assert len(msgs) == 1, a.log()[-3000:]
    check_relayed(msgs[0], qid, ALICE, "bob@b.test", BODY)
    assert wait_log(a, log_re(qid, "bob@b.test", "sent", ("mx.b.test", "127.0.0.2"), net.port,
                              r"250 2\.0\.0 Ok: queued as \w+")), log_lines(a, qid)
    assert wait_log(a, rf"{qid}: removed$"), log_lines(a, qid)
    # finished: the journal marks it, and not even a spare was made of a queue file
    assert wait_for(lambda: marks(a, qid) == ["PJM1", "PJD1"]), journal_records(a)
    assert w.events() == [], w.events()
    assert sorted(x.name for x in (a.spool / "queue").iterdir()) == []
    assert not re.search(rf"{qid}: .*status=deferred", a.log()), log_lines(a, qid)
    # its one from= line is the commit's (no second one from a queue run)
    assert len(from_lines(a, qid)) == 1, log_lines(a, qid)
    assert a.messages(ALICE) == []
    stop_clean(a)
    a.start()
    assert recovered_counts(a) == [], a.log()[-2000:]
    time.sleep(1.5)  # a second relay would come now
    assert len(b.messages("bob@b.test")) == 1
    assert len(sent_lines(a, qid, "bob@b.test")) == 1, log_lines(a, qid)
    assert a.queue_files() == []


# ---- a 4xx: from memory to the queue ---------------------------------------------------------

def test_remote_4xx_queues_it_with_its_progress_then_flush_delivers_once(net, watch):
    net.start_dns(*MX_B)
    sink = net.sink("127.0.0.2", "-r", "RCPT")  # 450 4.3.0 to every RCPT
    a = net.sender(retry_min="1h", retry_max="1h")
    w = watch(a)
    qid = send(a, ALICE, "bob@b.test", BODY)
    assert wait_log(a, log_re(qid, "bob@b.test", "deferred", ("mx.b.test", "127.0.0.2"),
                              net.port, r"450 4\.3\.0 .*")), log_lines(a, qid)
    # written to the queue from memory, with its progress; then the journal forgets it
    assert wait_for(lambda: a.queue_files() == sorted([qid, qid + ".st"])), a.queue_files()
    assert (a.spool / "queue" / qid).read_bytes() == journal_payload(a, qid)
    assert (a.spool / "queue" / qid).read_bytes().endswith(BODY)
    st = (a.spool / "queue" / f"{qid}.st").read_text()
    assert st.startswith("attempts 1\n") and "done 0" not in st, st
    assert wait_for(lambda: marks(a, qid) == ["PJM1", "PJD1"]), journal_records(a)
    # the progress first, then the message: a crash in between leaves a progress file
    # alone, which the journal's copy picks up at the next start (the other order would
    # leave a queue file without its progress, and the done recipients would get it again)
    seen = [e for e in w.names(qid) if e[0] == "queue"]
    assert seen.index(("queue", qid)) > seen.index(("queue", f"{qid}.st")), seen
    wait_attempted(a, qid)

    sink.stop()
    b = net.receiver("127.0.0.2")
    r = cli_queue(a, "flush")
    assert r.returncode == 0, r.stderr
    msgs = b.wait_messages("bob@b.test", 1, timeout=20)
    assert len(msgs) == 1, log_lines(a, qid)
    check_relayed(msgs[0], qid, ALICE, "bob@b.test", BODY)
    assert wait_log(a, log_re(qid, "bob@b.test", "sent", ("mx.b.test", "127.0.0.2"), net.port))
    assert wait_queue_empty(a), a.queue_files()
    assert cli_queue(a, "flush").returncode == 0  # another flush: nothing more
    time.sleep(1.5)
    assert len(b.messages("bob@b.test")) == 1
    assert len(sent_lines(a, qid, "bob@b.test")) == 1, log_lines(a, qid)
    assert a.messages(ALICE) == []  # no bounce for a temporary failure
    assert len(from_lines(a, qid)) == 1, log_lines(a, qid)
    stop_clean(a)


def test_local_and_foreign_local_copy_at_once_and_once_only(net):
    net.start_dns(*MX_B)
    sink = net.sink("127.0.0.2", "-r", "RCPT")
    a = net.sender(retry_min="1h", retry_max="1h")
    body = BODY.replace(b"Subject: ", b"X-Marker: MIXED-ONE\r\nSubject: ")
    qid = send(a, ALICE, [CAROL, "bob@b.test"], body)
    assert marks(a, qid)[:1] == ["PJM1"], journal_records(a)
    assert len(a.wait_messages(CAROL, 1)) == 1, log_lines(a, qid)
    assert wait_log(a, log_re(qid, CAROL, "sent", reply=r".*")), log_lines(a, qid)
    assert wait_log(a, log_re(qid, "bob@b.test", "deferred", reply=r"450 4\.3\.0 .*")), \
        log_lines(a, qid)
    assert wait_for(lambda: a.queue_files() == sorted([qid, qid + ".st"])), a.queue_files()
    # the progress file says carol (recipient 0) is done, bob (1) is not
    st = (a.spool / "queue" / f"{qid}.st").read_text()
    assert re.search(r"^done 0$", st, re.M) and not re.search(r"^(done|fail) 1$", st, re.M), st
    assert wait_for(lambda: marks(a, qid) == ["PJM1", "PJD1"]), journal_records(a)
    wait_attempted(a, qid)

    # a retry while the remote still says 450: carol's copy is not made again
    assert cli_queue(a, "flush").returncode == 0
    assert wait_for(lambda: len(re.findall(rf"{qid}: to=<bob@b\.test>.*status=deferred",
                                           a.log())) >= 2), log_lines(a, qid)
    wait_attempted(a, qid)
    assert len(a.messages(CAROL)) == 1

    sink.stop()
    b = net.receiver("127.0.0.2")
    assert cli_queue(a, "flush").returncode == 0
    msgs = b.wait_messages("bob@b.test", 1, timeout=20)
    assert len(msgs) == 1, log_lines(a, qid)
    check_relayed(msgs[0], qid, ALICE, "bob@b.test", body)
    assert wait_queue_empty(a), a.queue_files()
    time.sleep(1.5)
    assert len(a.messages(CAROL)) == 1
    assert b"X-Marker: MIXED-ONE\n" in a.messages(CAROL)[0]
    assert len(b.messages("bob@b.test")) == 1
    assert len(sent_lines(a, qid, CAROL)) == 1, log_lines(a, qid)
    assert len(sent_lines(a, qid, "bob@b.test")) == 1, log_lines(a, qid)
    assert a.messages(ALICE) == []
    stop_clean(a)


# ---- a 5xx: the bounce quotes the message held in memory ---------------------------------------

def test_remote_5xx_bounce_quotes_the_headers_from_memory(net, watch):
    net.start_dns(*MX_B)
    net.sink("127.0.0.2", "-f", "RCPT")  # 5xx to every RCPT
    a = net.sender()
    w = watch(a)
    qid = send(a, ALICE, "bob@b.test", BODY)
    assert wait_log(a, log_re(qid, "bob@b.test", "bounced", ("mx.b.test", "127.0.0.2"), net.port,
                              r"5\d\d .*")), log_lines(a, qid)
    [dsn] = bounce_of(a)
    _text, rcpts = dsn_check(dsn, ["bob@b.test"], r"5\.\d+\.\d+")
    headers = dsn.get_payload()[2].get_payload()
    assert "Subject: relayed byte for byte" in headers, headers
    assert "Message-Id: <relay-1@a.test>" in headers, headers
    assert "X-Folded: first part" in headers, headers
    assert "first line" not in headers  # the headers only
    assert rcpts[0]["Remote-MTA"] == "dns; mx.b.test"
    assert wait_log(a, rf"{qid}: removed$"), log_lines(a, qid)
    assert wait_for(lambda: marks(a, qid) == ["PJM1", "PJD1"]), journal_records(a)
    assert w.names(qid) == [], w.events()  # the original never had a queue file
    assert wait_queue_empty(a), a.queue_files()
    time.sleep(1)
    assert len(a.messages(ALICE)) == 1  # one bounce
    stop_clean(a)


# ---- crash and stop while the remote stalls ---------------------------------------------------

def test_kill9_while_relaying_from_memory_delivered_after_the_restart(net):
    net.start_dns(*MX_B)
    sink = net.sink("127.0.0.2", "-w", "30")  # answers DATA only after 30 s
    a = net.sender()
    qid = send(a, ALICE, "bob@b.test", BODY)
    assert wait_for(lambda: sink_in_data(sink)), sink.log()
    # in flight: only in memory and in the journal
    assert marks(a, qid) == ["PJM1"], journal_records(a)
    assert not in_queue(a, qid), a.queue_files()
    a.kill9()
    assert marks(a, qid) == ["PJM1"], journal_records(a)
    sink.stop()
    b = net.receiver("127.0.0.2")
    a.start()
    # read before the server listens: the unfinished record became queue/ID
    assert recovered_counts(a) == [1], a.log()[-2000:]
    assert segments(a) == []
    msgs = b.wait_messages("bob@b.test", 1, timeout=20)
    assert len(msgs) >= 1, log_lines(a, qid)
    check_relayed(msgs[0], qid, ALICE, "bob@b.test", BODY)
    assert wait_log(a, log_re(qid, "bob@b.test", "sent", ("mx.b.test", "127.0.0.2"), net.port))
    assert wait_queue_empty(a), a.queue_files()
    assert a.messages(ALICE) == []
    stop_clean(a)


def test_sigterm_while_relaying_from_memory_delivered_after_the_restart(net):
    net.start_dns(*MX_B)
    sink = net.sink("127.0.0.2", "-w", "30")
    a = net.sender()
    qid = send(a, ALICE, "bob@b.test", BODY)
    assert wait_for(lambda: sink_in_data(sink)), sink.log()
    assert marks(a, qid) == ["PJM1"], journal_records(a)
    assert not in_queue(a, qid), a.queue_files()
    t0 = time.time()
    assert a.stop() == 0
    assert time.time() - t0 < 10, "SIGTERM waited for the relay session"
    # not lost at the stop: in the queue (its attempt was cut off) or left in the journal
    queued = in_queue(a, qid)
    left = re.search(LEFT_RE, a.log())
    assert queued or left, (a.queue_files(), log_lines(a, qid))
    if not queued:
        assert marks(a, qid) == ["PJM1"], journal_records(a)
    assert len(sent_lines(a, qid, "bob@b.test")) == 0
    sink.stop()
    b = net.receiver("127.0.0.2")
    a.start()
    assert recovered_counts(a) == ([] if queued else [1]), a.log()[-2000:]
    msgs = b.wait_messages("bob@b.test", 1, timeout=20)
    assert len(msgs) == 1, log_lines(a, qid)
    check_relayed(msgs[0], qid, ALICE, "bob@b.test", BODY)
    assert wait_queue_empty(a), a.queue_files()
    time.sleep(1.5)
    # the remote never took it before the stop: exactly one copy
    assert len(b.messages("bob@b.test")) == 1
    assert len(sent_lines(a, qid, "bob@b.test")) == 1, log_lines(a, qid)
    assert a.messages(ALICE) == []
    stop_clean(a)


def test_queue_file_cannot_be_written_kept_in_the_journal_over_a_clean_stop(net):
    """Local + foreign, the remote says 450, and queue/ID cannot be written (spool/tmp is
    gone under the running server): the message stays in memory and in the journal with its
    progress (a retry does not give carol a second copy); a clean stop leaves it in the
    journal, and the next start queues it from there and sends only bob's copy."""
    net.start_dns(*MX_B)
    sink = net.sink("127.0.0.2", "-r", "RCPT")
    a = net.sender(retry_min="1h", retry_max="1h")
    (a.spool / "tmp").rmdir()  # the server's open descriptor now names a removed directory
    body = BODY.replace(b"Subject: ", b"X-Marker: KEPT-ONE\r\nSubject: ")
    qid = send(a, ALICE, [CAROL, "bob@b.test"], body)
    kept = rf"{qid}: cannot queue \([^)]*\); kept in the journal, trying again later$"
    assert wait_log(a, kept), log_lines(a, qid)
    assert len(a.wait_messages(CAROL, 1)) == 1, log_lines(a, qid)
    # its progress was written, the message itself could not be
    assert wait_for(lambda: a.queue_files() == [f"{qid}.st"]), a.queue_files()
    assert marks(a, qid) == ["PJM1"], journal_records(a)

    # a retry from memory: carol is done already, bob is deferred again
    assert cli_queue(a, "flush").returncode == 0
    assert wait_for(lambda: len(re.findall(kept, a.log(), re.M)) >= 2), log_lines(a, qid)
    assert len(re.findall(rf"{qid}: to=<bob@b\.test>.*status=deferred", a.log())) == 2
    assert len(a.messages(CAROL)) == 1
    assert len(sent_lines(a, qid, CAROL)) == 1, log_lines(a, qid)

    assert a.stop() == 0
    assert re.search(LEFT_RE, a.log()).group(1) == "1", a.log()[-2000:]
    assert marks(a, qid) == ["PJM1"], journal_records(a)
    assert not (a.spool / "queue" / qid).exists()
    sink.stop()
    b = net.receiver("127.0.0.2")
    (a.spool / "tmp").mkdir(exist_ok=True)
    a.start()
    assert recovered_counts(a) == [1], a.log()[-2000:]
    assert segments(a) == []
    msgs = b.wait_messages("bob@b.test", 1, timeout=20)
    assert len(msgs) == 1, log_lines(a, qid)
    check_relayed(msgs[0], qid, ALICE, "bob@b.test", body)
    assert wait_queue_empty(a), a.queue_files()
    time.sleep(1.5)
    assert len(b.messages("bob@b.test")) == 1
    assert len(a.messages(CAROL)) == 1, "carol got a second copy after the restart"
    assert len(sent_lines(a, qid, CAROL)) == 1, log_lines(a, qid)
    assert a.messages(ALICE) == []
    stop_clean(a)
