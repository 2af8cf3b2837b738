"""Local delivery: what lands in the Maildir, who gets it, what is logged,
and what happens when the Maildir or the spool cannot be written."""
import os
import re
import smtplib
import subprocess
import threading
import time

import pytest

from conftest import recv_reply, recv_replies
from mailtest import (fill_fs, marker_counts, mount_tmpfs, DATE_RE, all_maildir_files, in_queue, queue_id, send, smtp,
                      spool_tmp_files, split_prepended, wait_for, wait_log,
                      wait_queue_empty)

BODY = (b"From: Sender <sender@example.org>\r\n"
        b"To: someone@localhost\r\n"
        b"Subject: exact content\r\n"
        b"Message-Id: <exact-1@example.org>\r\n"
        b"\r\n"
        b"first line\r\n"
        b".a line that starts with a dot\r\n"
        b"..two dots\r\n"
        b"\r\n"
        b"last line\r\n")
BODY_LF = BODY.replace(b"\r\n", b"\n")


def expected_prefix_re(sender, rcpt, helo, proto, qid, delivered_to=None):
    delivered_to = delivered_to or rcpt
    return re.compile(
        b"\\AReturn-Path: <" + re.escape(sender.encode()) + b">\n"
        b"Delivered-To: " + re.escape(delivered_to.encode()) + b"\n"
        b"Received: from " + re.escape(helo.encode()) + b" \\(unknown \\[127\\.0\\.0\\.1\\]\\)\n"
        b"\tby mx\\.petrel\\.test \\(petrel\\) with " + proto.encode() + b" id "
        + re.escape(qid.encode()) + b"\n"
        b"\tfor <" + re.escape(rcpt.encode()) + b">; " + DATE_RE + b"\n")


# ---- content of the delivered file ----------------------------------------------

def test_maildir_file_exact_esmtp(petrel):
    qid = send(petrel, "sender@example.org", "someone@localhost", BODY, helo="client.example")
    msgs = petrel.wait_messages("someone@localhost", 1)
    assert len(msgs) == 1
    m = expected_prefix_re("sender@example.org", "someone@localhost", "client.example",
                           "ESMTP", qid).match(msgs[0])
    assert m, msgs[0][:500]
    assert msgs[0][m.end():] == BODY_LF
    # the file is in new/ only, nothing left in tmp/
    md = petrel.maildir("someone@localhost")
    assert sorted(x.name for x in (md / "tmp").iterdir()) == []
    assert (md / "cur").is_dir()


def test_maildir_file_exact_helo_says_smtp(petrel):
    qid = send(petrel, "old@example.org", "someone@localhost", BODY, helo="legacy.example",
               esmtp=False)
    msgs = petrel.wait_messages("someone@localhost", 1)
    assert len(msgs) == 1
    m = expected_prefix_re("old@example.org", "someone@localhost", "legacy.example", "SMTP",
                           qid).match(msgs[0])
    assert m, msgs[0][:500]
    assert msgs[0][m.end():] == BODY_LF


def test_null_sender_return_path(petrel):
    qid = send(petrel, "", "someone@localhost", BODY)
    msgs = petrel.wait_messages("someone@localhost", 1)
    assert len(msgs) == 1
    assert expected_prefix_re("", "someone@localhost", "client.example", "ESMTP",
                              qid).match(msgs[0]), msgs[0][:500]


# ---- who gets the mail --------------------------------------------------------

def test_users_file_restricts_recipients(petrel_factory, tmp_path):
    users = tmp_path / "users"
    users.write_text("# the users\n"
                     "alice@localhost:{PLAIN}secret\n"
                     "dave@example.test:{PLAIN}secret::::::\n")
    p = petrel_factory(users_file=str(users))
    with smtp(p) as s:
        s.ehlo("client.example")
        assert s.docmd("MAIL FROM:<sender@example.org>")[0] == 250
        code, resp = s.docmd("RCPT TO:<bob@localhost>")
        assert code == 550 and resp.startswith(b"5.1.1"), (code, resp)
        code, resp = s.docmd("RCPT TO:<alice@localhost>")
        assert code == 250, resp
        code, resp = s.docmd("RCPT TO:<Dave@Example.Test>")
        assert code == 250, resp
        code, resp = s.data(BODY)
        assert code == 250, resp
    assert len(p.wait_messages("alice@localhost", 1)) == 1
    assert len(p.wait_messages("dave@example.test", 1)) == 1
    assert wait_queue_empty(p)
    assert not p.maildir("bob@localhost").exists()


def test_alias_to_two_local_users(petrel_factory, tmp_path):
    aliases = tmp_path / "aliases"
    aliases.write_text("team@localhost: alice@localhost, bob@localhost\n")
    p = petrel_factory(aliases_file=str(aliases))
    qid = send(p, "sender@example.org", "team@localhost", BODY)
    for user in ("alice", "bob"):
        msgs = p.wait_messages(f"{user}@localhost", 1)
        assert len(msgs) == 1, user
        head, body = split_prepended(msgs[0])
        assert head.startswith(b"Return-Path: <sender@example.org>\nDelivered-To: "
                               + f"{user}@localhost\n".encode()), head
        assert f" id {qid}\n".encode() in head
        assert body == BODY_LF
    assert not p.maildir("team@localhost").exists()
    assert wait_queue_empty(p)


def test_alias_to_alias(petrel_factory, tmp_path):
    aliases = tmp_path / "aliases"
    aliases.write_text("list@localhost: team@localhost\n"
                       "team@localhost: alice@localhost, bob\n")
    p = petrel_factory(aliases_file=str(aliases))
    send(p, "sender@example.org", "list@localhost", BODY)
    for user in ("alice", "bob"):
        msgs = p.wait_messages(f"{user}@localhost", 1)
        assert len(msgs) == 1, user
        assert split_prepended(msgs[0])[1] == BODY_LF
    assert not p.maildir("team@localhost").exists()
    assert not p.maildir("list@localhost").exists()
    assert wait_queue_empty(p)


def test_alias_naming_itself_delivers_each_once(petrel_factory, tmp_path):
    """"a: a, b" delivers to user a and to b, one copy each: the recipients the
    envelope got when the alias was expanded are not expanded a second time."""
    aliases = tmp_path / "aliases"
    aliases.write_text("a@localhost: a@localhost, b@localhost\n")
    p = petrel_factory(aliases_file=str(aliases))
    qid = send(p, "sender@example.org", "a@localhost", BODY)
    for user in ("a", "b"):
        assert len(p.wait_messages(f"{user}@localhost", 1)) == 1, user
    assert wait_queue_empty(p)
    time.sleep(0.5)
    assert [len(p.messages(f"{u}@localhost")) for u in ("a", "b")] == [1, 1], p.log()
    assert len(re.findall(rf"{qid}: to=<b@localhost>.*status=sent", p.log())) == 1, p.log()


def test_alias_with_remote_target_stays_queued(petrel_factory, tmp_path):
    aliases = tmp_path / "aliases"
    aliases.write_text("mixed@localhost: carol@localhost, friend@remote.example\n")
    p = petrel_factory(aliases_file=str(aliases))
    qid = send(p, "sender@example.org", "mixed@localhost", BODY)
    msgs = p.wait_messages("carol@localhost", 1)
    assert len(msgs) == 1
    assert split_prepended(msgs[0])[1] == BODY_LF
    assert wait_log(p, rf"{qid}: to=<friend@remote\.example>.*status=deferred"), p.log()
    # retries (retry_min is 1s) must not deliver carol's copy again
    time.sleep(3)
    assert len(p.messages("carol@localhost")) == 1
    assert in_queue(p, qid), p.queue_files()


def test_recipient_delimiter(petrel_factory):
    p = petrel_factory(recipient_delimiter="+")
    send(p, "sender@example.org", "user+tag@localhost", BODY)
    msgs = p.wait_messages("user@localhost", 1)
    assert len(msgs) == 1
    assert split_prepended(msgs[0])[1] == BODY_LF
    assert not (p.mail_root / "localhost" / "user+tag").exists()
    assert wait_queue_empty(p)


def test_domain_and_local_part_case_insensitive(petrel):
    send(petrel, "sender@example.org", "Someone@LOCALHOST", BODY)
    msgs = petrel.wait_messages("someone@localhost", 1)
    assert len(msgs) == 1
    assert split_prepended(msgs[0])[1] == BODY_LF
    assert sorted(x.name for x in petrel.mail_root.iterdir()) == ["localhost"]
    assert sorted(x.name for x in (petrel.mail_root / "localhost").iterdir()) == ["someone"]


def test_quoted_local_parts_are_the_users_they_unquote_to(petrel_factory, tmp_path):
    """RCPT TO:<"a b"@localhost> is the user `a b` at RCPT and at delivery alike (it was
    accepted, then bounced "unknown user"; an alias reached so was never expanded); its
    Maildir is named `a b`, without quotes."""
    users = tmp_path / "users"
    users.write_text("a b@localhost:{PLAIN}x\na..b@localhost:{PLAIN}x\ncarol@localhost:{PLAIN}x\n")
    aliases = tmp_path / "aliases"
    aliases.write_text("list..x@localhost: carol\n")
    p = petrel_factory(users_file=str(users), aliases_file=str(aliases))
    with smtp(p) as s:
        s.ehlo("client.example")
        assert s.docmd("MAIL FROM:<sender@example.org>")[0] == 250
        for rcpt in ('"a b"@localhost', '"a..b"@localhost', '"list..x"@localhost'):
            code, resp = s.docmd(f"RCPT TO:<{rcpt}>")
            assert code == 250, (rcpt, resp)
        code, resp = s.docmd('RCPT TO:<"x y"@localhost>')
        assert code == 550, resp
        code, resp = s.data(BODY)
        assert code == 250, resp
    for user in ("a b", "a..b", "carol"):
        assert len(p.wait_messages(f"{user}@localhost", 1)) == 1, (user, p.log()[-2000:])
    assert wait_queue_empty(p)
    assert "bounced" not in p.log(), p.log()
    assert not (p.mail_root / "localhost" / '"a b"').exists()


def test_postmaster_is_accepted_at_every_local_domain(petrel_factory, tmp_path):
    """RFC 5321 4.5.1: postmaster@<local domain> is always accepted, whatever the users
    file lists (550 5.1.1 before; bare <Postmaster> was taken, then bounced)."""
    users = tmp_path / "users"
    users.write_text("alice@localhost:{PLAIN}x\n")
    p = petrel_factory(users_file=str(users))
    with smtp(p) as s:
        s.ehlo("client.example")
        assert s.docmd("MAIL FROM:<sender@example.org>")[0] == 250
        for rcpt in ("<postmaster@localhost>", "<POSTMASTER@example.test>", "<Postmaster>"):
            code, resp = s.docmd(f"RCPT TO:{rcpt}")
            assert code == 250, (rcpt, resp)
        code, resp = s.data(BODY)
        assert code == 250, resp
    # <Postmaster> is postmaster@localhost (the first local domain): one copy for both
    assert len(p.wait_messages("postmaster@localhost", 1)) == 1, p.log()[-2000:]
    assert len(p.wait_messages("postmaster@example.test", 1)) == 1, p.log()[-2000:]
    assert wait_queue_empty(p)
    assert "bounced" not in p.log(), p.log()


def test_alias_loop_bounces_and_makes_no_maildir(petrel_factory, tmp_path):
    """a: b and b: a: the expansion at DATA fails and keeps the address; its delivery
    bounces it (aliases nested too deep) instead of writing a Maildir named after the
    alias, which no user reads (with a users_file only listed users exist)."""
    users = tmp_path / "users"
    users.write_text("alice@localhost:{PLAIN}x\n")
    aliases = tmp_path / "aliases"
    aliases.write_text("a@localhost: b@localhost\nb@localhost: a@localhost\n")
    p = petrel_factory(users_file=str(users), aliases_file=str(aliases))
    qid = send(p, "alice@localhost", "a@localhost", BODY)
    assert wait_log(p, rf"{qid}: to=<a@localhost>.*status=bounced \(.*deeper than 10"), \
        p.log()[-2000:]
    assert len(p.wait_messages("alice@localhost", 1)) == 1  # the bounce
    assert not p.maildir("a@localhost").exists()
    assert not p.maildir("b@localhost").exists()
    assert wait_queue_empty(p)


def test_postmaster_without_domain(petrel):
    with smtp(petrel) as s:
        s.ehlo("client.example")
        assert s.docmd("MAIL FROM:<sender@example.org>")[0] == 250
        code, resp = s.docmd("RCPT TO:<Postmaster>")
        assert code == 250, resp
        code, resp = s.data(BODY)
        assert code == 250, resp
    msgs = petrel.wait_messages("postmaster@localhost", 1)
    assert len(msgs) == 1
    assert split_prepended(msgs[0])[1] == BODY_LF
    assert wait_queue_empty(petrel)


@pytest.mark.parametrize("local", ['"../evil"', '"../../../tmp/evil"', '"a/b"', '".hidden"',
                                   '"."', '".."'])
def test_unsafe_local_part_refused(petrel, local):
    before = sorted(str(x.relative_to(petrel.dir)) for x in petrel.dir.rglob("*"))
    with smtp(petrel) as s:
        s.ehlo("client.example")
        assert s.docmd("MAIL FROM:<sender@example.org>")[0] == 250
        code, resp = s.docmd(f"RCPT TO:<{local}@localhost>")
        assert code == 553 and resp.startswith(b"5.1.3"), (code, resp)
        # the session goes on; a good recipient still works
        assert s.docmd("RCPT TO:<someone@localhost>")[0] == 250
        code, resp = s.data(BODY)
        assert code == 250, resp
    assert len(petrel.wait_messages("someone@localhost", 1)) == 1
    assert wait_queue_empty(petrel)
    after = sorted(str(x.relative_to(petrel.dir)) for x in petrel.dir.rglob("*"))
    new = [x for x in after if x not in before]
    assert all(x.startswith("mail/localhost/someone") or x == "mail/localhost"
               or x.startswith("spool/") for x in new), new
    assert not any("evil" in x or "hidden" in x for x in after)
    assert not os.path.exists("/tmp/evil")


def test_multiple_recipients(petrel):
    rcpts = ["a@localhost", "b@localhost", "c@example.test", "d+x@localhost"]
    qid = send(petrel, "sender@example.org", rcpts, BODY)
    for r, box in zip(rcpts, ["a@localhost", "b@localhost", "c@example.test", "d@localhost"]):
        msgs = petrel.wait_messages(box, 1)
        assert len(msgs) == 1, box
        head, body = split_prepended(msgs[0])
        assert f" id {qid}\n".encode() in head
        assert f"\tfor <{r}>; ".encode() in head, head
        assert body == BODY_LF
    assert wait_log(petrel, rf"{qid}: from=<sender@example\.org>, size=\d+, nrcpt=4\b")
    assert wait_queue_empty(petrel)


def test_foreign_recipient_from_relay_network_stays_queued(petrel):
    qid = send(petrel, "sender@example.org", "someone@remote.example", BODY)
    assert wait_log(petrel, rf"{qid}: to=<someone@remote\.example>.*status=deferred"), \
        petrel.log()
    # queued once the attempt is recorded (the journal held it until then)
    assert wait_for(lambda: in_queue(petrel, qid)), petrel.queue_files()
    assert all_maildir_files(petrel.mail_root) == []


# ---- log lines --------------------------------------------------------------

def test_log_lines(petrel):
    qid = send(petrel, "sender@example.org", "someone@localhost", BODY)
    assert len(petrel.wait_messages("someone@localhost", 1)) == 1
    assert wait_log(petrel, r"disconnect from unknown\[127\.0\.0\.1\]")
    assert wait_log(petrel, rf"{qid}: to=<someone@localhost>, relay=local, "
                            r"delay=[0-9.]+, status=sent \(delivered to maildir\)"), petrel.log()
    log = petrel.log()
    assert re.search(r"connect from unknown\[127\.0\.0\.1\]", log)
    m = re.search(rf"{qid}: from=<sender@example\.org>, size=(\d+), nrcpt=1\b", log)
    assert m, log
    assert int(m.group(1)) in (len(BODY), len(BODY_LF)), (m.group(1), len(BODY))
    # the order of events for this message
    i_conn = log.index("connect from unknown[127.0.0.1]")
    i_from = m.start()
    i_sent = log.index(f"{qid}: to=<someone@localhost>")
    assert i_conn < i_from < i_sent


# ---- failures on the delivery side --------------------------------------------

def test_failed_maildir_write_is_retried(petrel):
    (petrel.mail_root / "localhost").mkdir(parents=True, exist_ok=True)
    blocker = petrel.mail_root / "localhost" / "bob"
    blocker.write_text("not a directory\n")
    qid = send(petrel, "sender@example.org", "bob@localhost", BODY)
    assert wait_log(petrel, rf"{qid}: to=<bob@localhost>.*status=deferred"), petrel.log()
    # tried right after the 250 (from the journal), then queued for the retries
    assert wait_for(lambda: in_queue(petrel, qid)), petrel.queue_files()
    assert blocker.read_text() == "not a directory\n"
    blocker.unlink()
    msgs = petrel.wait_messages("bob@localhost", 1, timeout=20)
    assert len(msgs) == 1, petrel.log()
    assert split_prepended(msgs[0])[1] == BODY_LF
    assert wait_queue_empty(petrel, timeout=10), petrel.queue_files()
    time.sleep(2.5)  # more retries would have happened by now
    assert len(petrel.messages("bob@localhost")) == 1
    assert re.search(rf"{qid}: to=<bob@localhost>, relay=local, .*status=sent", petrel.log())
    assert "status=bounced" not in petrel.log()


def test_full_spool_gives_452_then_recovers(petrel_factory):
    p = petrel_factory(start=False)
    mount_tmpfs(p.spool)
    try:
        p.start()
        fillers = fill_fs(p.spool)
        # Over 256 KiB: not held in memory for delivery at the commit, so it needs the spool.
        big = (b"Subject: no room\r\n\r\n"
               + b"".join(b"line %06d of a message that does not fit\r\n" % i
                          for i in range(8000)))
        with smtp(p) as s:
            s.ehlo("client.example")
            assert s.docmd("MAIL FROM:<sender@example.org>")[0] == 250
            assert s.docmd("RCPT TO:<someone@localhost>")[0] == 250
            try:
                code, resp = s.data(big)
            except smtplib.SMTPResponseException as e:  # refused at DATA already: also not a 250
                code, resp = e.smtp_code, e.smtp_error
            assert 400 <= code < 500, (code, resp)
            assert code == 452 and resp.startswith(b"4.3.1"), (code, resp)
            # the session goes on
            assert s.noop()[0] == 250
        assert p.proc.poll() is None
        # one line for the refused message, not one for each of its ~5 body writes
        assert p.log().count("spool write failed") <= 1, p.log()[-3000:]
        assert all_maildir_files(p.mail_root) == []
        for f in fillers:
            f.unlink()
        qid = send(p, "sender@example.org", "someone@localhost", big)
        msgs = p.wait_messages("someone@localhost", 1)
        assert len(msgs) == 1
        assert f" id {qid}\n".encode() in split_prepended(msgs[0])[0]
        assert split_prepended(msgs[0])[1] == big.replace(b"\r\n", b"\n")
        assert wait_queue_empty(p)
        # the refused message left nothing behind in the spool
        assert wait_for(lambda: not spool_tmp_files(p), 5), spool_tmp_files(p)
        assert p.proc.poll() is None
        rc = p.stop()
        assert rc == 0, p.log()[-3000:]
    finally:
        if p.proc is not None:
            p.stop()
        subprocess.run(["umount", "-l", str(p.spool)], capture_output=True, timeout=20)


# ---- volume ------------------------------------------------------------------

MARK_RE = re.compile(rb"X-Marker: (T\d+-M\d+)\n")


def test_50_sessions_x_20_messages_exactly_once(petrel_factory):
    p = petrel_factory(max_connections_per_ip=200)
    nthreads, per = 50, 20
    errors = []
    start = threading.Barrier(nthreads)

    def worker(t):
        try:
            with smtp(p, timeout=60) as s:
                start.wait(timeout=30)
                s.ehlo(f"client{t}.example")
                for m in range(per):
                    rcpt = f"load{(t + m) % 7}@localhost"
                    body = (f"From: t{t}@example.org\r\nTo: {rcpt}\r\n"
                            f"Message-Id: <T{t}-M{m}@load.example>\r\n"
                            f"X-Marker: T{t}-M{m}\r\nSubject: load {t} {m}\r\n\r\n"
                            f"body of T{t}-M{m}\r\n").encode()
                    s.sendmail(f"t{t}@example.org", [rcpt], body)
        except Exception as e:  # noqa: BLE001 — reported below
            errors.append((t, repr(e)))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(nthreads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not any(th.is_alive() for th in threads), "sender threads hang"
    assert not errors, errors[:5]
    expected = {f"T{t}-M{m}" for t in range(nthreads) for m in range(per)}
    wait_for(lambda: len(all_maildir_files(p.mail_root)) >= len(expected), timeout=60,
             interval=0.2)
    assert wait_queue_empty(p, timeout=30), p.queue_files()[:10]
    counts = marker_counts(p.mail_root, MARK_RE)
    missing = expected - set(counts)
    dups = {k: v for k, v in counts.items() if v != 1}
    assert not missing, sorted(missing)[:20]
    assert not dups, dups
    assert set(counts) == expected
    assert len(all_maildir_files(p.mail_root)) == len(expected)


def _big_body(size, seed=20):
    """About size octets of printable CRLF lines (< 998 octets), some starting with '.'.

    The 998-octet edge is test_dot_stuffed_998_octet_line's business."""
    import random
    rnd = random.Random(seed)
    table = bytes(0x20 + (i % 95) for i in range(256))
    raw = os.urandom(size + size // 8).translate(table)
    lines = [b"Subject: twenty mebibytes", b"Message-Id: <big@example.org>", b""]
    pos = 0
    n = 0
    total = 0
    while total < size:
        ln = rnd.randint(0, 990)
        line = raw[pos:pos + ln]
        pos += ln
        n += 1
        if n % 37 == 0:
            line = b"." + line[:989]
        elif n % 101 == 0:
            line = b"."
        elif n % 103 == 0:
            line = b".."
        lines.append(line)
        total += len(line) + 2
    return b"\r\n".join(lines) + b"\r\n"


def test_20mib_message_byte_exact(petrel):
    body = _big_body(20 * 1024 * 1024)
    assert len(body) > 20 * 1024 * 1024
    stuffed = body.replace(b"\r\n.", b"\r\n..")
    assert not stuffed.startswith(b".")
    s, greeting = petrel.connect(timeout=120)
    try:
        assert greeting.startswith("220")
        s.sendall(b"EHLO big.example\r\n")
        assert recv_reply(s).startswith("250")
        s.sendall(b"MAIL FROM:<big@example.org> SIZE=%d\r\nRCPT TO:<someone@localhost>\r\n"
                  b"DATA\r\n" % len(body))
        replies = recv_replies(s, 3)
        assert [r[:3] for r in replies] == ["250", "250", "354"], replies
        s.sendall(stuffed + b".\r\n")
        reply = recv_reply(s, timeout=120)
        assert reply.startswith("250"), reply
        qid = queue_id(reply)
        s.sendall(b"QUIT\r\n")
        recv_reply(s)
    finally:
        s.close()
    msgs = petrel.wait_messages("someone@localhost", 1, timeout=60)
    assert len(msgs) == 1
    head, got = split_prepended(msgs[0])
    assert f" id {qid}\n".encode() in head
    want = body.replace(b"\r\n", b"\n")
    assert len(got) == len(want)
    assert got == want


@pytest.mark.parametrize("line", [b"x" * 998, b"." + b"y" * 997, b".." + b"z" * 996],
                         ids=["plain", "dot", "two-dots"])
def test_998_octet_line_accepted_even_when_dot_stuffed(petrel, line):
    """RFC 5321 4.5.3.1.6: 1000 octets with CRLF, "not counting the leading dot
    duplicated for transparency"."""
    body = b"Subject: long line\r\n\r\n" + line + b"\r\nend\r\n"
    qid = send(petrel, "sender@example.org", "someone@localhost", body)
    msgs = petrel.wait_messages("someone@localhost", 1)
    assert len(msgs) == 1
    head, got = split_prepended(msgs[0])
    assert f" id {qid}\n".encode() in head
    assert got == body.replace(b"\r\n", b"\n")


# ---- mail forwarding loops ----------------------------------------------------------

def _loop_body(head, size=0):
    """A message with the header fields head (CRLF lines) over BODY's, padded to about size
    octets: over 256 KiB it is not held in memory but delivered from its queue file."""
    body = head + BODY
    if size > len(body):
        body += b"".join(b"padding line %06d of a message that is delivered from disk\r\n" % i
                         for i in range((size - len(body)) // 60 + 1))
    return body


def _bounce(p, sender):
    """The one bounce in sender's Maildir (Return-Path: <>), as text."""
    msgs = wait_for(lambda: [m for m in p.messages(sender) if m.startswith(b"Return-Path: <>\n")])
    assert msgs and len(msgs) == 1, p.log()[-3000:]
    return msgs[0].decode(errors="replace")


@pytest.mark.parametrize("size", [0, 300 * 1024], ids=["in-memory", "queue-file"])
def test_delivered_to_loop_bounces_that_recipient_only(petrel, size):
    """A message that already went through x's mailbox (a Delivered-To: field names it, in
    any case, folded or not) is not delivered to x again: x bounces with 5.4.6, as with
    Postfix's local(8); the other recipients of the same message get their copies."""
    head = (b"Received: from elsewhere.test by mx.elsewhere.test; Sat, 28 Nov 2026 12:00:00 +0000\r\n"
            b"DELIVERED-TO: X@LocalHost\r\n"
            b"Delivered-To:\r\n\t<y@example.test>\r\n")
    body = _loop_body(head, size)
    qid = send(petrel, "sender@localhost", ["x@localhost", "z@localhost", "y@example.test"], body)
    msgs = petrel.wait_messages("z@localhost", 1)
    assert len(msgs) == 1, petrel.log()[-3000:]
    assert split_prepended(msgs[0])[1] == body.replace(b"\r\n", b"\n")
    for rcpt in ("x@localhost", "y@example.test"):
        assert wait_log(petrel, rf"{qid}: to=<{re.escape(rcpt)}>, relay=local, delay=\d+, "
                                rf"status=bounced \(mail forwarding loop for {re.escape(rcpt)}\)$"), \
            petrel.log()[-3000:]
    dsn = _bounce(petrel, "sender@localhost")
    assert "Status: 5.4.6" in dsn and "mail forwarding loop for x@localhost" in dsn, dsn
    assert "Final-Recipient: rfc822; x@localhost" in dsn, dsn
    assert "z@localhost" not in dsn, dsn
    assert wait_queue_empty(petrel), petrel.queue_files()
    assert petrel.messages("x@localhost") == []
    assert petrel.messages("y@example.test") == []
    assert len(petrel.messages("z@localhost")) == 1


def test_delivered_to_loop_for_an_alias(petrel_factory, tmp_path):
    """An alias the message was already forwarded for is refused as a whole (Postfix's
    local(8) checks the alias's address before expanding it); a Delivered-To: field in the
    body, or naming another address, is no loop."""
    aliases = tmp_path / "aliases"
    aliases.write_text("team@localhost: alice@localhost, bob@localhost\n")
    p = petrel_factory(aliases_file=str(aliases))
    looped = send(p, "sender@localhost", "team@localhost",
                  b"Delivered-To: team@localhost\r\n" + BODY)
    for user in ("alice", "bob"):
        assert wait_log(p, rf"{looped}: to=<{user}@localhost>, relay=local, delay=\d+, "
                           r"status=bounced \(mail forwarding loop for team@localhost\)$"), p.log()
    assert "mail forwarding loop for team@localhost" in _bounce(p, "sender@localhost")
    body = b"Delivered-To: teams@localhost\r\n" + BODY + b"Delivered-To: team@localhost\r\n"
    send(p, "sender@localhost", "team@localhost", body)
    for user in ("alice", "bob"):
        msgs = p.wait_messages(f"{user}@localhost", 1)
        assert len(msgs) == 1, p.log()
        assert split_prepended(msgs[0])[1] == body.replace(b"\r\n", b"\n")
    assert wait_queue_empty(p), p.queue_files()


@pytest.mark.parametrize("size", [0, 300 * 1024], ids=["in-memory", "queue-file"])
def test_too_many_received_fields_bounce_on_local_delivery(petrel, size):
    """More than 50 Received: fields bounce 5.4.6 for local recipients too, as for relayed
    ones; 50 are delivered."""
    def hops(n):
        return b"".join(b"Received: from hop%d.test by hop%d.test; Sat, 28 Nov 2026 12:00:00 "
                        b"+0000\r\n" % (i, i + 1) for i in range(n))

    looped = send(petrel, "sender@localhost", ["x@localhost", "y@localhost"],
                  _loop_body(hops(51), size))
    for rcpt in ("x@localhost", "y@localhost"):
        assert wait_log(petrel, rf"{looped}: to=<{rcpt}>, relay=local, delay=\d+, "
                                r"status=bounced \(Too many hops: mail forwarding loop\)$"), \
            petrel.log()[-3000:]
    dsn = _bounce(petrel, "sender@localhost")
    assert "Status: 5.4.6" in dsn and "Too many hops" in dsn, dsn
    body = _loop_body(hops(50), size)
    send(petrel, "sender@localhost", "x@localhost", body)
    msgs = petrel.wait_messages("x@localhost", 1)
    assert len(msgs) == 1, petrel.log()[-3000:]
    assert split_prepended(msgs[0])[1] == body.replace(b"\r\n", b"\n")
    assert petrel.messages("y@localhost") == []
    assert wait_queue_empty(petrel), petrel.queue_files()


# ---- BDAT ---------------------------------------------------------------------------

def _bdat(p, chunks, rcpt="someone@localhost"):
    """Sends one message in BDAT chunks (the last one LAST) over a raw session; returns
    the queue id of its 250."""
    s, greeting = p.connect()
    try:
        assert greeting.startswith("220")
        s.sendall(b"EHLO client.example\r\n")
        assert "CHUNKING" in recv_reply(s)
        s.sendall(b"MAIL FROM:<sender@example.org>\r\nRCPT TO:<%s>\r\n" % rcpt.encode())
        assert [r[:3] for r in recv_replies(s, 2)] == ["250", "250"]
        for k, chunk in enumerate(chunks):
            last = b" LAST" if k == len(chunks) - 1 else b""
            s.sendall(b"BDAT %d%s\r\n" % (len(chunk), last) + chunk)
            reply = recv_reply(s, timeout=60)
            assert reply.startswith("250"), reply
        s.sendall(b"QUIT\r\n")
        recv_reply(s)
    finally:
        s.close()
    return queue_id(reply)


@pytest.mark.parametrize("chunks", [
    [b"Subject: x\r\n\r\nabc", b""],
    [b"Subject: x\r\n\r\nabc"],
    [b"Subject: x\r\n\r\n", b"ab", b"c"],
    [b"Subject: x\r\n\r\n" + b"".join(b"line %06d of a long message\r\n" % i
                                      for i in range(12000)), b"abc"],
], ids=["then-BDAT-0-LAST", "one-chunk", "three-chunks", "queue-file"])
def test_bdat_message_without_final_crlf_is_written_as_whole_lines(petrel, chunks):
    """BDAT lets a message end inside a line; its Maildir file still ends with a line end,
    as Postfix writes it (over 256 KiB the copy is written from the queue file)."""
    body = b"".join(chunks)
    qid = _bdat(petrel, chunks)
    msgs = petrel.wait_messages("someone@localhost", 1)
    assert len(msgs) == 1, petrel.log()[-3000:]
    head, got = split_prepended(msgs[0])
    assert f" id {qid}\n".encode() in head
    assert got == body.replace(b"\r\n", b"\n") + b"\n"
    assert got.endswith(b"\nabc\n")
    assert wait_queue_empty(petrel)
