"""SMTP smuggling: nothing inside one message may become a second transaction.

Only the octets CR LF . CR LF end DATA.  Every look-alike (LF.LF, LF.CRLF,
CR.CR, ...) is content; petrel's policy for the bare CR / bare LF they contain
is to refuse the whole message with "550 5.6.0" once its real end arrives.
"""
import re
import socket
import time

import pytest

SMUGGLED = (b"MAIL FROM:<evil@x>\r\nRCPT TO:<victim@localhost>\r\nDATA\r\n"
            b"smuggled\r\n")

VARIANTS = {
    "LF.LF": b"\n.\n",
    "LF.CRLF": b"\n.\r\n",
    "CR.CR": b"\r.\r",
    "CRLF.LF": b"\r\n.\n",
    "CR.CRLF": b"\r.\r\n",
    "LF..LF": b"\n..\n",
}


class Client:
    """A raw SMTP client with a line buffer: every reply line is accounted for."""

    def __init__(self, server, timeout=10.0):
        self.sock = socket.create_connection((server.host, server.port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.greeting = self.line()
        assert self.greeting.startswith("220 "), self.greeting

    def send(self, data):
        self.sock.sendall(data)

    def line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"closed; unparsed {self.buf!r}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode(errors="replace")

    def reply(self):
        """The final line of one (possibly multi-line) reply."""
        while True:
            line = self.line()
            if line[3:4] != "-":
                return line

    def cmd(self, data):
        self.send(data + b"\r\n")
        return self.reply()

    def rest(self, timeout=5.0):
        """Everything the server still sends until it closes the connection."""
        self.sock.settimeout(timeout)
        data = self.buf
        while True:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
        self.buf = b""
        return data.decode(errors="replace").split("\r\n")[:-1]


def ok(line, prefix):
    assert line.startswith(prefix), line


def start(c, rcpt):
    ok(c.cmd(b"EHLO client.test"), "250 ")
    ok(c.cmd(b"MAIL FROM:<sender@example.org>"), "250 2.1.0 ")
    ok(c.cmd(b"RCPT TO:<%s>" % rcpt.encode()), "250 2.1.5 ")
    ok(c.cmd(b"DATA"), "354 ")


def content(msg):
    """The stored message without petrel's Return-Path/Delivered-To/Received prefix."""
    lines = msg.split(b"\n")
    assert lines[0].startswith(b"Return-Path: ") and lines[1].startswith(b"Delivered-To: ")
    assert lines[2].startswith(b"Received: ")
    i = 3
    while lines[i][:1] in (b" ", b"\t"):
        i += 1
    return b"\n".join(lines[i:])


@pytest.mark.parametrize("variant", list(VARIANTS.values()), ids=list(VARIANTS))
def test_smuggled_transaction_is_not_executed(petrel, variant):
    c = Client(petrel)
    start(c, "target@localhost")
    c.send(b"Subject: smuggling\r\n\r\nbefore" + variant + SMUGGLED + b"\r\n.\r\n")
    # exactly one reply for the whole message: a refusal for its bare CR/LF
    ok(c.reply(), "550 5.6.0 ")
    # then a clean message on the same connection, and QUIT: nothing else is answered
    c.send(b"MAIL FROM:<sender@example.org>\r\nRCPT TO:<clean@localhost>\r\nDATA\r\n"
           b"Subject: clean\r\n\r\nclean body\r\n.\r\nQUIT\r\n")
    rest = c.rest()
    assert len(rest) == 5, rest
    ok(rest[0], "250 2.1.0 ")
    ok(rest[1], "250 2.1.5 ")
    ok(rest[2], "354 ")
    ok(rest[3], "250 2.0.0 Ok: queued as ")
    ok(rest[4], "221 2.0.0 ")
    clean = petrel.wait_messages("clean@localhost", 1)
    assert len(clean) == 1 and content(clean[0]) == b"Subject: clean\n\nclean body\n"
    time.sleep(0.3)
    assert petrel.messages("victim@localhost") == []
    assert petrel.messages("target@localhost") == []
    assert "evil@x" not in petrel.log()
    # one transaction was queued on this connection, not two
    assert len(re.findall(r": from=<", petrel.log())) == 1, petrel.log()


@pytest.mark.parametrize("variant", list(VARIANTS.values()), ids=list(VARIANTS))
def test_smuggling_variant_split_across_writes(petrel, variant):
    """The same, with the look-alike cut between two TCP segments."""
    c = Client(petrel)
    start(c, "target@localhost")
    c.send(b"Subject: split\r\n\r\nbefore" + variant[:2])
    time.sleep(0.05)
    c.send(variant[2:] + SMUGGLED)
    time.sleep(0.05)
    c.send(b".\r\n")
    ok(c.reply(), "550 5.6.0 ")
    ok(c.cmd(b"NOOP"), "250 2.0.0 ")
    time.sleep(0.3)
    assert petrel.messages("victim@localhost") == []
    assert "evil@x" not in petrel.log()


def test_bdat_chunk_with_crlf_dot_crlf_is_content(petrel):
    """In BDAT the chunk size frames the data: CRLF.CRLF inside is just content."""
    c = Client(petrel)
    ok(c.cmd(b"EHLO client.test"), "250 ")
    ok(c.cmd(b"MAIL FROM:<sender@example.org>"), "250 2.1.0 ")
    ok(c.cmd(b"RCPT TO:<bdat@localhost>"), "250 2.1.5 ")
    chunk = b"Subject: bdat\r\n\r\nbefore\r\n.\r\n" + SMUGGLED
    c.send(b"BDAT %d LAST\r\n" % len(chunk) + chunk + b"QUIT\r\n")
    rest = c.rest()
    assert len(rest) == 2, rest
    ok(rest[0], "250 2.0.0 Ok: queued as ")
    ok(rest[1], "221 2.0.0 ")
    msgs = petrel.wait_messages("bdat@localhost", 1)
    assert len(msgs) == 1
    assert content(msgs[0]) == chunk.replace(b"\r\n", b"\n")
    time.sleep(0.3)
    assert petrel.messages("victim@localhost") == []


def test_message_in_one_byte_writes_delivered_byte_exact(petrel):
    c = Client(petrel)
    body = (b"Subject: drip\r\nFrom: sender@example.org\r\n\r\n"
            b"first line\r\n..leading dot\r\n...two dots\r\n.\tdot tab\r\n"
            b"\r\n \r\n.. \r\nlast line\r\n")
    wire = (b"EHLO client.test\r\nMAIL FROM:<sender@example.org>\r\n"
            b"RCPT TO:<drip@localhost>\r\nDATA\r\n")
    expected = [b"250 ", b"250 2.1.0 ", b"250 2.1.5 ", b"354 "]
    for cmd, want in zip(wire.split(b"\r\n"), expected):
        for i in range(len(cmd + b"\r\n")):
            c.send((cmd + b"\r\n")[i:i + 1])
        ok(c.reply(), want.decode())
    for i in range(len(body + b".\r\n")):
        c.send((body + b".\r\n")[i:i + 1])
    ok(c.reply(), "250 2.0.0 Ok: queued as ")
    msgs = petrel.wait_messages("drip@localhost", 1)
    assert len(msgs) == 1
    # dot-stuffing undone (RFC 5321 4.5.2), CRLF stored as LF, nothing else changed
    assert content(msgs[0]) == (b"Subject: drip\nFrom: sender@example.org\n\n"
                                b"first line\n.leading dot\n..two dots\n\tdot tab\n"
                                b"\n \n. \nlast line\n")
