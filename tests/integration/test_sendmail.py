"""`petrel sendmail` and the binary called as `sendmail`: what cron, PHP's
mail() and mutt do with it.  Messages go through spool/incoming/ to a
running server (woken by SIGUSR1) or wait there for the next start; exit
codes are sendmail's (sysexits.h)."""
import os
import pwd
import re
import select
import signal
import subprocess
import tempfile
import time

from pathlib import Path

import pytest

from conftest import PETREL_BIN
from mailtest import split_prepended, wait_for

EX_USAGE, EX_DATAERR, EX_CANTCREAT, EX_TEMPFAIL, EX_CONFIG = 64, 65, 73, 75, 78
HOST = "mx.petrel.test"  # the fixture's hostname


def sendmail(p, *args, input=b"", argv0=None, conf=True, timeout=30):
    """Runs `petrel sendmail -c CONF ARGS` (or argv0 ARGS when given) with input on stdin."""
    cmd = [str(argv0)] if argv0 else [str(PETREL_BIN), "sendmail"]
    if conf:
        cmd += ["-c", str(p.conf_path)]
    if isinstance(input, str):
        input = input.encode()
    return subprocess.run(cmd + list(args), input=input, capture_output=True, timeout=timeout)


def message(p, addr, count=1, timeout=15):
    """The message part (after Return-Path/Delivered-To/Received) of addr's newest mail."""
    msgs = p.wait_messages(addr, count, timeout=timeout)
    assert len(msgs) >= count, p.log()
    return split_prepended(msgs[-1])


def header_section(msg):
    return msg.split(b"\n\n", 1)[0]


def incoming(p):
    d = p.spool / "incoming"
    return sorted(x.name for x in d.iterdir()) if d.is_dir() else []


def login():
    return pwd.getpwuid(os.getuid()).pw_name


def test_t_to_cc_bcc_delivers_each_and_drops_bcc(petrel):
    r = sendmail(petrel, "-t", input=(
        "To: Alice <alice@example.test>, \"Doe, Bob\" <bob@example.test>\n"
        "Cc: team: carol@example.test;\n"
        "Bcc: dave@example.test,\n"
        "  erin@example.test\n"
        "Subject: hello\n"
        "\n"
        "the body\n"))
    assert r.returncode == 0, r.stderr
    for rcpt in ["alice", "bob", "carol", "dave", "erin"]:
        head, msg = message(petrel, f"{rcpt}@example.test")
        assert f"Delivered-To: {rcpt}@example.test".encode() in head
        hdr = header_section(msg)
        assert not re.search(rb"(?im)^bcc:", hdr), msg
        assert b"erin" not in msg and b"dave" not in msg, msg
        assert b"Subject: hello\n" in hdr
        assert msg.endswith(b"\n\nthe body\n"), msg
    # the envelope came from the local protocol
    assert re.search(rb"with local id [0-9A-F]{16}", head), head


def test_missing_from_date_message_id_are_added(petrel):
    r = sendmail(petrel, "-F", "Jo Ann", "rcpt@example.test", input="Subject: x\n\nbody\n")
    assert r.returncode == 0, r.stderr
    head, msg = message(petrel, "rcpt@example.test")
    hdr = header_section(msg).decode()
    assert f'From: "Jo Ann" <{login()}@{HOST}>' in hdr, hdr
    assert re.search(r"(?m)^Date: \w{3}, \d{1,2} \w{3} \d{4} \d\d:\d\d:\d\d [+-]\d{4}$", hdr), hdr
    assert re.search(rf"(?m)^Message-ID: <[0-9A-F]{{16}}@{re.escape(HOST)}>$", hdr), hdr
    assert f"Return-Path: <{login()}@{HOST}>".encode() in head


def test_present_from_date_message_id_are_kept(petrel):
    given = ("From: Someone <someone@example.org>\n"
             "Date: Mon, 1 Jan 2024 00:00:00 +0000\n"
             "Message-ID: <given@example.org>\n"
             "Subject: kept\n\nbody\n")
    r = sendmail(petrel, "rcpt@example.test", input=given)
    assert r.returncode == 0, r.stderr
    _, msg = message(petrel, "rcpt@example.test")
    assert msg == given.encode(), msg


def test_lone_dot_ends_input_without_i(petrel):
    r = sendmail(petrel, "a@example.test", input="Subject: dot\n\nbefore\n.\nafter\n")
    assert r.returncode == 0, r.stderr
    _, msg = message(petrel, "a@example.test")
    assert msg.endswith(b"\n\nbefore\n"), msg
    assert b"after" not in msg


@pytest.mark.parametrize("flag", ["-i", "-oi"])
def test_lone_dot_kept_with_i(petrel, flag):
    r = sendmail(petrel, flag, "a@example.test", input="Subject: dot\n\nbefore\n.\nafter\n")
    assert r.returncode == 0, r.stderr
    _, msg = message(petrel, "a@example.test")
    assert msg.endswith(b"\n\nbefore\n.\nafter\n"), msg


def test_dot_lines_delivered_exactly(petrel):
    body = "Subject: dots\n\n..two\n.one\n. space\n...\nend.\n"
    r = sendmail(petrel, "a@example.test", input=body)
    assert r.returncode == 0, r.stderr
    _, msg = message(petrel, "a@example.test")
    assert msg.endswith(b"\n\n..two\n.one\n. space\n...\nend.\n"), msg


def test_crlf_input_and_missing_final_newline(petrel):
    r = sendmail(petrel, "a@example.test", input=b"Subject: crlf\r\n\r\nline 1\r\nline 2")
    assert r.returncode == 0, r.stderr
    _, msg = message(petrel, "a@example.test")
    assert b"\r" not in msg
    assert msg.endswith(b"\n\nline 1\nline 2\n"), msg


def test_bare_cr_ends_a_line(petrel):
    """A bare CR is no line end in SMTP; passed on as it is, "\r.\r\n" could end the
    message early at a next hop that reads it so.  It becomes a line end here: the
    lone dot is an ordinary line (-i) the relay would dot-stuff."""
    r = sendmail(petrel, "-i", "a@example.test",
                 input=b"Subject: cr\n\ntext\r.\r\nMAIL FROM:<x@y>\r\nold\rmac\n")
    assert r.returncode == 0, r.stderr
    _, msg = message(petrel, "a@example.test")
    assert msg.endswith(b"\n\ntext\n.\nMAIL FROM:<x@y>\nold\nmac\n"), msg
    assert b"\r" not in msg


def test_long_lines_are_folded(petrel):
    """Lines over 998 octets (RFC 5322 2.1.1) are folded with CRLF SP, in the header
    section (a continuation of the field) as in the body; nothing is lost."""
    subject, body_line = "s" * 1500, "b" * 3000
    r = sendmail(petrel, "a@example.test",
                 input=f"Subject: {subject}\n\n{body_line}\nend\n")
    assert r.returncode == 0, r.stderr
    _, msg = message(petrel, "a@example.test")
    lines = msg.split(b"\n")
    assert max(len(x) for x in lines) <= 998, [len(x) for x in lines]
    hdr, body = msg.split(b"\n\n", 1)
    m = re.search(rb"(?m)^Subject: (s+)\n (s+)$", hdr)
    assert m and len(m[1]) + len(m[2]) == 1500, hdr
    assert body.replace(b"\n ", b"") == body_line.encode() + b"\nend\n", body[:100]


def test_empty_input(petrel):
    """Nothing on stdin: a message of the added fields only, delivered; exit 0."""
    r = sendmail(petrel, "a@example.test", input=b"")
    assert r.returncode == 0, r.stderr
    _, msg = message(petrel, "a@example.test")
    assert re.search(rb"(?m)^Message-ID: ", msg), msg


def test_no_header_section(petrel):
    """A body without fields gets the added fields and a separating blank line."""
    r = sendmail(petrel, "a@example.test", input="just text: here\nsecond line\n")
    assert r.returncode == 0, r.stderr
    _, msg = message(petrel, "a@example.test")
    hdr, body = msg.split(b"\n\n", 1)
    assert re.search(rb"(?m)^From: ", hdr) and re.search(rb"(?m)^Message-ID: ", hdr), msg
    assert body == b"just text: here\nsecond line\n"


def test_f_sets_return_path(petrel):
    r = sendmail(petrel, "-f", "owner@example.org", "a@example.test", input="Subject: f\n\nx\n")
    assert r.returncode == 0, r.stderr
    head, msg = message(petrel, "a@example.test")
    assert head.startswith(b"Return-Path: <owner@example.org>\n"), head
    assert b"From: owner@example.org\n" in msg
    r = sendmail(petrel, "-f<>", "a@example.test", input="Subject: null\n\nx\n")
    assert r.returncode == 0, r.stderr
    head, _ = message(petrel, "a@example.test", count=2)
    assert head.startswith(b"Return-Path: <>\n"), head


def test_default_sender_is_login_at_hostname(petrel):
    r = sendmail(petrel, "a@example.test", input="Subject: me\n\nx\n")
    assert r.returncode == 0, r.stderr
    head, _ = message(petrel, "a@example.test")
    assert head.startswith(f"Return-Path: <{login()}@{HOST}>\n".encode()), head


def test_bare_recipient_gets_first_local_domain(petrel):
    r = sendmail(petrel, "root", input="Subject: cron\n\nx\n")
    assert r.returncode == 0, r.stderr
    head, _ = message(petrel, "root@localhost")
    assert b"Delivered-To: root@localhost\n" in head


def test_invoked_through_a_symlink_named_sendmail(petrel, tmp_path):
    link = tmp_path / "bin" / "sendmail"
    link.parent.mkdir()
    link.symlink_to(PETREL_BIN)
    r = sendmail(petrel, "-oi", "-f", "cron@example.org", "a@example.test",
                 input="Subject: link\n\n.\nbody\n", argv0=link)
    assert r.returncode == 0, r.stderr
    head, msg = message(petrel, "a@example.test")
    assert head.startswith(b"Return-Path: <cron@example.org>\n")
    assert msg.endswith(b"\n\n.\nbody\n"), msg


def test_common_flags_are_accepted(petrel):
    r = sendmail(petrel, "-oem", "-odi", "-v", "-B8BITMIME", "-N", "never", "-oQ/tmp",
                 "-U", "-R", "hdrs", "-V", "envid", "-bm", "-ti", "a@example.test",
                 input="Subject: flags\n\n.\nok\n")
    assert r.returncode == 0, r.stderr
    assert b"queued as" in r.stderr  # -v
    assert b"-N" in r.stderr and b"ignored" in r.stderr  # a warning where it matters
    _, msg = message(petrel, "a@example.test")
    assert msg.endswith(b"\n\n.\nok\n"), msg


@pytest.mark.parametrize("args,stdin", [
    (["bad address@@example.test"], "Subject: x\n\n"),
    (["a@example.test\r\nRCPT TO:<x@y>"], "Subject: x\n\n"),
    (["a@b@example.test"], "Subject: x\n\n"),
    (["-f", "bad sender@@x", "a@example.test"], "Subject: x\n\n"),
    (["-t"], "To: ok@example.test, bad@@example.test\n\nbody\n"),
    (["-t"], "To: <unterminated@example.test\n\nbody\n"),
    (["a@example.test"], "Subject: nul\n\nbad \0 octet\n"),
], ids=["two-ats-and-space", "crlf-injection", "a@b@c", "bad-sender", "bad-header-addr",
        "unterminated-angle", "nul-octet"])
def test_bad_input_is_dataerr(petrel, args, stdin):
    r = sendmail(petrel, *args, input=stdin)
    assert r.returncode == EX_DATAERR, (r.returncode, r.stderr)
    assert r.stderr
    assert incoming(petrel) == [] and petrel.queue_files() == []


@pytest.mark.parametrize("args,stdin", [
    ([], "Subject: x\n\nbody\n"),
    (["-t"], "Subject: no recipients\n\nbody\n"),
    (["-t"], "To: undisclosed-recipients:;\n\nbody\n"),
    (["-Z", "a@example.test"], "Subject: x\n\n"),
    (["-bs", "a@example.test"], ""),
    (["-bx"], ""),
    (["-f"], ""),
], ids=["none", "t-without-fields", "t-empty-group", "unknown-option", "bs-with-recipient",
        "unknown-mode", "f-without-value"])
def test_usage_errors(petrel, args, stdin):
    r = sendmail(petrel, *args, input=stdin)
    assert r.returncode == EX_USAGE, (r.returncode, r.stderr)
    assert incoming(petrel) == []


def test_bad_config_is_ex_config(tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text("no_such_key = 1\n")
    r = subprocess.run([str(PETREL_BIN), "sendmail", "-c", str(conf), "a@example.test"],
                       input=b"x\n", capture_output=True, timeout=20)
    assert r.returncode == EX_CONFIG, r.stderr
    assert str(conf).encode() in r.stderr


def test_max_message_size(petrel_factory):
    p = petrel_factory(max_message_size="4K")
    r = sendmail(p, "a@example.test", input="Subject: big\n\n" + ("x" * 70 + "\n") * 100)
    assert r.returncode == EX_DATAERR, r.stderr
    assert b"max_message_size" in r.stderr
    assert incoming(p) == [], "the unfinished drop-off must be removed"
    r = sendmail(p, "a@example.test", input="Subject: small\n\nfits\n")
    assert r.returncode == 0, r.stderr
    message(p, "a@example.test")


def test_large_body_streams(petrel):
    line = "0123456789" * 9 + "\n"
    body = "Subject: large\n\n" + line * 60000  # ~5.5 MB in ~ 64 KiB reads
    r = sendmail(petrel, "a@example.test", input=body)
    assert r.returncode == 0, r.stderr
    _, msg = message(petrel, "a@example.test", timeout=30)
    assert msg.endswith(b"\n\n" + line.encode() * 60000)


def test_unusable_spool_is_cantcreat(petrel_factory, tmp_path):
    """A spool that cannot be created (here: below a regular file, which stops root too)."""
    (tmp_path / "plain-file").write_text("not a directory\n")
    p = petrel_factory(start=False, spool_dir=str(tmp_path / "plain-file" / "spool"))
    p.write_conf()
    r = sendmail(p, "a@example.test", input="Subject: x\n\n")
    assert r.returncode == EX_CANTCREAT, r.stderr
    assert b"spool" in r.stderr


def test_while_the_server_is_stopped(petrel_factory):
    p = petrel_factory(start=False)
    p.write_conf()
    r = sendmail(p, "-v", "a@example.test", input="Subject: later\n\nqueued while down\n")
    assert r.returncode == 0, r.stderr
    assert b"no petrel server is running" in r.stderr  # said with -v only, not an error
    assert len(incoming(p)) == 1 and re.fullmatch(r"[0-9A-F]{16}", incoming(p)[0])
    assert p.messages("a@example.test") == []
    p.start()
    _, msg = message(p, "a@example.test")
    assert msg.endswith(b"\n\nqueued while down\n")
    assert wait_for(lambda: incoming(p) == []), incoming(p)



@pytest.mark.parametrize("when", ["running", "at start"])
def test_alias_with_a_remote_target_is_relayed(petrel_factory, tmp_path, when):
    """root@localhost aliased to a remote address (the usual cron setup): the message
    from sendmail is expanded when the server picks it up, as one over SMTP is at DATA,
    and the remote target goes to the relay (here a relayhost that refuses connections:
    deferred by the relay, not held as an alias that "became remote")."""
    aliases = tmp_path / "aliases"
    aliases.write_text("root@localhost: admin@remote.example, carol@localhost\n")
    p = petrel_factory(aliases_file=str(aliases), relayhost="[127.0.0.1]:1",
                       start=when == "running")
    p.write_conf()
    r = sendmail(p, "root", input="Subject: cron\n\noutput\n")
    assert r.returncode == 0, r.stderr
    if when == "at start":  # cron mail sent at boot, before the server is up
        p.start()
    assert len(p.wait_messages("carol@localhost", 1)) == 1, p.log()
    assert wait_for(lambda: re.search(
        r"to=<admin@remote\.example>, relay=[^,]*, delay=\d+, status=deferred \(4\.4\.1 .*"
        r"connect: Connection refused\)", p.log()), 15), p.log()
    assert "became remote" not in p.log()
    assert not p.maildir("root@localhost").exists()


def test_unknown_user_with_users_file_bounces(petrel_factory, tmp_path):
    """With users_file, an address that is neither a user nor an alias is refused at RCPT
    over SMTP; given to sendmail it bounces to the sender (no Maildir is made for it)."""
    users = tmp_path / "users"
    users.write_text("alice@localhost:{PLAIN}secret\n")
    p = petrel_factory(users_file=str(users))
    r = sendmail(p, "-f", "alice@localhost", "nosuchuser@localhost", "alice@localhost",
                 input="Subject: hello\n\nhi\n")
    assert r.returncode == 0, r.stderr
    assert wait_for(lambda: re.search(
        r"to=<nosuchuser@localhost>, relay=local, delay=\d+, status=bounced "
        r"\(nosuchuser@localhost: unknown user\)", p.log()), 15), p.log()
    msgs = p.wait_messages("alice@localhost", 2)  # the message and the bounce
    assert len(msgs) == 2, p.log()
    assert any(b"Return-Path: <>" in m and b"nosuchuser@localhost" in m for m in msgs), msgs
    assert not p.maildir("nosuchuser@localhost").exists()


def test_same_mailbox_named_three_ways_gets_one_copy(petrel):
    """gina, Gina and gina+x are one mailbox: one copy, as over SMTP."""
    r = sendmail(petrel, "gina@localhost", "Gina@localhost", "gina+x@localhost",
                 input="Subject: once\n\nhi\n")
    assert r.returncode == 0, r.stderr
    assert len(petrel.wait_messages("gina@localhost", 1)) == 1
    time.sleep(1)
    assert len(petrel.messages("gina@localhost")) == 1, petrel.log()


@pytest.mark.parametrize("when", ["running", "at start"])
def test_pickup_refuses_links_and_foreign_files(petrel_factory, when):
    """incoming/ takes files from other users' processes: a symlink, a hard link, a FIFO,
    a file that is no drop file, and a drop file whose message has a bare CR (smuggling
    at a next hop) or whose sender holds a control character are refused and removed; one
    whose envelope claims to be expanded already is rewritten and checked.  All are
    removed (their targets untouched), by a running server and by the pickup at start;
    the server stays up and goes on picking up real ones."""
    users = Path(tempfile.mkdtemp()) / "users"
    users.write_text("a@example.test:{PLAIN}x\n")
    p = petrel_factory(start=when == "running", users_file=str(users))
    p.write_conf()
    inc = p.spool / "incoming"
    inc.mkdir(parents=True, exist_ok=True)
    secret = p.spool.parent / "secret"
    secret.write_text("not mail\n")
    (inc / "00000000000000A1").symlink_to(secret)
    os.link(secret, inc / "00000000000000A2")
    (inc / "00000000000000A3").write_text("garbage\n")
    os.mkfifo(inc / "00000000000000A4")
    head = (b"PETREL-QUEUE 1\nid 00000000000000A5\narrival 1\nsender x@example.test\n"
            b"rcpt a@example.test\n\n")
    (inc / "00000000000000A5").write_bytes(head + b"Subject: s\r\n\nfirst\r.\r\nMAIL\r\n")
    forged = (b"PETREL-QUEUE 1\nid 00000000000000A6\narrival 1\nsender x@example.test\n"
              b"rcpt nosuchuser@example.test\norcpt a@example.test\nhelo evil\n"
              b"client_addr 6.6.6.6\nprotocol ESMTPSA\nexpanded 1\n\n"
              b"Subject: forged\r\n\r\nforged\r\n")
    (inc / "00000000000000A6").write_bytes(forged)
    (inc / "00000000000000A7").write_bytes(head.replace(b"sender x@", b"sender \rx@")
                                           + b"Subject: s\r\n\r\nx\r\n")
    r = sendmail(p, "a@example.test", input="Subject: real\n\nreal\n")
    assert r.returncode == 0, r.stderr
    if when == "at start":
        p.start()
    assert len(p.wait_messages("a@example.test", 1)) == 1, p.log()
    assert wait_for(lambda: incoming(p) == [], 10), (incoming(p), p.log())
    for n in ("A1", "A2", "A4", "A5", "A7"):
        assert re.search(rf"pickup of 00000000000000{n}: refused", p.log()), p.log()
    # the forged envelope is rewritten: its recipient is checked, its origin is ours
    assert wait_for(lambda: re.search(r"to=<nosuchuser@example\.test>.*status=bounced "
                                      r"\(nosuchuser@example\.test: unknown user\)",
                                      p.log())), p.log()
    assert not p.maildir("nosuchuser@example.test").exists()
    assert secret.read_text() == "not mail\n"
    msgs = p.messages("a@example.test")
    assert len(msgs) == 1 and b"first\r." not in msgs[0] and b"6.6.6.6" not in msgs[0]
    assert p.proc.poll() is None


# ---- sendmail -bs: an SMTP session on stdin/stdout (Laravel, Symfony Mailer) ----------------

class BsSession:
    """`petrel sendmail -bs` on pipes, driven a command at a time: each reply must come
    while stdin is still open (the replies are flushed, not held until the end)."""

    def __init__(self, p, *args):
        self.proc = subprocess.Popen(
            [str(PETREL_BIN), "sendmail", "-c", str(p.conf_path), "-bs", *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.buf = b""

    def reply(self, timeout=10):
        """The next whole reply (all its lines, CRLF-separated), as str."""
        deadline = time.time() + timeout
        while True:
            lines = self.buf.split(b"\r\n")
            for i, line in enumerate(lines[:-1]):
                if line[3:4] == b" ":
                    self.buf = b"\r\n".join(lines[i + 1:])
                    return b"\r\n".join(lines[:i + 1]).decode()
            left = deadline - time.time()
            ready, _, _ = select.select([self.proc.stdout], [], [], max(left, 0))
            assert ready, f"no reply in {timeout}s; got so far {self.buf!r}"
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            assert chunk, f"stdout closed; got so far {self.buf!r}"
            self.buf += chunk

    def send(self, data):
        self.proc.stdin.write(data.encode() if isinstance(data, str) else data)
        self.proc.stdin.flush()

    def cmd(self, line):
        self.send(line + "\r\n")
        return self.reply()

    def finish(self, timeout=20):
        """Closes stdin, waits for the exit; returns (status, rest of stdout, stderr)."""
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, self.buf + out, err

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()


@pytest.fixture
def bs_sessions():
    """Starts BsSession(p, ...) and kills (by PID) any still running at the end."""
    started = []

    def start(p, *args):
        started.append(BsSession(p, *args))
        return started[-1]

    yield start
    for s in started:
        s.kill()


def bs_run(p, script, *args, timeout=30):
    """The whole script on stdin at once (a pipelining client); returns (status, reply
    lines, stderr)."""
    r = subprocess.run([str(PETREL_BIN), "sendmail", "-c", str(p.conf_path), "-bs", *args],
                       input=script.encode() if isinstance(script, str) else script,
                       capture_output=True, timeout=timeout)
    assert r.stdout.endswith(b"\r\n") or not r.stdout, r.stdout
    return r.returncode, r.stdout.decode().split("\r\n")[:-1], r.stderr


def test_bs_session_delivers_each_message_once(petrel_factory, bs_sessions, tmp_path):
    """A session a command at a time, as Symfony Mailer holds one: two transactions,
    one to a local user, one to an alias (expanded at pickup) and a foreign address
    (a local user may send anywhere).  Each 250 names the drop file's id; the MAIL FROM
    of the session, not -f, is the Return-Path; -i and -f change nothing."""
    aliases = tmp_path / "aliases"
    aliases.write_text("team@localhost: carol@localhost, dave@localhost\n")
    p = petrel_factory(aliases_file=str(aliases), relayhost="[127.0.0.1]:1")
    s = bs_sessions(p, "-i", "-f", "ignored@example.org")
    assert s.reply() == f"220 {HOST} ESMTP petrel"
    ehlo = s.cmd("EHLO app.example").split("\r\n")
    assert ehlo[0] == f"250-{HOST}"
    assert [x[4:] for x in ehlo[1:]] == ["PIPELINING", "SIZE 26214400", "ENHANCEDSTATUSCODES",
                                         "8BITMIME", "SMTPUTF8", "CHUNKING"], ehlo
    assert s.cmd("MAIL FROM:<app@example.org>") == "250 2.1.0 Ok"
    assert s.cmd("RCPT TO:<alice@example.test>") == "250 2.1.5 Ok"
    assert s.cmd("DATA") == "354 End data with <CR><LF>.<CR><LF>"
    s.send("From: app@example.org\r\nSubject: first\r\n\r\n..stuffed\r\n.\r\n")
    first = s.reply()
    assert re.fullmatch(r"250 2\.0\.0 Ok: queued as [0-9A-F]{16}", first), first
    assert s.cmd("MAIL FROM:<>") == "250 2.1.0 Ok"
    assert s.cmd("RCPT TO:<team@localhost>") == "250 2.1.5 Ok"
    assert s.cmd("RCPT TO:<someone@remote.example>") == "250 2.1.5 Ok"
    assert s.cmd("DATA").startswith("354 ")
    s.send("Subject: second\r\n\r\nto the team\r\n.\r\n")
    second = s.reply()
    assert re.fullmatch(r"250 2\.0\.0 Ok: queued as [0-9A-F]{16}", second), second
    assert second[-16:] != first[-16:]
    assert s.cmd("QUIT") == "221 2.0.0 Bye"
    status, rest, err = s.finish()
    assert (status, rest, err) == (0, b"", b"")

    head, msg = message(p, "alice@example.test")
    assert head.startswith(b"Return-Path: <app@example.org>\n"), head
    assert f"with local id {first[-16:]}".encode() in head, head
    assert msg == b"From: app@example.org\nSubject: first\n\n.stuffed\n", msg
    for rcpt in ("carol@localhost", "dave@localhost"):
        head, msg = message(p, rcpt)
        assert head.startswith(b"Return-Path: <>\n"), head
        assert f"with local id {second[-16:]}".encode() in head, head
        assert msg == b"Subject: second\n\nto the team\n", msg
    assert wait_for(lambda: re.search(r"to=<someone@remote\.example>, relay=[^,]*, delay=\d+, "
                                      r"status=deferred", p.log())), p.log()
    time.sleep(1)  # exactly once: nothing more comes
    for rcpt in ("alice@example.test", "carol@localhost", "dave@localhost"):
        assert len(p.messages(rcpt)) == 1, (rcpt, p.log())
    assert incoming(p) == []


def test_bs_pipelined_with_rset_and_refusals(petrel):
    """The whole session in one write: replies in order; RSET drops a transaction, a
    bad address gets its 501 and the session goes on; a bare LF in the body is refused
    after the end of data (550 5.6.0) as on the network, and so is a NUL (a drop file
    cannot hold one); a line over 1000 octets is refused too."""
    script = ("EHLO app.example\r\n"
              "MAIL FROM:<app@example.org>\r\nRCPT TO:<dropped@example.test>\r\nRSET\r\n"
              "DATA\r\n"
              "MAIL FROM:<bad address@@example.org>\r\n"
              "MAIL FROM:<app@example.org>\r\nRCPT TO:<not an@@address>\r\n"
              "RCPT TO:<kept@example.test>\r\nDATA\r\n"
              "Subject: kept\r\n\r\nkept body\r\n.\r\n"
              "MAIL FROM:<app@example.org>\r\nRCPT TO:<barelf@example.test>\r\nDATA\r\n"
              "Subject: bare\r\n\r\nline\n.\r\nMAIL FROM:<evil@x>\r\n.\r\n"
              "MAIL FROM:<app@example.org>\r\nRCPT TO:<nul@example.test>\r\nDATA\r\n"
              "Subject: nul\r\n\r\na\0b\r\n.\r\n"
              "MAIL FROM:<app@example.org>\r\nRCPT TO:<long@example.test>\r\nDATA\r\n"
              "Subject: long\r\n\r\n" + "x" * 999 + "\r\n.\r\n"
              "NOOP\r\nQUIT\r\n")
    status, replies, err = bs_run(petrel, script)
    assert status == 0, err
    assert replies[0] == f"220 {HOST} ESMTP petrel"
    finals = [r for r in replies[1:] if r[3:4] == " "]
    queued = "250 2.0.0 Ok: queued as"
    assert finals[:9] == [
        "250 CHUNKING", "250 2.1.0 Ok", "250 2.1.5 Ok", "250 2.0.0 Ok",
        "503 5.5.1 Error: need MAIL command", "501 5.1.7 Bad sender address syntax",
        "250 2.1.0 Ok", "501 5.1.3 Bad recipient address syntax", "250 2.1.5 Ok"], finals
    assert finals[9] == "354 End data with <CR><LF>.<CR><LF>"
    assert finals[10].startswith(queued), finals
    assert finals[11:15] == ["250 2.1.0 Ok", "250 2.1.5 Ok", "354 End data with <CR><LF>.<CR><LF>",
                             "550 5.6.0 Error: bare CR or LF in message; use CRLF line ends"]
    assert finals[15:19] == ["250 2.1.0 Ok", "250 2.1.5 Ok", "354 End data with <CR><LF>.<CR><LF>",
                             "550 5.6.0 Error: NUL octet in message"], finals
    assert finals[19:] == [
        "250 2.1.0 Ok", "250 2.1.5 Ok", "354 End data with <CR><LF>.<CR><LF>",
        "550 5.6.0 Error: message has a line over 1000 octets (RFC 5321 4.5.3.1.6)",
        "250 2.0.0 Ok", "221 2.0.0 Bye"], finals
    _, msg = message(petrel, "kept@example.test")
    assert msg == b"Subject: kept\n\nkept body\n"
    time.sleep(1)
    for refused in ("dropped", "barelf", "nul", "long"):
        assert petrel.messages(f"{refused}@example.test") == [], refused
    assert "evil@x" not in petrel.log()
    assert incoming(petrel) == [] and "pickup of" not in petrel.log()


def test_bs_recipient_limit_and_size(petrel_factory):
    """max_recipients (452 4.5.3 for the one over, as on the network) and
    max_message_size (SIZE advertised and enforced) are the server's."""
    p = petrel_factory(max_recipients="2", max_message_size="4K")
    status, replies, err = bs_run(p, (
        "EHLO app.example\r\nMAIL FROM:<a@example.org> SIZE=5000\r\n"
        "MAIL FROM:<a@example.org>\r\nRCPT TO:<r1@example.test>\r\nRCPT TO:<r2@example.test>\r\n"
        "RCPT TO:<r3@example.test>\r\nDATA\r\nSubject: big\r\n\r\n" + ("y" * 70 + "\r\n") * 100 +
        ".\r\nQUIT\r\n"))
    assert status == 0, err
    assert "250-SIZE 4096" in replies
    assert replies[-8:] == [
        "552 5.3.4 Message size exceeds fixed maximum message size", "250 2.1.0 Ok",
        "250 2.1.5 Ok", "250 2.1.5 Ok", "452 4.5.3 Error: too many recipients",
        "354 End data with <CR><LF>.<CR><LF>",
        "552 5.3.4 Error: message size exceeds fixed limit", "221 2.0.0 Bye"], replies
    assert incoming(p) == []


def test_bs_eof_in_the_middle_of_a_message(petrel, bs_sessions):
    """stdin ends inside DATA: the first message (ended) is delivered, the unfinished one
    is not, and no part of it stays in incoming/.  The exit status is 0, as Postfix's
    smtpd -S gives for a client that goes away; stderr says what was discarded."""
    s = bs_sessions(petrel)
    s.reply()
    s.send("HELO app.example\r\nMAIL FROM:<app@example.org>\r\nRCPT TO:<done@example.test>\r\n"
           "DATA\r\nSubject: done\r\n\r\nwhole\r\n.\r\n"
           "MAIL FROM:<app@example.org>\r\nRCPT TO:<cut@example.test>\r\nDATA\r\n"
           "Subject: cut\r\n\r\nhalf of it\r\n")
    for want in ("250 ", "250 ", "250 ", "354 ", "250 2.0.0 Ok: queued as", "250 ", "250 ",
                 "354 "):
        assert s.reply().startswith(want)
    assert [x.name for x in (petrel.spool / "incoming").iterdir() if x.name.startswith(".")]
    status, rest, err = s.finish()
    assert (status, rest) == (0, b""), (status, rest, err)
    assert b"end of input in state data; the unfinished message is discarded" in err, err
    assert message(petrel, "done@example.test")[1] == b"Subject: done\n\nwhole\n"
    time.sleep(1)
    assert petrel.messages("cut@example.test") == [], petrel.log()
    assert list((petrel.spool / "incoming").iterdir()) == []


def test_bs_signal_removes_the_unfinished_message(petrel, bs_sessions):
    """SIGTERM in the middle of a message: no part of it is left in incoming/."""
    s = bs_sessions(petrel)
    s.reply()
    s.send("EHLO a\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.test>\r\nDATA\r\nx\r\n")
    for _ in range(4):
        s.reply()
    s.proc.send_signal(signal.SIGTERM)
    status, _, err = s.finish()
    assert status == EX_TEMPFAIL, (status, err)
    assert b"interrupted" in err
    assert list((petrel.spool / "incoming").iterdir()) == []


def test_bs_idle_client_gets_421(petrel_factory, bs_sessions):
    """smtp_timeout applies as on the network: 421 4.4.2, then the end (exit 0)."""
    p = petrel_factory(smtp_timeout="1s")
    s = bs_sessions(p)
    s.reply()
    assert s.cmd("EHLO a").startswith("250")
    assert s.reply(timeout=10) == f"421 4.4.2 {HOST} Error: timeout exceeded"
    assert s.proc.wait(timeout=10) == 0


def test_bs_no_starttls_no_auth_smtputf8_carried(petrel, bs_sessions):
    """Neither STARTTLS nor AUTH exists here; an SMTPUTF8 transaction keeps its UTF-8
    envelope through the drop file."""
    s = bs_sessions(petrel)
    s.reply()
    s.cmd("EHLO a")
    assert s.cmd("STARTTLS") == "502 5.5.1 Error: command not implemented"
    assert s.cmd("AUTH PLAIN AGEAYg==") == "502 5.5.1 Error: authentication not enabled"
    assert s.cmd("MAIL FROM:<jos\u00e9@example.org> SMTPUTF8") == "250 2.1.0 Ok"
    assert s.cmd("RCPT TO:<utf@example.test>") == "250 2.1.5 Ok"
    s.cmd("DATA")
    s.send("Subject: caf\u00e9\r\n\r\nbody\r\n.\r\n")
    assert s.reply().startswith("250 2.0.0 Ok: queued as")
    assert s.cmd("QUIT") == "221 2.0.0 Bye"
    head, msg = message(petrel, "utf@example.test")
    assert head.startswith("Return-Path: <jos\u00e9@example.org>\n".encode()), head
    assert msg == "Subject: caf\u00e9\n\nbody\n".encode()
