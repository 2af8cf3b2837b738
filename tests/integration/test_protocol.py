"""The SMTP server side over real sockets: replies, codes and what gets delivered.

Every test checks the exact reply code and the enhanced status code (RFC 3463)
of what the server answers, and where a message is involved, what ends up in
the recipient's Maildir.  Clients: a raw socket (the Client class below),
Python's smtplib, swaks and curl.
"""
import re
import smtplib
import socket
import subprocess
import time

import pytest

MAX_DEFAULT = 25 * 1024 * 1024  # the default max_message_size (25M)


# ---- helpers -----------------------------------------------------------------


class Reply:
    """One SMTP reply: its code, the enhanced code of its last line and its lines."""

    def __init__(self, lines):
        self.lines = lines
        self.code = int(lines[-1][:3])
        m = re.match(r"\d{3}[ -](\d\.\d{1,3}\.\d{1,3})( |$)", lines[-1])
        self.enh = m.group(1) if m else None
        self.text = "\r\n".join(lines)

    def __repr__(self):
        return f"Reply({self.text!r})"


def expect(reply, code, enh=None):
    """Asserts the code and, when given, the enhanced code of every line of reply."""
    assert reply.code == code, reply
    for line in reply.lines:
        assert int(line[:3]) == code, reply
        if enh is not None:
            assert line[4:].startswith(enh + " ") or line[4:] == enh, reply
    return reply


class Client:
    """A raw SMTP client socket with a line buffer (replies are never mixed up)."""

    def __init__(self, server, source=None, timeout=10.0):
        self.sock = socket.create_connection(
            (server.host, server.port), timeout=timeout,
            source_address=(source, 0) if source else None)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.greeting = self.reply()

    def send(self, data):
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def _line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"connection closed; unparsed {self.buf[:200]!r}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode("utf-8", errors="replace")

    def reply(self):
        lines = []
        while True:
            line = self._line()
            lines.append(line)
            assert re.match(r"\d{3}[ -]|\d{3}$", line), lines
            if len(line) == 3 or line[3] == " ":
                return Reply(lines)

    def replies(self, n):
        return [self.reply() for _ in range(n)]

    def cmd(self, line):
        self.send((line.encode() if isinstance(line, str) else line) + b"\r\n")
        return self.reply()

    def ehlo(self, name="client.test"):
        return expect(self.cmd(f"EHLO {name}"), 250)

    def silent(self, wait=0.3):
        """True when nothing arrives within wait seconds."""
        if self.buf:
            return False
        self.sock.settimeout(wait)
        try:
            self.sock.recv(1, socket.MSG_PEEK)  # data, or the end of the connection
        except socket.timeout:
            return True
        finally:
            self.sock.settimeout(10.0)
        return False

    def closed_by_server(self, timeout=5.0):
        """True when the server closed the connection with nothing more to say."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        except socket.timeout:
            return False
        return data == b"" and self.buf == b""

    def close(self):
        self.sock.close()


def client(p, **kw):
    c = Client(p, **kw)
    expect(c.greeting, 220)
    return c


def stuff(data):
    """Dot-stuffs a CRLF body for DATA (RFC 5321 4.5.2)."""
    return re.sub(rb"(^|\r\n)\.", rb"\1..", data)


def content(msg):
    """The message as stored, without the Return-Path/Delivered-To/Received prefix."""
    lines = msg.split(b"\n")
    assert lines[0].startswith(b"Return-Path: <"), msg[:300]
    assert lines[1].startswith(b"Delivered-To: "), msg[:300]
    assert lines[2].startswith(b"Received: from "), msg[:300]
    i = 3
    while lines[i][:1] in (b" ", b"\t"):
        i += 1
    return b"\n".join(lines[i:])


def lf(data):
    return data.replace(b"\r\n", b"\n")


def transaction(c, sender, rcpts, body, params=""):
    """MAIL, RCPTs, DATA with body (CRLF-ended lines, not stuffed); returns the queue id."""
    expect(c.cmd(f"MAIL FROM:<{sender}>{params}"), 250, "2.1.0")
    for r in rcpts:
        expect(c.cmd(f"RCPT TO:<{r}>"), 250, "2.1.5")
    expect(c.cmd("DATA"), 354)
    assert body == b"" or body.endswith(b"\r\n")
    c.send(stuff(body) + b".\r\n")
    r = expect(c.reply(), 250, "2.0.0")
    m = re.match(r"250 2\.0\.0 Ok: queued as (\S+)$", r.lines[-1])
    assert m, r
    return m.group(1)


def begin(c, sender="sender@example.org", rcpts=("rcpt@localhost",), params=""):
    """EHLO, MAIL and RCPTs, all accepted."""
    c.ehlo()
    expect(c.cmd(f"MAIL FROM:<{sender}>{params}"), 250, "2.1.0")
    for r in rcpts:
        expect(c.cmd(f"RCPT TO:<{r}>"), 250, "2.1.5")


def assert_nothing_delivered(p, addr, settle=0.5):
    time.sleep(settle)
    assert p.messages(addr) == []


def wait_disconnects(p, n, timeout=5.0):
    """Waits until the server logged n disconnects (e.g. of wait_port's probe)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if p.log().count(": disconnect from") >= n:
            return
        time.sleep(0.02)
    raise AssertionError(f"fewer than {n} disconnects logged:\n{p.log()}")


BODY = b"Subject: test\r\nFrom: sender@example.org\r\n\r\nHello.\r\n"


# ---- greeting, EHLO, HELO -------------------------------------------------------


def test_greeting_220(petrel):
    c = Client(petrel)
    expect(c.greeting, 220)
    assert c.greeting.lines == ["220 mx.petrel.test ESMTP petrel"]


def test_ehlo_multiline_extensions(petrel):
    c = client(petrel)
    r = c.ehlo("client.test")
    assert len(r.lines) > 1
    assert r.lines[0] == "250-mx.petrel.test"
    assert all(l.startswith("250-") for l in r.lines[:-1]) and r.lines[-1].startswith("250 ")
    kw = [l[4:] for l in r.lines[1:]]
    for ext in ("PIPELINING", f"SIZE {MAX_DEFAULT}", "8BITMIME", "ENHANCEDSTATUSCODES",
                "SMTPUTF8", "CHUNKING"):
        assert ext in kw, r
    words = {k.split()[0].upper() for k in kw}
    assert "STARTTLS" not in words and "AUTH" not in words, r


def test_ehlo_size_follows_config(petrel_factory):
    p = petrel_factory(max_message_size="100K")
    r = client(p).ehlo()
    assert "250-SIZE 102400" in r.lines or "250 SIZE 102400" in r.lines, r


def test_ehlo_features_seen_by_smtplib(petrel):
    with smtplib.SMTP(petrel.host, petrel.port, timeout=10) as s:
        code, _ = s.ehlo("client.test")
        assert code == 250
        f = s.esmtp_features
        for ext in ("pipelining", "8bitmime", "enhancedstatuscodes", "smtputf8", "chunking"):
            assert ext in f, f
        assert f["size"] == str(MAX_DEFAULT)
        assert "starttls" not in f and "auth" not in f


def test_helo_250(petrel):
    c = client(petrel)
    r = c.cmd("HELO client.test")
    assert r.lines == ["250 mx.petrel.test"]
    qid = transaction(c, "a@example.org", ["helo@localhost"], BODY)
    msgs = petrel.wait_messages("helo@localhost", 1)
    assert len(msgs) == 1 and f" with SMTP id {qid}".encode() in msgs[0]


@pytest.mark.parametrize("verb", ["EHLO", "HELO"])
def test_helo_ehlo_without_argument_501(petrel, verb):
    c = client(petrel)
    expect(c.cmd(verb), 501, "5.5.4")
    expect(c.cmd(f"{verb} "), 501, "5.5.4")
    # still no HELO: MAIL is out of sequence
    expect(c.cmd("MAIL FROM:<a@example.org>"), 503, "5.5.1")
    expect(c.cmd(f"{verb} client.test"), 250)


# ---- MAIL and RCPT --------------------------------------------------------------


def test_mail_size_parameter(petrel):
    c = client(petrel)
    c.ehlo()
    expect(c.cmd("MAIL FROM:<a@example.org> SIZE=1000"), 250, "2.1.0")
    expect(c.cmd("RSET"), 250, "2.0.0")
    expect(c.cmd(f"MAIL FROM:<a@example.org> SIZE={MAX_DEFAULT}"), 250, "2.1.0")


def test_mail_size_over_max_552_at_mail(petrel_factory):
    p = petrel_factory(max_message_size="100K")
    c = client(p)
    c.ehlo()
    expect(c.cmd("MAIL FROM:<a@example.org> SIZE=102401"), 552, "5.3.4")
    expect(c.cmd("MAIL FROM:<a@example.org> SIZE=99999999999999"), 552, "5.3.4")
    # 20 digits are a valid size-value (RFC 1870 6) even past 2^64-1: too big, not bad syntax
    expect(c.cmd("MAIL FROM:<a@example.org> SIZE=18446744073709551616"), 552, "5.3.4")
    expect(c.cmd("MAIL FROM:<a@example.org> SIZE=99999999999999999999"), 552, "5.3.4")
    # no transaction was opened; a fitting one is accepted
    expect(c.cmd("RCPT TO:<x@localhost>"), 503, "5.5.1")
    expect(c.cmd("MAIL FROM:<a@example.org> SIZE=102400"), 250, "2.1.0")


def test_body_8bitmime_delivered_byte_exact(petrel):
    c = client(petrel)
    begin(c, rcpts=["eight@localhost"], params=" BODY=8BITMIME")
    octets = bytes(b for b in range(0x80, 0x100))
    body = (b"Subject: 8bit\r\nContent-Type: text/plain; charset=latin1\r\n"
            b"Content-Transfer-Encoding: 8bit\r\n\r\n"
            + octets + b"\r\n" + "Grüße, smörgåsbord ✓\r\n".encode() + octets[::-1] + b"\r\n")
    expect(c.cmd("DATA"), 354)
    c.send(body + b".\r\n")
    expect(c.reply(), 250, "2.0.0")
    msgs = petrel.wait_messages("eight@localhost", 1)
    assert len(msgs) == 1
    assert content(msgs[0]) == lf(body)


def test_body_7bit_parameter_accepted(petrel):
    c = client(petrel)
    c.ehlo()
    expect(c.cmd("MAIL FROM:<a@example.org> BODY=7BIT"), 250, "2.1.0")


def test_smtputf8_address_accepted_and_delivered(petrel):
    rcpt = "jösé@localhost"
    sender = "séndér@exämple.org"
    body = "Subject: ünïcödé\r\n\r\nhéllo\r\n".encode()
    with smtplib.SMTP(petrel.host, petrel.port, timeout=10) as s:
        s.ehlo("client.test")
        refused = s.sendmail(sender, [rcpt], body, mail_options=["SMTPUTF8", "BODY=8BITMIME"])
        assert refused == {}
    msgs = petrel.wait_messages(rcpt, 1)
    assert len(msgs) == 1
    assert msgs[0].startswith(f"Return-Path: <{sender}>\nDelivered-To: {rcpt}\n".encode())
    assert content(msgs[0]) == lf(body)


def test_smtputf8_raw_replies(petrel):
    c = client(petrel)
    c.ehlo()
    expect(c.cmd("MAIL FROM:<séndér@exämple.org> SMTPUTF8".encode()), 250, "2.1.0")
    expect(c.cmd("RCPT TO:<jösé@localhost>".encode()), 250, "2.1.5")


def test_utf8_address_without_smtputf8_553(petrel):
    c = client(petrel)
    c.ehlo()
    expect(c.cmd("MAIL FROM:<séndér@example.org>".encode()), 553, "5.6.7")
    expect(c.cmd("MAIL FROM:<a@example.org>"), 250, "2.1.0")
    expect(c.cmd("RCPT TO:<jösé@localhost>".encode()), 553, "5.6.7")
    expect(c.cmd("RCPT TO:<ascii@localhost>"), 250, "2.1.5")


def test_body_binarymime_501(petrel):
    c = client(petrel)
    c.ehlo()
    expect(c.cmd("MAIL FROM:<a@example.org> BODY=BINARYMIME"), 501, "5.5.4")
    expect(c.cmd("MAIL FROM:<a@example.org> BODY=9BIT"), 501, "5.5.4")
    expect(c.cmd("MAIL FROM:<a@example.org>"), 250, "2.1.0")


@pytest.mark.parametrize("param", ["FOO=BAR", "XYZZY", "AUTH=<>", "RET=HDRS"])
def test_unknown_mail_parameter_555(petrel, param):
    c = client(petrel)
    c.ehlo()
    expect(c.cmd(f"MAIL FROM:<a@example.org> {param}"), 555, "5.5.4")
    expect(c.cmd("MAIL FROM:<a@example.org>"), 250, "2.1.0")


@pytest.mark.parametrize("param", ["NOTIFY=NEVER", "FOO=BAR", "ORCPT=rfc822;x@localhost"])
def test_rcpt_parameter_555(petrel, param):
    c = client(petrel)
    begin(c, rcpts=[])
    expect(c.cmd(f"RCPT TO:<x@localhost> {param}"), 555, "5.5.4")
    expect(c.cmd("RCPT TO:<x@localhost>"), 250, "2.1.5")


@pytest.mark.parametrize("line,enh", [
    ("MAIL FROM:<a b@example.org>", "5.1.7"),
    ("MAIL FROM:<a@@example.org>", "5.1.7"),
    ("MAIL FROM:<a@example..org>", "5.1.7"),
    ("MAIL FROM:a@example.org", "5.5.2"),
    ("MAIL FROM <a@example.org>", "5.5.2"),
    ("MAIL TO:<a@example.org>", "5.5.2"),
])
def test_bad_sender_syntax_501(petrel, line, enh):
    c = client(petrel)
    c.ehlo()
    expect(c.cmd(line), 501, enh)
    expect(c.cmd("MAIL FROM:<a@example.org>"), 250, "2.1.0")


@pytest.mark.parametrize("line,enh", [
    ("RCPT TO:<@>", "5.1.3"),
    ("RCPT TO:<x@>", "5.1.3"),
    ("RCPT TO:<x y@localhost>", "5.1.3"),
    ("RCPT TO:<>", "5.1.3"),
    ("RCPT TO:x@localhost", "5.5.2"),
    ("RCPT FROM:<x@localhost>", "5.5.2"),
])
def test_bad_recipient_syntax_501(petrel, line, enh):
    c = client(petrel)
    begin(c, rcpts=[])
    expect(c.cmd(line), 501, enh)
    expect(c.cmd("RCPT TO:<x@localhost>"), 250, "2.1.5")


def test_rcpt_several_users_all_delivered(petrel):
    rcpts = ["ann@localhost", "ben@localhost", "cat@example.test"]
    c = client(petrel)
    c.ehlo()
    qid = transaction(c, "a@example.org", rcpts, BODY)
    expect(c.cmd("QUIT"), 221, "2.0.0")
    for r in rcpts:
        msgs = petrel.wait_messages(r, 1)
        assert len(msgs) == 1, r
        assert msgs[0].startswith(f"Return-Path: <a@example.org>\nDelivered-To: {r}\n".encode())
        assert f" id {qid}".encode() in msgs[0]
        assert content(msgs[0]) == lf(BODY)
    time.sleep(0.3)
    assert all(len(petrel.messages(r)) == 1 for r in rcpts)


def test_null_sender_accepted(petrel):
    c = client(petrel)
    c.ehlo()
    expect(c.cmd("MAIL FROM:<>"), 250, "2.1.0")
    expect(c.cmd("RCPT TO:<bounce@localhost>"), 250, "2.1.5")
    expect(c.cmd("DATA"), 354)
    c.send(BODY + b".\r\n")
    expect(c.reply(), 250, "2.0.0")
    msgs = petrel.wait_messages("bounce@localhost", 1)
    assert len(msgs) == 1 and msgs[0].startswith(b"Return-Path: <>\n")


# ---- DATA -------------------------------------------------------------------------


def test_data_354_and_dot_unstuffing_smtplib(petrel):
    body = (b"Subject: dots\r\n\r\n.hello\r\n..double\r\n.\r\nx.\r\n"
            b". space\r\n...\r\nend\r\n")
    with smtplib.SMTP(petrel.host, petrel.port, timeout=10) as s:
        s.ehlo("client.test")
        assert s.mail("a@example.org")[0] == 250
        assert s.rcpt("dots@localhost")[0] == 250
        code, msg = s.data(body)  # smtplib sends DATA, expects 354, stuffs the dots
        assert code == 250 and msg.startswith(b"2.0.0 Ok: queued as ")
    msgs = petrel.wait_messages("dots@localhost", 1)
    assert len(msgs) == 1
    assert content(msgs[0]) == lf(body)


def test_data_reply_354(petrel):
    c = client(petrel)
    begin(c)
    r = expect(c.cmd("DATA"), 354)
    assert r.lines == ["354 End data with <CR><LF>.<CR><LF>"]


def test_dot_unstuffing_raw(petrel):
    c = client(petrel)
    begin(c, rcpts=["raw@localhost"])
    expect(c.cmd("DATA"), 354)
    # on the wire: the first dot of every line starting with a dot is removed
    c.send(b"Subject: raw\r\n\r\n..one\r\n...two\r\n.three\r\n....\r\n.\r\n")
    expect(c.reply(), 250, "2.0.0")
    msgs = petrel.wait_messages("raw@localhost", 1)
    assert content(msgs[0]) == b"Subject: raw\n\n.one\n..two\nthree\n...\n"


def test_data_ends_only_at_crlf_dot_crlf(petrel):
    c = client(petrel)
    begin(c, rcpts=["end@localhost"])
    expect(c.cmd("DATA"), 354)
    body = b"Subject: end\r\n\r\nline\r\n. \r\n.x\r\n..\r\nNOOP\r\n .\r\n"
    c.send(body)
    assert c.silent(0.4), "the server answered before the end of data"
    c.send(b".\r\n")
    expect(c.reply(), 250, "2.0.0")
    expect(c.cmd("NOOP"), 250, "2.0.0")
    msgs = petrel.wait_messages("end@localhost", 1)
    assert content(msgs[0]) == b"Subject: end\n\nline\n \nx\n.\nNOOP\n .\n"


def test_empty_message(petrel):
    c = client(petrel)
    begin(c, rcpts=["empty@localhost"])
    expect(c.cmd("DATA"), 354)
    c.send(b".\r\n")
    expect(c.reply(), 250, "2.0.0")
    msgs = petrel.wait_messages("empty@localhost", 1)
    assert len(msgs) == 1 and content(msgs[0]) == b""


# ---- BDAT (RFC 3030) -------------------------------------------------------------


def test_bdat_chunks_then_bdat_0_last(petrel):
    c = client(petrel)
    begin(c, rcpts=["chunks@localhost"])
    parts = [b"Subject: bdat\r\n\r\nfirst chunk\r", b"\n.second\r\n", b"..third\r\n"]
    total = 0
    for part in parts:  # the first ends in CR, its LF opens the second
        total += len(part)
        c.send(b"BDAT %d\r\n" % len(part) + part)
        r = expect(c.reply(), 250, "2.0.0")
        assert r.lines == [f"250 2.0.0 {total} octets received"]
    r = expect(c.cmd("BDAT 0 LAST"), 250, "2.0.0")
    assert r.lines[0].startswith("250 2.0.0 Ok: queued as ")
    msgs = petrel.wait_messages("chunks@localhost", 1)
    # BDAT data is not dot-stuffed: dots arrive as sent
    assert content(msgs[0]) == b"Subject: bdat\n\nfirst chunk\n.second\n..third\n"


def test_bdat_last_with_data(petrel):
    c = client(petrel)
    begin(c, rcpts=["bdatlast@localhost"])
    data = b"Subject: one chunk\r\n\r\nbody\r\n.\r\n"
    c.send(b"BDAT %d LAST\r\n" % len(data) + data)
    r = expect(c.reply(), 250, "2.0.0")
    assert r.lines[0].startswith("250 2.0.0 Ok: queued as ")
    expect(c.cmd("NOOP"), 250, "2.0.0")
    msgs = petrel.wait_messages("bdatlast@localhost", 1)
    assert content(msgs[0]) == lf(data)


def test_bdat_pipelined_chunks(petrel):
    c = client(petrel)
    begin(c, rcpts=["bdatpipe@localhost"])
    a, b = b"Subject: p\r\n\r\n", b"text\r\n"
    c.send(b"BDAT %d\r\n" % len(a) + a + b"BDAT %d LAST\r\n" % len(b) + b + b"NOOP\r\n")
    r1, r2, r3 = c.replies(3)
    expect(r1, 250, "2.0.0")
    assert r1.lines == [f"250 2.0.0 {len(a)} octets received"]
    assert expect(r2, 250, "2.0.0").lines[0].startswith("250 2.0.0 Ok: queued as ")
    expect(r3, 250, "2.0.0")
    msgs = petrel.wait_messages("bdatpipe@localhost", 1)
    assert content(msgs[0]) == lf(a + b)


def test_data_after_bdat_refused_503(petrel):
    c = client(petrel)
    begin(c, rcpts=["mixed@localhost"])
    a = b"Subject: mixed\r\n\r\n"
    c.send(b"BDAT %d\r\n" % len(a) + a)
    expect(c.reply(), 250, "2.0.0")
    expect(c.cmd("DATA"), 503, "5.5.1")
    expect(c.cmd("MAIL FROM:<b@example.org>"), 503, "5.5.1")
    b = b"rest\r\n"
    c.send(b"BDAT %d LAST\r\n" % len(b) + b)
    expect(c.reply(), 250, "2.0.0")
    msgs = petrel.wait_messages("mixed@localhost", 1)
    assert content(msgs[0]) == lf(a + b)


def test_bdat_before_mail_refused_after_its_chunk(petrel):
    c = client(petrel)
    c.ehlo()
    # the chunk's octets look like commands: they must be read as data and dropped
    chunk = b"QUIT\r\nMAIL FROM:<evil@example.org>\r\n"
    c.send(b"BDAT %d\r\n" % len(chunk) + chunk)
    expect(c.reply(), 503, "5.5.1")
    expect(c.cmd("NOOP"), 250, "2.0.0")
    # the session is in sync: a normal transaction works
    transaction(c, "a@example.org", ["sync@localhost"], BODY)
    assert len(petrel.wait_messages("sync@localhost", 1)) == 1


def test_bdat_last_before_mail_refused(petrel):
    c = client(petrel)
    c.ehlo()
    chunk = b"RSET\r\n"
    c.send(b"BDAT %d LAST\r\n" % len(chunk) + chunk + b"NOOP\r\n")
    expect(c.reply(), 503, "5.5.1")
    expect(c.reply(), 250, "2.0.0")


def test_bdat_without_recipient_554_after_chunk(petrel):
    c = client(petrel)
    c.ehlo()
    expect(c.cmd("MAIL FROM:<a@example.org>"), 250, "2.1.0")
    chunk = b"NOOP\r\n"
    c.send(b"BDAT %d LAST\r\n" % len(chunk) + chunk)
    expect(c.reply(), 554, "5.5.1")
    expect(c.cmd("NOOP"), 250, "2.0.0")


# ---- RSET, NOOP, VRFY, HELP, QUIT -----------------------------------------------


def test_rset_clears_transaction(petrel):
    c = client(petrel)
    begin(c, rcpts=["rset@localhost"])
    expect(c.cmd("RSET"), 250, "2.0.0")
    expect(c.cmd("RCPT TO:<rset@localhost>"), 503, "5.5.1")
    expect(c.cmd("DATA"), 503, "5.5.1")
    # a new transaction is allowed (no nested-MAIL error) and the old rcpt is gone
    transaction(c, "a@example.org", ["other@localhost"], BODY)
    assert len(petrel.wait_messages("other@localhost", 1)) == 1
    assert_nothing_delivered(petrel, "rset@localhost", settle=0.2)


def test_rset_between_bdat_chunks_drops_message(petrel):
    c = client(petrel)
    begin(c, rcpts=["bdatrset@localhost"])
    a = b"Subject: x\r\n\r\n"
    c.send(b"BDAT %d\r\n" % len(a) + a)
    expect(c.reply(), 250, "2.0.0")
    expect(c.cmd("RSET"), 250, "2.0.0")
    expect(c.cmd("BDAT 0 LAST"), 503, "5.5.1")
    assert_nothing_delivered(petrel, "bdatrset@localhost")


def test_noop(petrel):
    c = client(petrel)
    expect(c.cmd("NOOP"), 250, "2.0.0")
    c.ehlo()
    expect(c.cmd("NOOP"), 250, "2.0.0")
    expect(c.cmd("MAIL FROM:<a@example.org>"), 250, "2.1.0")
    expect(c.cmd("NOOP anything"), 250, "2.0.0")
    expect(c.cmd("RCPT TO:<x@localhost>"), 250, "2.1.5")  # the transaction is intact


def test_vrfy_252_does_not_reveal_users(petrel_factory, tmp_path):
    users = tmp_path / "users"
    users.write_text("alice@localhost:{PLAIN}secret\n")
    p = petrel_factory(users_file=users)
    c = client(p)
    c.ehlo()
    known = expect(c.cmd("VRFY alice@localhost"), 252, "2.5.2")
    unknown = expect(c.cmd("VRFY nobody@localhost"), 252, "2.5.2")
    assert known.lines == unknown.lines
    expect(c.cmd("VRFY alice"), 252, "2.5.2")
    expect(c.cmd("VRFY"), 501, "5.5.4")


def test_help_214(petrel):
    c = client(petrel)
    c.ehlo()
    r = expect(c.cmd("HELP"), 214, "2.0.0")
    assert "MAIL" in r.text and "QUIT" in r.text
    expect(c.cmd("HELP MAIL"), 214, "2.0.0")


def test_quit_221_and_close(petrel):
    c = client(petrel)
    c.ehlo()
    expect(c.cmd("QUIT"), 221, "2.0.0")
    assert c.closed_by_server()


def test_quit_before_ehlo(petrel):
    c = client(petrel)
    expect(c.cmd("QUIT"), 221, "2.0.0")
    assert c.closed_by_server()


# ---- errors -------------------------------------------------------------------


@pytest.mark.parametrize("line", ["FOO", "MAILX FROM:<a@b>", "GET / HTTP/1.0",
                                  "XCLIENT ADDR=1.2.3.4"])
def test_unknown_command_500(petrel, line):
    c = client(petrel)
    c.ehlo()
    expect(c.cmd(line), 500, "5.5.2")
    expect(c.cmd("NOOP"), 250, "2.0.0")
    expect(c.cmd("MAIL FROM:<a@example.org>"), 250, "2.1.0")


def test_command_line_over_1000_octets_500(petrel):
    c = client(petrel)
    c.ehlo()
    # 1000 octets with CRLF: the limit (RFC 5321 4.5.3.1.4)
    ok = "NOOP " + "x" * (1000 - 2 - 5)
    assert len(ok) + 2 == 1000
    expect(c.cmd(ok), 250, "2.0.0")
    long = "NOOP " + "x" * (1001 - 2 - 5)
    expect(c.cmd(long), 500, "5.5.2")
    expect(c.cmd("MAIL FROM:<a@example.org> " + "x" * 5000), 500, "5.5.2")
    # the tail of the long line was not read as a command; the session goes on
    expect(c.cmd("MAIL FROM:<a@example.org>"), 250, "2.1.0")
    expect(c.cmd("RCPT TO:<x@localhost>"), 250, "2.1.5")


def test_megabyte_without_line_end_then_command(petrel):
    c = client(petrel)
    c.ehlo()
    c.send(b"A" * (1024 * 1024))
    c.send(b"\r\nNOOP\r\n")
    expect(c.reply(), 500, "5.5.2")
    expect(c.reply(), 250, "2.0.0")
    expect(c.cmd("MAIL FROM:<a@example.org>"), 250, "2.1.0")


@pytest.mark.parametrize("line", [b"NO\x00OP", b"NOOP\x00", b"\x00", b"NO\x01OP",
                                  b"MAIL FROM:<a\x00b@example.org>", b"NO\rOP", b"NOOP\x7f",
                                  b"\x1b[2J"])
def test_control_bytes_in_command_500(petrel, line):
    c = client(petrel)
    c.ehlo()
    expect(c.cmd(line), 500, "5.5.2")
    expect(c.cmd("MAIL FROM:<a@example.org>"), 250, "2.1.0")


def test_bad_sequence_503(petrel):
    c = client(petrel)
    expect(c.cmd("MAIL FROM:<a@example.org>"), 503, "5.5.1")     # before EHLO
    expect(c.cmd("RCPT TO:<x@localhost>"), 503, "5.5.1")
    c.ehlo()
    expect(c.cmd("RCPT TO:<x@localhost>"), 503, "5.5.1")         # before MAIL
    expect(c.cmd("DATA"), 503, "5.5.1")                          # before MAIL and RCPT
    expect(c.cmd("MAIL FROM:<a@example.org>"), 250, "2.1.0")
    expect(c.cmd("MAIL FROM:<b@example.org>"), 503, "5.5.1")     # nested MAIL
    expect(c.cmd("RCPT TO:<x@localhost>"), 250, "2.1.5")
    expect(c.cmd("MAIL FROM:<b@example.org>"), 503, "5.5.1")     # nested, after RCPT
    expect(c.cmd("DATA"), 354)                                   # the transaction is intact
    c.send(BODY + b".\r\n")
    expect(c.reply(), 250, "2.0.0")
    msgs = petrel.wait_messages("x@localhost", 1)
    assert msgs[0].startswith(b"Return-Path: <a@example.org>\n")


def test_data_without_valid_recipient_554(petrel_factory):
    p = petrel_factory(relay_networks="10.0.0.0/8")
    c = client(p)
    c.ehlo()
    expect(c.cmd("MAIL FROM:<a@example.org>"), 250, "2.1.0")
    expect(c.cmd("DATA"), 554, "5.5.1")              # MAIL given, no RCPT at all
    expect(c.cmd("RCPT TO:<x@foreign.example>"), 550, "5.7.1")
    expect(c.cmd("DATA"), 554, "5.5.1")              # the only RCPT was refused
    expect(c.cmd("RCPT TO:<x@localhost>"), 250, "2.1.5")
    expect(c.cmd("DATA"), 354)


def test_data_body_over_max_size_552(petrel_factory):
    p = petrel_factory(max_message_size="100K")
    c = client(p)
    begin(c, rcpts=["big@localhost"])
    expect(c.cmd("DATA"), 354)
    line = b"x" * 98 + b"\r\n"
    c.send(b"Subject: big\r\n\r\n" + line * 2000 + b".\r\n")  # 200 KB
    expect(c.reply(), 552, "5.3.4")
    # the session goes on: the next message is fine
    expect(c.cmd("NOOP"), 250, "2.0.0")
    transaction(c, "a@example.org", ["small@localhost"], BODY)
    assert len(p.wait_messages("small@localhost", 1)) == 1
    assert_nothing_delivered(p, "big@localhost")


def test_data_body_at_max_size_accepted(petrel_factory):
    p = petrel_factory(max_message_size="100K")
    c = client(p)
    begin(c, rcpts=["fits@localhost"])
    expect(c.cmd("DATA"), 354)
    head = b"Subject: fits\r\n\r\n"
    line = b"y" * 98 + b"\r\n"
    n = (102400 - len(head)) // len(line)
    body = head + line * n
    body += b"z" * (102400 - len(body) - 2) + b"\r\n"
    assert len(body) == 102400
    c.send(body + b".\r\n")
    expect(c.reply(), 250, "2.0.0")
    msgs = p.wait_messages("fits@localhost", 1)
    assert content(msgs[0]) == lf(body)


def test_body_line_over_1000_octets_550(petrel):
    c = client(petrel)
    begin(c, rcpts=["longline@localhost"])
    expect(c.cmd("DATA"), 354)
    c.send(b"Subject: long\r\n\r\n" + b"x" * 999 + b"\r\n.\r\n")   # 1001 octets with CRLF
    expect(c.reply(), 550, "5.6.0")
    expect(c.cmd("NOOP"), 250, "2.0.0")
    assert_nothing_delivered(petrel, "longline@localhost")


def test_body_line_of_1000_octets_accepted(petrel):
    c = client(petrel)
    c.ehlo()
    body = b"Subject: limit\r\n\r\n" + b"x" * 998 + b"\r\n"            # 1000 octets with CRLF
    transaction(c, "a@example.org", ["limit@localhost"], body)
    msgs = petrel.wait_messages("limit@localhost", 1)
    assert content(msgs[0]) == lf(body)


def test_too_many_recipients_452(petrel_factory):
    p = petrel_factory(max_recipients=3)
    c = client(p)
    begin(c, rcpts=["r1@localhost", "r2@localhost", "r3@localhost"])
    expect(c.cmd("RCPT TO:<r4@localhost>"), 452, "4.5.3")
    expect(c.cmd("RCPT TO:<r5@localhost>"), 452, "4.5.3")
    expect(c.cmd("DATA"), 354)
    c.send(BODY + b".\r\n")
    expect(c.reply(), 250, "2.0.0")
    for r in ("r1@localhost", "r2@localhost", "r3@localhost"):
        assert len(p.wait_messages(r, 1)) == 1
    assert p.messages("r4@localhost") == [] and p.messages("r5@localhost") == []


def test_relay_denied_outside_relay_networks(petrel_factory):
    p = petrel_factory(relay_networks="127.0.0.1/32")
    c = client(p, source="127.0.0.2")
    c.ehlo()
    expect(c.cmd("MAIL FROM:<a@example.org>"), 250, "2.1.0")
    expect(c.cmd("RCPT TO:<x@foreign.example>"), 550, "5.7.1")
    expect(c.cmd("RCPT TO:<x@LOCALHOST>"), 250, "2.1.5")       # local domains are fine
    expect(c.cmd("RCPT TO:<y@example.test>"), 250, "2.1.5")
    expect(c.cmd("RCPT TO:<postmaster>"), 250, "2.1.5")


def test_relay_allowed_inside_relay_networks(petrel_factory):
    p = petrel_factory(relay_networks="127.0.0.1/32")
    c = client(p, source="127.0.0.1")
    c.ehlo()
    expect(c.cmd("MAIL FROM:<a@example.org>"), 250, "2.1.0")
    expect(c.cmd("RCPT TO:<x@foreign.example>"), 250, "2.1.5")
    expect(c.cmd("RSET"), 250, "2.0.0")


def test_unknown_user_550_with_users_file(petrel_factory, tmp_path):
    users = tmp_path / "users"
    users.write_text("alice@localhost:{PLAIN}secret\n")
    p = petrel_factory(users_file=users)
    c = client(p)
    begin(c, rcpts=[])
    expect(c.cmd("RCPT TO:<bob@localhost>"), 550, "5.1.1")
    expect(c.cmd("RCPT TO:<alice@localhost>"), 250, "2.1.5")
    expect(c.cmd("RCPT TO:<ALICE@LocalHost>"), 250, "2.1.5")
    expect(c.cmd("DATA"), 354)
    c.send(BODY + b".\r\n")
    expect(c.reply(), 250, "2.0.0")
    assert len(p.wait_messages("alice@localhost", 1)) >= 1
    assert p.messages("bob@localhost") == []


@pytest.mark.parametrize("rcpt,code", [
    ('".hidden"@localhost', 553),
    ('"a/b"@localhost', 553),
    ('"../../etc"@localhost', 553),
    ('"/tmp/x"@localhost', 553),
    ('"a\\/b"@localhost', 553),
    ('".."@localhost', 553),
    # unquoted, a leading dot is not even a Dot-string (RFC 5321 4.1.2): a syntax error
    ('.hidden@localhost', 501),
])
def test_unsafe_local_part_refused(petrel, rcpt, code):
    c = client(petrel)
    begin(c, rcpts=[])
    expect(c.cmd(f"RCPT TO:<{rcpt}>"), code, "5.1.3")
    expect(c.cmd("RCPT TO:<fine@localhost>"), 250, "2.1.5")
    expect(c.cmd("DATA"), 354)
    c.send(BODY + b".\r\n")
    expect(c.reply(), 250, "2.0.0")
    assert len(petrel.wait_messages("fine@localhost", 1)) == 1
    # nothing was written anywhere but fine's Maildir
    written = sorted(str(x.relative_to(petrel.mail_root)) for x in petrel.mail_root.rglob("*"))
    assert all(w == "localhost" or w.startswith("localhost/fine") for w in written), written


def test_max_connections_421(petrel_factory):
    p = petrel_factory(max_connections=3)
    wait_disconnects(p, 1)  # wait_port's probe is gone
    held = [client(p) for _ in range(3)]
    extra = Client(p)
    assert extra.greeting.code == 421, extra.greeting
    assert extra.closed_by_server()
    for c in held:      # the held sessions work
        c.ehlo()
    expect(held[0].cmd("QUIT"), 221, "2.0.0")
    held[0].close()
    wait_disconnects(p, 3)  # the probe, the refused one, held[0]
    again = client(p)   # a slot is free again
    again.ehlo()
    expect(extra.greeting, 421, "4.7.0")


def test_max_connections_per_ip_421(petrel_factory):
    p = petrel_factory(max_connections_per_ip=2)
    wait_disconnects(p, 1)
    held = [client(p) for _ in range(2)]
    extra = Client(p)
    assert extra.greeting.code == 421, extra.greeting
    assert extra.closed_by_server()
    other = client(p, source="127.0.0.2")  # another address still gets in
    other.ehlo()
    for c in held:
        c.ehlo()
    expect(extra.greeting, 421, "4.7.0")


def test_smtp_timeout_421(petrel_factory):
    p = petrel_factory(smtp_timeout="2s")
    c = client(p)
    c.ehlo()
    start = time.time()
    r = c.reply()     # nothing sent: the server speaks first
    assert r.code == 421, r
    assert 1.5 <= time.time() - start <= 6
    assert c.closed_by_server()
    expect(r, 421, "4.4.2")  # RFC 2034: the enhanced code comes first in the text


def test_smtp_timeout_mid_data_delivers_nothing(petrel_factory):
    p = petrel_factory(smtp_timeout="2s")
    c = client(p)
    begin(c, rcpts=["stalled@localhost"])
    expect(c.cmd("DATA"), 354)
    c.send(b"Subject: stalled\r\n\r\nhalf a mess")
    r = c.reply()
    assert r.code == 421, r
    assert c.closed_by_server()
    assert_nothing_delivered(p, "stalled@localhost")
    expect(r, 421, "4.4.2")


def test_smtp_timeout_holds_for_a_trickled_overlong_line(petrel_factory):
    """A command line past 1000 octets is skipped to its end; its octets trickled one
    every half second are no progress: the session still ends at smtp_timeout (it was
    held open for as long as the trickle went on)."""
    p = petrel_factory(smtp_timeout="2s")
    c = client(p)
    c.ehlo()
    c.send(b"A" * 1500)
    start = time.time()
    c.sock.settimeout(0.5)
    got = b""
    while time.time() - start < 15 and b"421" not in got:
        try:
            c.sock.sendall(b"A")
            got += c.sock.recv(4096)
        except socket.timeout:
            continue
        except OSError:
            break
    assert b"421 4.4.2" in got, got
    assert time.time() - start <= 8


def test_too_many_errors_421_and_close(petrel):
    c = client(petrel)
    c.ehlo()
    codes = []
    for _ in range(100):
        c.send(b"BOGUS\r\n")
        r = c.reply()
        codes.append(r.code)
        if r.code != 500:
            break
        expect(r, 500, "5.5.2")
    # a client gets a fair number of mistakes before being cut off
    assert len(codes) >= 10, codes
    expect(r, 421, "4.7.0")
    assert c.closed_by_server()


# ---- PIPELINING -------------------------------------------------------------------


def test_pipelined_mail_rcpt_rcpt_data(petrel):
    c = client(petrel)
    c.ehlo()
    c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<p1@localhost>\r\n"
           b"RCPT TO:<p2@localhost>\r\nDATA\r\n")
    r = c.replies(4)
    expect(r[0], 250, "2.1.0")
    expect(r[1], 250, "2.1.5")
    expect(r[2], 250, "2.1.5")
    expect(r[3], 354)
    c.send(BODY + b".\r\n")
    expect(c.reply(), 250, "2.0.0")
    assert len(petrel.wait_messages("p1@localhost", 1)) == 1
    assert len(petrel.wait_messages("p2@localhost", 1)) == 1


def test_pipelined_replies_keep_order_with_errors(petrel):
    c = client(petrel)
    c.ehlo()
    c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<ok1@localhost>\r\n"
           b"RCPT TO:<bad@localhost> FOO=1\r\nRCPT TO:<x y@localhost>\r\n"
           b"RCPT TO:<ok2@localhost>\r\nNOOP\r\nDATA\r\n")
    r = c.replies(7)
    expect(r[0], 250, "2.1.0")
    expect(r[1], 250, "2.1.5")
    expect(r[2], 555, "5.5.4")
    expect(r[3], 501, "5.1.3")
    expect(r[4], 250, "2.1.5")
    expect(r[5], 250, "2.0.0")
    expect(r[6], 354)


def test_pipelined_whole_transaction_and_quit(petrel):
    c = client(petrel)
    c.ehlo()
    body = b"Subject: all at once\r\n\r\n.dot\r\nbody\r\n"
    c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<whole@localhost>\r\nDATA\r\n"
           + stuff(body) + b".\r\nQUIT\r\n")
    r = c.replies(5)
    expect(r[0], 250, "2.1.0")
    expect(r[1], 250, "2.1.5")
    expect(r[2], 354)
    assert expect(r[3], 250, "2.0.0").lines[0].startswith("250 2.0.0 Ok: queued as ")
    expect(r[4], 221, "2.0.0")
    assert c.closed_by_server()
    msgs = petrel.wait_messages("whole@localhost", 1)
    assert len(msgs) == 1 and content(msgs[0]) == lf(body)


def test_pipelined_several_messages_in_one_write(petrel):
    c = client(petrel)
    n = 5
    data = b"EHLO client.test\r\n"
    for i in range(n):
        data += (b"MAIL FROM:<a@example.org>\r\nRCPT TO:<multi@localhost>\r\nDATA\r\n"
                 b"Subject: message %d\r\n\r\nnumber %d\r\n.\r\n" % (i, i))
    data += b"QUIT\r\n"
    c.send(data)
    expect(c.reply(), 250)
    ids = []
    for i in range(n):
        r = c.replies(4)
        expect(r[0], 250, "2.1.0")
        expect(r[1], 250, "2.1.5")
        expect(r[2], 354)
        m = re.match(r"250 2\.0\.0 Ok: queued as (\S+)$", expect(r[3], 250, "2.0.0").lines[0])
        assert m, r[3]
        ids.append(m.group(1))
    expect(c.reply(), 221, "2.0.0")
    assert len(set(ids)) == n, ids
    msgs = petrel.wait_messages("multi@localhost", n)
    assert len(msgs) == n
    subjects = sorted(content(m).split(b"\n")[0] for m in msgs)
    assert subjects == [b"Subject: message %d" % i for i in range(n)]


def test_pipelined_transaction_after_refused_message(petrel):
    """A refused message (bare LF) and a good one in the same write: each its own reply."""
    c = client(petrel)
    c.ehlo()
    c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<first@localhost>\r\nDATA\r\n"
           b"bare\nlf\r\n.\r\n"
           b"MAIL FROM:<a@example.org>\r\nRCPT TO:<second@localhost>\r\nDATA\r\n"
           b"fine\r\n.\r\n")
    r = c.replies(8)
    assert [x.code for x in r] == [250, 250, 354, 550, 250, 250, 354, 250], r
    expect(r[3], 550, "5.6.0")
    expect(r[7], 250, "2.0.0")
    assert len(petrel.wait_messages("second@localhost", 1)) == 1
    assert_nothing_delivered(petrel, "first@localhost", settle=0.2)


# ---- other clients: swaks and curl ---------------------------------------------


def test_swaks_pipelining_several_recipients(petrel):
    out = subprocess.run(
        ["swaks", "--server", f"{petrel.host}:{petrel.port}", "--pipeline",
         "--to", "sw1@localhost,sw2@localhost", "--from", "s@example.org",
         "--body", "line one\n.dotted\nline three"],
        capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "250 2.0.0 Ok: queued as" in out.stdout
    for r in ("sw1@localhost", "sw2@localhost"):
        msgs = petrel.wait_messages(r, 1)
        assert len(msgs) == 1
        assert b"\nline one\n.dotted\nline three\n" in msgs[0]


def test_swaks_unknown_user_rejected(petrel_factory, tmp_path):
    users = tmp_path / "users"
    users.write_text("alice@localhost:{PLAIN}secret\n")
    p = petrel_factory(users_file=users)
    out = subprocess.run(
        ["swaks", "--server", f"{p.host}:{p.port}", "--to", "bob@localhost",
         "--from", "s@example.org"], capture_output=True, text=True, timeout=30)
    assert out.returncode != 0
    assert "<** 550 5.1.1 " in out.stdout, out.stdout


def test_curl_upload_crlf_file(petrel, tmp_path):
    f = tmp_path / "msg.eml"
    data = b"Subject: via curl\r\nFrom: c@example.org\r\n\r\n.leading dot\r\nplain\r\n..two\r\n"
    f.write_bytes(data)
    out = subprocess.run(
        ["curl", "-sS", f"smtp://{petrel.host}:{petrel.port}", "--mail-from", "c@example.org",
         "--mail-rcpt", "curl@localhost", "-T", str(f)],
        capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    msgs = petrel.wait_messages("curl@localhost", 1)
    assert len(msgs) == 1 and content(msgs[0]) == lf(data)


def test_curl_crlf_option_converts_lf_file(petrel, tmp_path):
    f = tmp_path / "msg.eml"
    f.write_bytes(b"Subject: lf file\n\nline\n.dot\n")
    out = subprocess.run(
        ["curl", "-sS", "--crlf", f"smtp://{petrel.host}:{petrel.port}",
         "--mail-from", "c@example.org", "--mail-rcpt", "curllf@localhost", "-T", str(f)],
        capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    msgs = petrel.wait_messages("curllf@localhost", 1)
    assert len(msgs) == 1 and content(msgs[0]) == b"Subject: lf file\n\nline\n.dot\n"


def test_curl_bare_lf_file_refused(petrel, tmp_path):
    """petrel's policy: a bare LF in a message refuses it (550 5.6.0), curl reports it."""
    f = tmp_path / "msg.eml"
    f.write_bytes(b"Subject: lf file\n\nline\n")
    out = subprocess.run(
        ["curl", "-sS", "-v", f"smtp://{petrel.host}:{petrel.port}",
         "--mail-from", "c@example.org", "--mail-rcpt", "curlbare@localhost", "-T", str(f)],
        capture_output=True, text=True, timeout=30)
    assert out.returncode != 0
    assert "< 550 5.6.0 " in out.stderr, out.stderr
    assert_nothing_delivered(petrel, "curlbare@localhost")


# ---- the log of refusals ----------------------------------------------------------------
#
# One line per refused command, in Postfix's form (what fail2ban and an administrator
# asking "why did my mail not arrive" grep); what the client wrote appears escaped.


LOG_LINE = re.compile(r"^\S+ petrel\[\d+\]: (\w+): (.*)$")


def log_events(p):
    """The log's lines without their time stamp and pid: "level: text"."""
    return [f"{m.group(1)}: {m.group(2)}" for m in map(LOG_LINE.match, p.log().splitlines())
            if m]


def rejects(p):
    return [e for e in log_events(p) if ": reject: " in e]


def queue_ids(p):
    """The ids of the messages begun (their "ID: client=" lines), in order."""
    return re.findall(r"info: (\S+): client=unknown\[", p.log())


def test_refused_recipients_logged(petrel_factory, tmp_path):
    users = tmp_path / "users"
    users.write_text("alice@localhost:{PLAIN}secret\n")
    p = petrel_factory(users_file=users, relay_networks="127.0.0.1/32", max_recipients=2)
    c = client(p, source="127.0.0.2")
    c.ehlo("client.test")
    expect(c.cmd("RCPT TO:<early@localhost>"), 503, "5.5.1")
    expect(c.cmd("MAIL FROM:<a@example.org>"), 250, "2.1.0")
    expect(c.cmd("RCPT TO:<bob@localhost>"), 550, "5.1.1")
    expect(c.cmd("RCPT TO:<x@foreign.example>"), 550, "5.7.1")
    expect(c.cmd('RCPT TO:<"a/b"@localhost>'), 553, "5.1.3")
    expect(c.cmd("RCPT TO:<bad address@localhost>"), 501, "5.1.3")
    expect(c.cmd("RCPT TO:<alice@localhost>"), 250, "2.1.5")
    expect(c.cmd("RCPT TO:<postmaster>"), 250, "2.1.5")
    expect(c.cmd("RCPT TO:<alice@localhost>"), 452, "4.5.3")
    head = "info: NOQUEUE: reject: RCPT from unknown[127.0.0.2]: "
    tail = " proto=ESMTP helo=<client.test>"
    assert rejects(p) == [
        head + "503 5.5.1 Error: need MAIL command; to=<early@localhost>" + tail,
        head + "550 5.1.1 Recipient address rejected: User unknown; from=<a@example.org> "
        "to=<bob@localhost>" + tail,
        head + "550 5.7.1 Relay access denied; from=<a@example.org> to=<x@foreign.example>"
        + tail,
        head + "553 5.1.3 Recipient address rejected: invalid mailbox name; "
        "from=<a@example.org> to=<a/b@localhost>" + tail,  # as it goes on the wire
        head + "501 5.1.3 Bad recipient address syntax; from=<a@example.org> "
        "to=<bad address@localhost>" + tail,
        head + "452 4.5.3 Error: too many recipients; from=<a@example.org> "
        "to=<alice@localhost>" + tail,
    ]


def test_refused_senders_and_messages_logged(petrel_factory):
    p = petrel_factory(max_message_size="1K")
    c = client(p)
    c.ehlo("client.test")
    expect(c.cmd("MAIL FROM:<a@example.org> SIZE=5000"), 552, "5.3.4")
    expect(c.cmd("MAIL FROM:<>"), 250, "2.1.0")
    expect(c.cmd("DATA"), 554, "5.5.1")
    expect(c.cmd("RCPT TO:<r1@localhost>"), 250, "2.1.5")
    expect(c.cmd("RCPT TO:<r2@localhost>"), 250, "2.1.5")
    expect(c.cmd("DATA"), 354)
    c.send(b"Subject: bare LF\r\n\r\nbare\nLF\r\n.\r\n")
    expect(c.reply(), 550, "5.6.0")
    expect(c.cmd("MAIL FROM:<a@example.org>"), 250, "2.1.0")
    expect(c.cmd("RCPT TO:<r1@localhost>"), 250, "2.1.5")
    c.send(b"BDAT 2000 LAST\r\n" + b"x" * 2000)
    expect(c.reply(), 552, "5.3.4")
    ids = queue_ids(p)
    assert len(ids) == 2, p.log()
    head = "reject: %s from unknown[127.0.0.1]: "
    tail = " proto=ESMTP helo=<client.test>"
    assert rejects(p) == [
        "info: NOQUEUE: " + head % "MAIL" + "552 5.3.4 Message size exceeds fixed maximum "
        "message size; from=<a@example.org>" + tail,
        "info: NOQUEUE: " + head % "DATA" + "554 5.5.1 Error: no valid recipients; from=<>"
        + tail,
        f"info: {ids[0]}: " + head % "END-OF-MESSAGE" + "550 5.6.0 Error: bare CR or LF in "
        "message; use CRLF line ends; from=<> to=<r1@localhost> nrcpt=2" + tail,
        f"info: {ids[1]}: " + head % "END-OF-MESSAGE" + "552 5.3.4 Error: message size "
        "exceeds fixed limit; from=<a@example.org> to=<r1@localhost> nrcpt=1" + tail,
    ]


def test_refused_connection_logged(petrel_factory):
    p = petrel_factory(max_connections_per_ip=1)
    wait_disconnects(p, 1)  # wait_port's probe is gone
    held = client(p)
    extra = Client(p)
    expect(extra.greeting, 421, "4.7.0")
    assert rejects(p) == [
        "info: NOQUEUE: reject: CONNECT from unknown[127.0.0.1]: 421 4.7.0 mx.petrel.test "
        "Error: too many connections from your address; proto=SMTP"]
    held.ehlo()


def test_refusal_log_escapes_what_the_client_wrote(petrel):
    """Control octets, a backslash, non-ASCII: escaped as \\xNN, so no client can start a
    log line of its own or write something that reads as one of our escapes."""
    c = client(petrel)
    expect(c.cmd(b"EHLO evil\x01host\x1b[2J"), 500, "5.5.2")
    expect(c.cmd(b"HELO h\xc3\xa9llo.test"), 250)
    expect(c.cmd("MAIL FROM:<a@example.org>"), 250, "2.1.0")
    expect(c.cmd(b"RCPT TO:<x\ry@localhost>"), 500, "5.5.2")
    expect(c.cmd(b"RCPT TO:<n\xc3\xa9@localhost>"), 553, "5.6.7")
    expect(c.cmd(b"RCPT TO:<a\\x0ab@localhost>"), 501, "5.1.3")
    # An LF ends a command line: what follows is a command of its own, never logged.
    c.send(b"RCPT TO:<forged@localhost>\ninfo: NOQUEUE: reject: forged\r\n")
    expect(c.reply(), 250, "2.1.5")
    expect(c.reply(), 500, "5.5.2")
    head = "info: NOQUEUE: reject: %s from unknown[127.0.0.1]: "
    helo = " helo=<h\\xc3\\xa9llo.test>"
    assert rejects(petrel) == [
        head % "EHLO" + "500 5.5.2 Error: invalid characters in command; proto=SMTP "
        "helo=<evil\\x01host\\x1b[2J>",
        head % "RCPT" + "500 5.5.2 Error: invalid characters in command; "
        "from=<a@example.org> to=<x\\x0dy@localhost> proto=SMTP" + helo,
        head % "RCPT" + "553 5.6.7 Non-ASCII recipient address requires SMTPUTF8; "
        "from=<a@example.org> to=<n\\xc3\\xa9@localhost> proto=SMTP" + helo,
        head % "RCPT" + "501 5.1.3 Bad recipient address syntax; from=<a@example.org> "
        "to=<a\\x5cx0ab@localhost> proto=SMTP" + helo,
        head % "UNKNOWN" + "500 5.5.2 Error: command not recognized; from=<a@example.org> "
        "proto=SMTP" + helo,
    ]
    raw = petrel.log_path.read_bytes()
    assert all(b == 0x0a or 0x20 <= b < 0x7f for b in raw), raw
    assert b"forged\n" not in raw
