"""Relaying, black-box: petrel A (the sender) finds the receivers through MX
records served by its own dnsmasq and hands the mail over to real peers on
distinct loopback addresses (127.0.0.2, 127.0.0.3 ...): other petrel
instances, Postfix's smtp-sink (to inject 4xx), and Postfix itself.

All receivers of one test listen on the same port number (A's smtp_port)
on different addresses.  Bounces go to alice@a.test, a local user of A.
"""
import email
import email.policy
import os
import re
import socket
import threading
import time

import pytest

from conftest import recv_replies
from mailtest import (DATE_RE, in_queue, queue_id, send, smtp, split_prepended, wait_for,
                      wait_log, wait_queue_empty)
from peers import (DNSMASQ, POSTFIX, POSTFIX_MASTER, SMTP_SINK, Dnsmasq, Postfix, SmtpSink,
                   common_port, missing_tool, port_free_on)

ADDRS = [f"127.0.0.{i}" for i in range(2, 10)]
ALICE = "alice@a.test"

BODY = (b"From: Alice <alice@a.test>\r\n"
        b"To: Bob <bob@b.test>\r\n"
        b"Subject: relayed byte for byte\r\n"
        b"Date: Sat, 28 Nov 2026 12:00:00 +0000\r\n"
        b"Message-Id: <relay-1@a.test>\r\n"
        b"X-Folded: first part\r\n"
        b"\tsecond part\r\n"
        b"\r\n"
        b"first line\r\n"
        b".a line that starts with a dot\r\n"
        b"trailing spaces   \r\n"
        b"\ttab first\r\n"
        b"\r\n"
        b"last line\r\n")


def lf(b):
    return b.replace(b"\r\n", b"\n")


class Net:
    """One test's network: a dnsmasq, receivers on 127.0.0.X:port, sender A."""

    def __init__(self, factory, tmp_path):
        self.factory = factory
        self.tmp = tmp_path
        self.port = common_port(ADDRS)
        self.dns = None
        self.peers = []  # dnsmasq, sinks, Postfix: stopped in close()

    def start_dns(self, *records):
        if missing_tool(DNSMASQ):
            pytest.skip(f"{DNSMASQ} is not installed (Debian: dnsmasq-base)")
        self.dns = Dnsmasq(self.tmp, records)
        self.peers.append(self.dns)
        return self.dns.start()

    def receiver(self, addr, domains="b.test", start=True, listen=None, **conf):
        conf.setdefault("hostname", f"mx-{addr.replace(':', '')}.test")
        p = self.factory(start=False, listen_smtp=listen or f"{addr}:{self.port}",
                         local_domains=domains, **conf)
        p.host, p.port = addr, self.port
        if start:
            p.start()
        return p

    def sender(self, **conf):
        conf.setdefault("hostname", "mx.a.test")
        conf.setdefault("local_domains", "a.test")
        conf.setdefault("smtp_port", self.port)
        if self.dns is not None:
            conf.setdefault("dns_resolver", self.dns.address)
        return self.factory(**conf)

    def sink(self, addr, *args):
        if missing_tool(SMTP_SINK):
            pytest.skip(f"{SMTP_SINK} is not installed (Debian: postfix)")
        s = SmtpSink(self.tmp, addr, self.port, args)
        self.peers.append(s)
        return s.start()

    def postfix(self, addr, users):
        tool = missing_tool(POSTFIX, POSTFIX_MASTER)
        if tool:
            pytest.skip(f"{tool} is not installed (Debian: postfix)")
        if os.geteuid() != 0:
            pytest.skip("a private Postfix instance runs its master as root")
        pf = Postfix(addr, self.port, users)
        self.peers.append(pf)
        return pf.start()

    def close(self):
        for p in reversed(self.peers):
            p.stop()
            if isinstance(p, Postfix):
                p.cleanup()


@pytest.fixture
def net(petrel_factory, tmp_path):
    n = Net(petrel_factory, tmp_path)
    yield n
    n.close()


# ---- what to look for ------------------------------------------------------------


def log_re(qid, rcpt, status, relay=None, port=None, reply=r".*"):
    """A's per-recipient log line: QID: to=<rcpt>, relay=..., delay=N, status=S (reply)."""
    if relay is None:
        relay_rx = r"[^,]*"
    elif relay == "none":
        relay_rx = "none"
    else:
        host, addr = relay
        relay_rx = re.escape(f"{host}[{addr}]:{port}")
    return (rf"{re.escape(qid)}: to=<{re.escape(rcpt)}>, relay={relay_rx}, "
            rf"delay=\d+(?:\.\d+)?, status={status} \({reply}\)$")


def a_received_re(qid, rcpt=None, helo="client.example", by="mx.a.test"):
    """The Received: field A adds in front of the relayed message (LF line ends)."""
    rx = (rb"\AReceived: from " + re.escape(helo.encode()) +
          rb" \([^()\n]* \[127\.0\.0\.1\]\)\n\tby " + re.escape(by.encode()) +
          rb" \(petrel\) with ESMTP id " + re.escape(qid.encode()))
    if rcpt is not None:
        rx += rb"\n\tfor <" + re.escape(rcpt.encode()) + rb">; " + DATE_RE + rb"\n"
    else:
        rx += rb";\n\t" + DATE_RE + rb"\n"
    return re.compile(rx)


def check_relayed(msg, qid, sender, rcpt, body, relayed_by="mx.a.test", for_rcpt=True):
    """A petrel receiver's Maildir file: its three headers naming the envelope,
    then A's Received:, then the message byte for byte."""
    prefix, rest = split_prepended(msg)
    assert prefix.startswith(f"Return-Path: <{sender}>\nDelivered-To: {rcpt}\n".encode()), prefix
    assert f"Received: from {relayed_by} (".encode() in prefix, prefix
    m = a_received_re(qid, rcpt if for_rcpt else None).match(rest)
    assert m, rest[:400]
    assert rest[m.end():] == lf(body)


def bounce_of(a, count=1, timeout=20):
    """The DSNs in alice's Maildir at A, parsed (after the prepended headers)."""
    msgs = a.wait_messages(ALICE, count, timeout=timeout)
    assert len(msgs) >= count, f"no bounce for {ALICE}; A's log:\n{a.log()[-3000:]}"
    out = []
    for raw in msgs:
        prefix, rest = split_prepended(raw)
        assert prefix.startswith(b"Return-Path: <>\n"), prefix  # a bounce has the null sender
        out.append(email.message_from_bytes(rest, policy=email.policy.compat32))
    return out


def dsn_parts(msg):
    """(notification text, [per-recipient field dicts], original headers text)."""
    assert msg.get_content_type() == "multipart/report", msg.get_content_type()
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["From"].startswith("MAILER-DAEMON@mx.a.test")
    assert msg["To"] == f"<{ALICE}>"
    parts = msg.get_payload()
    types = [p.get_content_type() for p in parts]
    if types[1] == "message/global-delivery-status":
        # RFC 6533: UTF-8 in an address or in the quoted headers; Python's parser
        # takes the report for one message, so its field blocks are split here.
        assert types == ["text/plain", "message/global-delivery-status",
                         "message/global-headers"], types
        assert parts[0].get_param("charset") == "utf-8"
        raw = parts[1].as_bytes().decode().split("\n\n", 1)[1]
        blocks = [email.message_from_string(b.strip() + "\n", policy=email.policy.compat32)
                  for b in re.split(r"\n\s*\n", raw) if b.strip()]
        headers = parts[2].as_bytes().decode().split("\n\n", 1)[1]
    else:
        assert types == ["text/plain", "message/delivery-status", "text/rfc822-headers"], types
        blocks = parts[1].get_payload()
        headers = parts[2].get_payload()
    rcpts = [dict(b.items()) for b in blocks if b.get("Final-Recipient")]
    assert blocks[0].get("Reporting-MTA") == "dns; mx.a.test"
    return parts[0].get_payload(), rcpts, headers


def dsn_check(msg, failed, status_rx, original=BODY):
    """The DSN names exactly the failed recipients with matching Status, quotes the headers."""
    text, rcpts, headers = dsn_parts(msg)
    assert sorted(r["Final-Recipient"] for r in rcpts) == sorted(f"rfc822; {f}" for f in failed)
    for r in rcpts:
        assert r["Action"] == "failed", r
        assert re.fullmatch(status_rx, r["Status"]), r
    for f in failed:
        assert f"<{f}>" in text
    orig_headers = original.split(b"\r\n\r\n", 1)[0].decode()
    for line in orig_headers.split("\r\n"):
        if line.startswith(("Subject:", "Message-Id:")):
            assert line in headers, headers
    return text, rcpts


# ---- delivery to the MX --------------------------------------------------------------


def test_delivery_to_mx_byte_exact(net):
    net.start_dns("--mx-host=b.test,mx.b.test,10", "--host-record=mx.b.test,127.0.0.2")
    b = net.receiver("127.0.0.2")
    a = net.sender()
    qid = send(a, ALICE, "bob@b.test", BODY)
    msgs = b.wait_messages("bob@b.test", 1)
    assert len(msgs) == 1, a.log()[-3000:]
    check_relayed(msgs[0], qid, ALICE, "bob@b.test", BODY)
    m = wait_log(a, log_re(qid, "bob@b.test", "sent", ("mx.b.test", "127.0.0.2"), net.port,
                           r"250 2\.0\.0 Ok: queued as (\w+)"))
    assert m, a.log()[-3000:]
    # the reply A logged is B's: B's queue id delivered the file
    assert wait_log(b, rf"{m.group(1)}: to=<bob@b\.test>, relay=local, .*status=sent")
    assert f"id {m.group(1)}".encode() in split_prepended(msgs[0])[0]
    assert wait_queue_empty(a)
    # nothing delivered locally at A, nothing relayed back
    assert a.messages(ALICE) == []
    assert wait_queue_empty(b)


# b.test: mx1 (preference 10) at 127.0.0.3, mx2 (20) at 127.0.0.2
TWO_MX = ("--mx-host=b.test,mx1.b.test,10", "--mx-host=b.test,mx2.b.test,20",
          "--host-record=mx1.b.test,127.0.0.3", "--host-record=mx2.b.test,127.0.0.2")


def relayed_past_mx1(net, *mx1_sink_args):
    """mx1 is down (no arguments) or an smtp-sink with these arguments; A relays one
    message for bob@b.test, which reaches mx2 in the same attempt.  Returns (A, qid)."""
    net.start_dns(*TWO_MX)
    if mx1_sink_args:
        net.sink("127.0.0.3", *mx1_sink_args)
    mx2 = net.receiver("127.0.0.2")
    a = net.sender()
    qid = send(a, ALICE, "bob@b.test", BODY)
    msgs = mx2.wait_messages("bob@b.test", 1)
    assert len(msgs) == 1, a.log()[-3000:]
    check_relayed(msgs[0], qid, ALICE, "bob@b.test", BODY)
    assert wait_log(a, log_re(qid, "bob@b.test", "sent", ("mx2.b.test", "127.0.0.2"), net.port))
    # one attempt: the fallback happened inside it, nothing was deferred or bounced
    assert "status=deferred" not in a.log() and "status=bounced" not in a.log()
    assert wait_queue_empty(a)
    return a, qid


def mx1_passed_on(a, qid, port, reply):
    return re.search(rf"{qid}: to=<bob@b\.test>, relay=mx1\.b\.test\[127\.0\.0\.3\]:{port}: "
                     rf"{reply} .*\(trying the next server\)$", a.log(), re.M)


def test_mx_preference_lowest_first(net):
    net.start_dns(*TWO_MX)
    mx2 = net.receiver("127.0.0.2")
    mx1 = net.receiver("127.0.0.3")
    a = net.sender()
    qids = [send(a, ALICE, "bob@b.test", BODY) for _ in range(3)]
    assert len(mx1.wait_messages("bob@b.test", 3)) == 3, a.log()[-3000:]
    for qid in qids:
        assert wait_log(a, log_re(qid, "bob@b.test", "sent", ("mx1.b.test", "127.0.0.3"),
                                  net.port))
    assert mx2.messages("bob@b.test") == []


def test_mx_fallback_when_first_is_down(net):
    a, qid = relayed_past_mx1(net)  # mx1 has nothing listening on its address
    assert mx1_passed_on(a, qid, net.port, r"4\.4\.1"), a.log()
    assert wait_queue_empty(a)


def test_a_record_fallback_without_mx(net):
    net.start_dns("--host-record=b.test,127.0.0.4")
    b = net.receiver("127.0.0.4")
    a = net.sender()
    qid = send(a, ALICE, "bob@b.test", BODY)
    msgs = b.wait_messages("bob@b.test", 1)
    assert len(msgs) == 1, a.log()[-3000:]
    check_relayed(msgs[0], qid, ALICE, "bob@b.test", BODY)
    assert wait_log(a, log_re(qid, "bob@b.test", "sent", ("b.test", "127.0.0.4"), net.port))


# ---- answers from DNS that end in a bounce ----------------------------------------------


def test_null_mx_bounces_556(net):
    net.start_dns("--dns-rr=nullmx.test,15,000000")
    a = net.sender()
    qid = send(a, ALICE, "someone@nullmx.test", BODY)
    assert wait_log(a, log_re(qid, "someone@nullmx.test", "bounced", "none",
                              reply=r"556 5\.1\.10 .*"))
    [dsn] = bounce_of(a)
    text, rcpts = dsn_check(dsn, ["someone@nullmx.test"], r"5\.1\.10")
    assert "556 5.1.10" in text
    assert rcpts[0]["Diagnostic-Code"].startswith("smtp; 556 5.1.10")
    assert wait_queue_empty(a)


def test_nxdomain_bounces(net):
    net.start_dns("--mx-host=b.test,mx.b.test,10", "--host-record=mx.b.test,127.0.0.2")
    a = net.sender()
    qid = send(a, ALICE, "someone@nosuch.test", BODY)
    assert wait_log(a, log_re(qid, "someone@nosuch.test", "bounced", "none",
                              reply=r".*nosuch\.test.*"))
    [dsn] = bounce_of(a)
    text, rcpts = dsn_check(dsn, ["someone@nosuch.test"], r"5\.\d+\.\d+")
    assert "nosuch.test" in text
    assert wait_queue_empty(a)
    # the bounce itself was delivered locally, not relayed
    assert "status=deferred" not in a.log()


# ---- temporary and permanent failures at the receiver --------------------------------------


def test_remote_4xx_then_recovery(net):
    net.start_dns("--mx-host=b.test,mx.b.test,10", "--host-record=mx.b.test,127.0.0.2")
    sink = net.sink("127.0.0.2", "-r", "RCPT")  # 450 4.3.0 to every RCPT
    a = net.sender()
    qid = send(a, ALICE, "bob@b.test", BODY)
    assert wait_log(a, log_re(qid, "bob@b.test", "deferred", ("mx.b.test", "127.0.0.2"), net.port,
                              r"450 4\.3\.0 .*")), a.log()[-3000:]
    assert wait_for(lambda: in_queue(a, qid)), a.queue_files()
    sink.stop()
    b = net.receiver("127.0.0.2")
    msgs = b.wait_messages("bob@b.test", 1, timeout=20)
    assert len(msgs) == 1, a.log()[-3000:]
    check_relayed(msgs[0], qid, ALICE, "bob@b.test", BODY)
    assert wait_log(a, log_re(qid, "bob@b.test", "sent", ("mx.b.test", "127.0.0.2"), net.port))
    assert wait_queue_empty(a)
    assert a.messages(ALICE) == []  # no bounce for a temporary failure
    # Every deferral was the sink's 450 or, while nothing listened, a refused
    # connect: the connection A had cached to the dead sink was not counted
    # as an attempt (it is replaced by a new connection).
    for line in re.findall(rf"{qid}: to=<bob@b\.test>.*status=deferred.*", a.log()):
        assert "450 4.3.0" in line or "Connection refused" in line, line


def test_4xx_at_first_mx_tries_the_next_mx(net):
    a, qid = relayed_past_mx1(net, "-r", "RCPT")  # mx1 answers 450 to every RCPT
    assert mx1_passed_on(a, qid, net.port, r"450 4\.3\.0"), a.log()


def test_5xx_greeting_at_first_mx_tries_the_next_mx(net):
    # RFC 5321 3.1: a 554 greeting refuses this server, not the recipient.
    a, qid = relayed_past_mx1(net, "-f", "CONNECT")  # mx1 greets with a 5xx
    assert mx1_passed_on(a, qid, net.port, r"5\d\d"), a.log()
    assert a.messages(ALICE) == []  # no bounce


def test_5xx_greeting_at_every_mx_defers_not_bounces(net):
    net.start_dns("--mx-host=b.test,mx.b.test,10", "--host-record=mx.b.test,127.0.0.2")
    net.sink("127.0.0.2", "-f", "CONNECT")
    a = net.sender()
    qid = send(a, ALICE, "bob@b.test", BODY)
    assert wait_log(a, log_re(qid, "bob@b.test", "deferred", ("mx.b.test", "127.0.0.2"), net.port,
                              r"5\d\d .*")), a.log()[-3000:]
    assert wait_for(lambda: in_queue(a, qid)), a.queue_files()
    time.sleep(1)
    assert "status=bounced" not in a.log()
    assert a.messages(ALICE) == []  # no bounce: a later attempt may find the server willing


def test_receiver_recipient_limit_next_transaction(net):
    # B takes 2 recipients a transaction (452 4.5.3 to the third RCPT): A
    # sends the rest in further transactions on the same connection, in the
    # same attempt; nobody gets two copies.
    net.start_dns("--mx-host=b.test,mx.b.test,10", "--host-record=mx.b.test,127.0.0.2")
    b = net.receiver("127.0.0.2", max_recipients=2)
    a = net.sender()
    probes = b.log().count("info: connect from")
    rcpts = [f"r{i}@b.test" for i in range(1, 6)]
    qid = send(a, ALICE, rcpts, BODY)
    for r in rcpts:
        assert wait_log(a, log_re(qid, r, "sent", ("mx.b.test", "127.0.0.2"), net.port))
    assert wait_queue_empty(a)
    assert "status=deferred" not in a.log()
    for r in rcpts:
        msgs = b.wait_messages(r, 1)
        assert len(msgs) == 1, (r, msgs)
        assert msgs[0].endswith(lf(BODY))
    log = b.log()
    assert sorted(re.findall(r"from=<alice@a\.test>, size=\d+, nrcpt=(\d)", log)) == ["1", "2", "2"]
    assert log.count("info: connect from") - probes == 1, log
    assert a.messages(ALICE) == []


def test_message_over_receiver_size_bounces(net):
    net.start_dns("--mx-host=b.test,mx.b.test,10", "--host-record=mx.b.test,127.0.0.2")
    b = net.receiver("127.0.0.2", max_message_size="2K")
    a = net.sender()
    big = BODY + b"x" * 70 + b"\r\n"
    big = big + (b"y" * 70 + b"\r\n") * 60
    qid = send(a, ALICE, "bob@b.test", big)
    assert wait_log(a, log_re(qid, "bob@b.test", "bounced", ("mx.b.test", "127.0.0.2"), net.port,
                              r"552 5\.3\.4 .*"))
    [dsn] = bounce_of(a)
    dsn_check(dsn, ["bob@b.test"], r"5\.3\.4", original=big)
    assert wait_queue_empty(a)
    assert b.messages("bob@b.test") == []


def test_remote_5xx_on_one_of_two_rcpts(net):
    net.start_dns("--mx-host=b.test,mx.b.test,10", "--host-record=mx.b.test,127.0.0.2")
    users = net.tmp / "users"
    users.write_text("bob@b.test:{PLAIN}secret\n")  # carol does not exist at B
    b = net.receiver("127.0.0.2", users_file=str(users))
    a = net.sender()
    qid = send(a, ALICE, ["bob@b.test", "carol@b.test"], BODY)
    msgs = b.wait_messages("bob@b.test", 1)
    assert len(msgs) == 1, a.log()[-3000:]
    # one transaction with two recipients: A's Received: names none of them
    check_relayed(msgs[0], qid, ALICE, "bob@b.test", BODY, for_rcpt=False)
    assert wait_log(a, log_re(qid, "bob@b.test", "sent", ("mx.b.test", "127.0.0.2"), net.port))
    assert wait_log(a, log_re(qid, "carol@b.test", "bounced", ("mx.b.test", "127.0.0.2"),
                              net.port, r"550 5\.1\.1 .*"))
    [dsn] = bounce_of(a)
    text, rcpts = dsn_check(dsn, ["carol@b.test"], r"5\.1\.1")
    assert "bob@b.test" not in text
    assert rcpts[0]["Remote-MTA"] == "dns; mx.b.test"
    assert rcpts[0]["Diagnostic-Code"].startswith("smtp; 550 5.1.1")
    assert wait_queue_empty(a)
    assert not b.maildir("carol@b.test").exists()


def test_expiry_bounce(net):
    net.start_dns("--mx-host=b.test,mx.b.test,10", "--host-record=mx.b.test,127.0.0.2")
    net.sink("127.0.0.2", "-r", "RCPT")
    a = net.sender(queue_lifetime="3s")
    qid = send(a, ALICE, "bob@b.test", BODY)
    assert wait_log(a, log_re(qid, "bob@b.test", "deferred", reply=r"450 4\.3\.0 .*"))
    assert wait_log(a, rf"{qid}: to=<bob@b\.test>, relay=none, delay=\d+, status=expired "
                       rf"\(4\.4\.7 .*450 4\.3\.0.*\)$", timeout=20), a.log()[-3000:]
    [dsn] = bounce_of(a)
    text, rcpts = dsn_check(dsn, ["bob@b.test"], r"4\.4\.7")
    assert "450 4.3.0" in text
    assert wait_queue_empty(a)


def test_null_sender_failure_is_not_bounced(net):
    net.start_dns("--dns-rr=nullmx.test,15,000000", "--mx-host=b.test,mx.b.test,10",
                  "--host-record=mx.b.test,127.0.0.2")
    users = net.tmp / "users"
    users.write_text("bob@b.test:{PLAIN}secret\n")
    net.receiver("127.0.0.2", users_file=str(users))
    a = net.sender()
    qid = send(a, "", ["someone@nullmx.test", "carol@b.test"], BODY)
    assert wait_log(a, log_re(qid, "someone@nullmx.test", "bounced", "none"))
    assert wait_log(a, log_re(qid, "carol@b.test", "bounced", reply=r"550 5\.1\.1 .*"))
    assert wait_log(a, rf"{qid}: removed$")
    assert wait_queue_empty(a)
    assert "non-delivery notification" not in a.log()
    assert a.messages(ALICE) == []
    assert not (a.mail_root).exists() or not any(a.mail_root.rglob("new/*"))


# ---- routing -------------------------------------------------------------------------------


def test_two_domains_two_sessions(net):
    net.start_dns("--mx-host=b.test,mx.b.test,10", "--host-record=mx.b.test,127.0.0.2",
                  "--mx-host=c.test,mx.c.test,10", "--host-record=mx.c.test,127.0.0.3")
    b = net.receiver("127.0.0.2", "b.test")
    c = net.receiver("127.0.0.3", "c.test")
    a = net.sender()
    qid = send(a, ALICE, ["bob@b.test", "carol@c.test"], BODY)
    mb = b.wait_messages("bob@b.test", 1)
    mc = c.wait_messages("carol@c.test", 1)
    assert len(mb) == 1 and len(mc) == 1, a.log()[-3000:]
    # one session per domain, each with its own recipient only
    check_relayed(mb[0], qid, ALICE, "bob@b.test", BODY)
    check_relayed(mc[0], qid, ALICE, "carol@c.test", BODY)
    assert not c.maildir("bob@b.test").exists() and not b.maildir("carol@c.test").exists()
    assert wait_log(a, log_re(qid, "bob@b.test", "sent", ("mx.b.test", "127.0.0.2"), net.port))
    assert wait_log(a, log_re(qid, "carol@c.test", "sent", ("mx.c.test", "127.0.0.3"), net.port))
    assert wait_queue_empty(a)


def test_dot_stuffing_round_trip(net):
    net.start_dns("--mx-host=b.test,mx.b.test,10", "--host-record=mx.b.test,127.0.0.2")
    b = net.receiver("127.0.0.2")
    a = net.sender()
    head = b"Subject: dots\r\n\r\n.\r\n..\r\n...\r\n.leading\r\n..double\r\n. space\r\n"
    # a line that starts with a dot exactly at 64 KiB into the message (A reads
    # the queue file in 64 KiB pieces), then a line of just '.'
    filler = b""
    while len(head) + len(filler) < 65536 - 100:
        filler += b"x" * 78 + b"\r\n"
    filler += b"y" * (65536 - len(head) - len(filler) - 2) + b"\r\n"
    body = head + filler + b".at-the-boundary\r\n.\r\nmiddle . dot\r\n..\r\nend\r\n"
    assert body.index(b".at-the-boundary") == 65536
    qid = send(a, ALICE, "bob@b.test", body)
    msgs = b.wait_messages("bob@b.test", 1)
    assert len(msgs) == 1, a.log()[-3000:]
    check_relayed(msgs[0], qid, ALICE, "bob@b.test", body)


def test_smarthost_without_mx_lookup(net):
    # No dnsmasq: A's resolver is the closed port of the fixture, so an MX
    # lookup could only defer.  b.test and c.test both go to the smarthost,
    # in one transaction.
    s = net.receiver("127.0.0.4", "b.test, c.test")
    a = net.factory(hostname="mx.a.test", local_domains="a.test",
                    relayhost=f"[127.0.0.4]:{net.port}")
    qid = send(a, ALICE, ["bob@b.test", "carol@c.test"], BODY)
    mb = s.wait_messages("bob@b.test", 1)
    mc = s.wait_messages("carol@c.test", 1)
    assert len(mb) == 1 and len(mc) == 1, a.log()[-3000:]
    check_relayed(mb[0], qid, ALICE, "bob@b.test", BODY, for_rcpt=False)
    check_relayed(mc[0], qid, ALICE, "carol@c.test", BODY, for_rcpt=False)
    for rcpt in ("bob@b.test", "carol@c.test"):
        assert wait_log(a, log_re(qid, rcpt, "sent", ("127.0.0.4", "127.0.0.4"), net.port))
    # one transaction with both recipients at the smarthost
    assert len(re.findall(r": from=<alice@a\.test>, size=\d+, nrcpt=2 ", s.log())) == 1, s.log()
    assert wait_queue_empty(a)


def test_smarthost_bracketed_name_skips_mx(net):
    net.start_dns("--host-record=smart.test,127.0.0.4",
                  "--mx-host=smart.test,elsewhere.test,10",
                  "--host-record=elsewhere.test,127.0.0.3")
    smart = net.receiver("127.0.0.4", "b.test")
    elsewhere = net.receiver("127.0.0.3", "b.test")
    a = net.sender(relayhost=f"[smart.test]:{net.port}")
    qid = send(a, ALICE, "bob@b.test", BODY)
    assert wait_log(a, log_re(qid, "bob@b.test", "sent"))
    assert elsewhere.messages("bob@b.test") == []
    assert len(smart.wait_messages("bob@b.test", 1)) == 1


@pytest.mark.parametrize("relayhost", ["[nothere.test]", "nothere.test"])
def test_relayhost_not_found_defers_not_bounces(net, relayhost):
    """A relayhost that does not resolve is petrel's own configuration error: the mail is
    kept (deferred, with a warning naming relayhost), never bounced to its sender."""
    net.start_dns("--host-record=smart.test,127.0.0.4")
    a = net.sender(relayhost=f"{relayhost}:{net.port}")
    qid = send(a, ALICE, "bob@b.test", BODY)
    assert wait_log(a, log_re(qid, "bob@b.test", "deferred", "none", None,
                              r"4\.4\.3 relayhost not found: .*nothere\.test.*")), a.log()[-3000:]
    assert "relayhost not found" in a.log() and "warning" in a.log()
    assert wait_for(lambda: in_queue(a, qid)), a.queue_files()
    assert "status=bounced" not in a.log()
    assert a.messages(ALICE) == []  # no bounce came back to the sender


# ---- durability ----------------------------------------------------------------------------


def test_restart_in_the_middle_of_retries(net):
    net.start_dns("--mx-host=b.test,mx.b.test,10", "--host-record=mx.b.test,127.0.0.2")
    b = net.receiver("127.0.0.2", start=False)  # down for now
    a = net.sender()
    qid = send(a, ALICE, "bob@b.test", BODY)
    assert wait_log(a, log_re(qid, "bob@b.test", "deferred", ("mx.b.test", "127.0.0.2"),
                              net.port, r"4\.4\.1 .*[Cc]onnection refused.*"))
    assert wait_for(lambda: a.log().count(f"{qid}: to=<bob@b.test>") >= 2), a.log()[-3000:]
    assert a.stop() == 0
    assert wait_for(lambda: in_queue(a, qid)), a.queue_files()
    b.start()
    a.start()
    msgs = b.wait_messages("bob@b.test", 1, timeout=20)
    assert len(msgs) == 1, a.log()[-3000:]
    check_relayed(msgs[0], qid, ALICE, "bob@b.test", BODY)
    assert wait_log(a, log_re(qid, "bob@b.test", "sent", ("mx.b.test", "127.0.0.2"), net.port))
    assert wait_queue_empty(a)
    assert len(b.messages("bob@b.test")) == 1


# ---- Postfix as the receiving peer -----------------------------------------------------------


POSTFIX_PREFIX_RE = re.compile(
    rb"\AReturn-Path: <alice@a\.test>\nX-Original-To: bob@b\.test\nDelivered-To: bob@b\.test\n"
    rb"Received: from mx\.a\.test \([^()\n]*\[127\.0\.0\.1\]\)\n"
    rb"\tby pf\.b\.test \(Postfix\) with E?SMTPS? id [0-9A-Za-z]+\n"
    rb"\tfor <bob@b\.test>; " + DATE_RE + rb"\n")


def test_delivery_to_postfix_byte_exact(net):
    net.start_dns("--mx-host=b.test,mx.b.test,10", "--host-record=mx.b.test,127.0.0.5")
    pf = net.postfix("127.0.0.5", ["bob@b.test"])
    a = net.sender()
    qid = send(a, ALICE, "bob@b.test", BODY)
    msgs = wait_for(lambda: pf.messages("bob@b.test"), timeout=20)
    assert msgs and len(msgs) == 1, a.log()[-3000:] + pf.log()[-3000:]
    m = POSTFIX_PREFIX_RE.match(msgs[0])
    assert m, msgs[0][:600]
    rest = msgs[0][m.end():]
    r = a_received_re(qid, "bob@b.test").match(rest)
    assert r, rest[:400]
    assert rest[r.end():] == lf(BODY)
    assert wait_log(a, log_re(qid, "bob@b.test", "sent", ("mx.b.test", "127.0.0.5"), net.port,
                              r"250 2\.0\.0 Ok: queued as [0-9A-Za-z]+"))
    assert wait_queue_empty(a)
    assert re.search(r"status=sent \(delivered to maildir\)", pf.log())


# ---- more of the client's behaviour --------------------------------------------------------


def test_mx_host_without_address_is_skipped(net):
    # mx1.b.test has no address (NXDOMAIN): the next MX takes the mail at once
    net.start_dns("--mx-host=b.test,mx1.b.test,10", "--mx-host=b.test,mx2.b.test,20",
                  "--host-record=mx2.b.test,127.0.0.2")
    b = net.receiver("127.0.0.2")
    a = net.sender()
    qid = send(a, ALICE, "bob@b.test", BODY)
    assert len(b.wait_messages("bob@b.test", 1)) == 1, a.log()[-3000:]
    assert wait_log(a, log_re(qid, "bob@b.test", "sent", ("mx2.b.test", "127.0.0.2"), net.port))
    assert "status=deferred" not in a.log()


def test_aaaa_only_mx_host(net):
    # mx6.b.test has only an IPv6 address (::1)
    if not port_free_on(["::1"], 0, socket.AF_INET6):
        pytest.skip("no IPv6 loopback here")
    net.start_dns("--mx-host=b.test,mx6.b.test,10", "--host-record=mx6.b.test,::1")
    b = net.receiver("::1", listen=f"[::1]:{net.port}")
    a = net.sender()
    qid = send(a, ALICE, "bob@b.test", BODY)
    msgs = b.wait_messages("bob@b.test", 1)
    assert len(msgs) == 1, a.log()[-3000:]
    assert wait_log(a, log_re(qid, "bob@b.test", "sent", ("mx6.b.test", "::1"), net.port))


def test_no_mx_host_with_an_address_bounces(net):
    """MX records whose hosts all lack addresses (NXDOMAIN, every lookup answered): RFC
    5321 5.1 says this MUST be reported as an error; bounced 5.4.4 at once as Postfix
    does (it was deferred until queue_lifetime)."""
    net.start_dns("--mx-host=b.test,mx1.b.test,10", "--mx-host=b.test,mx2.b.test,20")
    a = net.sender()
    qid = send(a, ALICE, "bob@b.test", BODY)
    assert wait_log(a, log_re(qid, "bob@b.test", "bounced", "none",
                              reply=r"5\.4\.4 No usable mail server: no MX host of b\.test .*")), \
        a.log()[-3000:]
    [dsn] = bounce_of(a)
    text, rcpts, headers = dsn_parts(dsn)
    assert [r["Status"] for r in rcpts] == ["5.4.4"]
    assert wait_queue_empty(a)


def test_connection_reused_for_the_next_message(net):
    net.start_dns("--mx-host=b.test,mx.b.test,10", "--host-record=mx.b.test,127.0.0.2")
    b = net.receiver("127.0.0.2")
    a = net.sender()
    probes = b.log().count("info: connect from")  # the fixture's readiness probe
    for i in range(3):
        qid = send(a, ALICE, "bob@b.test", BODY.replace(b"relay-1@", f"reuse-{i}@".encode()))
        assert len(b.wait_messages("bob@b.test", i + 1)) == i + 1, a.log()[-3000:]
        # "removed" comes after the session put its connection in the cache
        assert wait_log(a, rf"{qid}: removed$")
    assert wait_queue_empty(a)
    log = b.log()
    assert len(re.findall(r": client=unknown\[127\.0\.0\.1\]", log)) == 3
    # three transactions on one connection (idle ones are kept for 5 s)
    assert log.count("info: connect from") - probes == 1, log


def send_smtputf8(a, rcpts, body):
    """One message from ALICE to rcpts (UTF-8 addresses allowed) with MAIL's SMTPUTF8."""
    with smtp(a) as s:
        s.command_encoding = "utf-8"
        assert s.ehlo("client.example")[0] == 250
        assert s.docmd(f"MAIL FROM:<{ALICE}> SMTPUTF8")[0] == 250
        for rcpt in rcpts:
            code, resp = s.docmd(f"RCPT TO:<{rcpt}>")
            assert code == 250, resp
        code, resp = s.data(body)
        assert code == 250, resp


def test_smtputf8_message_to_peer_without_smtputf8_bounces(net):
    net.start_dns("--mx-host=b.test,mx.b.test,10", "--host-record=mx.b.test,127.0.0.2")
    net.sink("127.0.0.2")  # smtp-sink offers no SMTPUTF8
    a = net.sender()
    rcpt = "bøb@b.test"
    send_smtputf8(a, [rcpt], "Subject: grüße\r\n\r\nünïcödé\r\n".encode())
    assert wait_log(a, rf"to=<{rcpt}>, relay=mx\.b\.test\[127\.0\.0\.2\]:{net.port}, "
                       rf"delay=\d+, status=bounced \(550 5\.6\.7 .*SMTPUTF8.*\)$")
    [dsn] = bounce_of(a)
    text, rcpts, headers = dsn_parts(dsn)
    assert [r["Status"] for r in rcpts] == ["5.6.7"]
    # RFC 6533: the address keeps its UTF-8 under the utf-8 address type
    assert dsn.get_payload()[1].get_content_type() == "message/global-delivery-status"
    assert [r["Final-Recipient"] for r in rcpts] == ["utf-8; bøb@b.test"]
    assert "Subject: gr" in headers
    assert "SMTPUTF8" in text
    assert wait_queue_empty(a)


def test_international_domain_is_looked_up_and_delivered_by_its_a_label(net):
    """bob@bücher.test (SMTPUTF8): A looks up the MX of xn--bcher-kva.test (DNS holds
    A-labels only) and relays; B, whose local_domains names the A-label form, takes the
    Unicode spelling as its own domain and delivers into the A-label's Maildir."""
    net.start_dns("--mx-host=xn--bcher-kva.test,mx.b.test,10",
                  "--host-record=mx.b.test,127.0.0.2")
    b = net.receiver("127.0.0.2", domains="xn--bcher-kva.test")
    a = net.sender()
    send_smtputf8(a, ["bob@bücher.test", "Carol@BÜCHER.test"], b"Subject: idn\r\n\r\nhello\r\n")
    [bob] = b.wait_messages("bob@xn--bcher-kva.test", 1)
    [carol] = b.wait_messages("carol@xn--bcher-kva.test", 1)
    assert b"Delivered-To: bob@xn--bcher-kva.test\n" in bob
    assert b"Delivered-To: carol@xn--bcher-kva.test\n" in carol
    assert wait_queue_empty(a)
    assert a.messages(ALICE) == []  # no bounce


def test_invalid_international_domain_bounces_without_a_lookup(net):
    """A name that is not valid IDNA2008 (a label with a disallowed code point, U+2044)
    can be no host: bounced at once as a bad domain, not retried."""
    net.start_dns("--host-record=mx.b.test,127.0.0.2")
    a = net.sender()
    send_smtputf8(a, ["bob@a\u2044b.test"], b"Subject: idn\r\n\r\nhello\r\n")
    [dsn] = bounce_of(a)
    text, rcpts, headers = dsn_parts(dsn)
    assert [r["Status"] for r in rcpts] == ["5.1.2"]
    assert "invalid international name" in text, text
    assert wait_queue_empty(a)


def test_bounce_to_remote_sender_is_relayed(net):
    # The sender lives at b.test: A's DSN (from <>) is relayed like any mail.
    net.start_dns("--dns-rr=nullmx.test,15,000000", "--mx-host=b.test,mx.b.test,10",
                  "--host-record=mx.b.test,127.0.0.2")
    b = net.receiver("127.0.0.2")
    a = net.sender()
    qid = send(a, "bob@b.test", "someone@nullmx.test", BODY)
    assert wait_log(a, log_re(qid, "someone@nullmx.test", "bounced", "none"))
    msgs = b.wait_messages("bob@b.test", 1)
    assert len(msgs) == 1, a.log()[-3000:]
    prefix, rest = split_prepended(msgs[0])
    assert prefix.startswith(b"Return-Path: <>\nDelivered-To: bob@b.test\n"), prefix
    dsn = email.message_from_bytes(rest, policy=email.policy.compat32)
    assert dsn.get_content_type() == "multipart/report"
    assert dsn["To"] == "<bob@b.test>"
    assert "Final-Recipient: rfc822; someone@nullmx.test" in rest.decode()
    assert wait_queue_empty(a)


def test_too_many_received_headers_bounce_554_5_4_6(net):
    net.start_dns("--mx-host=b.test,mx.b.test,10", "--host-record=mx.b.test,127.0.0.2")
    b = net.receiver("127.0.0.2")
    a = net.sender()
    hops = b"".join(b"Received: from hop%d.test by hop%d.test; Sat, 28 Nov 2026 12:00:00 +0000\r\n"
                    % (i, i + 1) for i in range(51))
    looped = hops + BODY
    qid = send(a, ALICE, "bob@b.test", looped)
    assert wait_log(a, log_re(qid, "bob@b.test", "bounced", reply=r"554 5\.4\.6 .*"))
    [dsn] = bounce_of(a)
    dsn_parts(dsn)
    assert wait_queue_empty(a)
    assert b.messages("bob@b.test") == []


def test_copy_forwarded_for_an_alias_names_it_in_delivered_to(net, tmp_path):
    """Recipients an alias of A forwarded the message to get it with a Delivered-To: field
    naming the alias (lower-cased) under A's Received:, one transaction per alias; a
    recipient named directly gets it as it was sent."""
    net.start_dns("--mx-host=b.test,mx.b.test,10", "--host-record=mx.b.test,127.0.0.2")
    aliases = tmp_path / "aliases"
    aliases.write_text("team@a.test: bob@b.test, carol@b.test\nfwd@a.test: dave@b.test\n")
    b = net.receiver("127.0.0.2")
    a = net.sender(aliases_file=aliases)
    qid = send(a, ALICE, ["Team@A.test", "fwd@a.test", "erin@b.test"], BODY)
    for rcpt, alias in (("bob@b.test", "team@a.test"), ("carol@b.test", "team@a.test"),
                        ("dave@b.test", "fwd@a.test"), ("erin@b.test", None)):
        msgs = b.wait_messages(rcpt, 1)
        assert len(msgs) == 1, (rcpt, a.log()[-3000:])
        prefix, rest = split_prepended(msgs[0])
        m = a_received_re(qid, None if alias == "team@a.test" else rcpt).match(rest)
        assert m, rest[:400]
        want = lf(BODY) if alias is None else f"Delivered-To: {alias}\n".encode() + lf(BODY)
        assert rest[m.end():] == want, (rcpt, rest[:600])
    # four recipients sent in three transactions (B's queue ids)
    sent = re.findall(rf"{qid}: to=<[^>]*>, relay=mx\.b\.test\[127\.0\.0\.2\]:\d+, "
                      r"delay=\d+, status=sent \(250 2\.0\.0 Ok: queued as (\w+)\)$",
                      a.log(), re.M)
    assert len(sent) == 4 and len(set(sent)) == 3, a.log()[-3000:]
    assert wait_queue_empty(a)


def test_alias_forwarding_loop_between_two_servers_stops_at_the_second_round(net, tmp_path):
    """x@a.test goes to x and to y@b.test, which B forwards back to x@a.test.  The copy A
    forwards for the alias names it in a Delivered-To: field, so when the message comes
    back A refuses x and the forwarding (5.4.6, as Postfix's local(8)): x gets one copy and
    alice one bounce.  Before, x got 26 copies, until the hop count stopped it."""
    net.start_dns("--mx-host=a.test,mx.a.test,10", "--host-record=mx.a.test,127.0.0.3",
                  "--mx-host=b.test,mx.b.test,10", "--host-record=mx.b.test,127.0.0.2")
    (tmp_path / "aliases-a").write_text("x@a.test: x, y@b.test\n")
    (tmp_path / "aliases-b").write_text("y@b.test: x@a.test\n")
    b = net.receiver("127.0.0.2", aliases_file=tmp_path / "aliases-b",
                     dns_resolver=net.dns.address, smtp_port=net.port)
    a = net.receiver("127.0.0.3", domains="a.test", hostname="mx.a.test",
                     aliases_file=tmp_path / "aliases-a", dns_resolver=net.dns.address,
                     smtp_port=net.port)
    qid = send(a, ALICE, "x@a.test", BODY)
    [dsn] = bounce_of(a)
    text, rcpts, headers = dsn_parts(dsn)
    assert sorted(r["Final-Recipient"] for r in rcpts) == ["rfc822; x@a.test",
                                                            "rfc822; y@b.test"], rcpts
    assert all(r["Status"] == "5.4.6" for r in rcpts), rcpts
    assert "mail forwarding loop for x@a.test" in text, text
    # the message that came back: forwarded by A for x, then by B for y
    assert headers.index("Delivered-To: y@b.test") < headers.index("Delivered-To: x@a.test"), \
        headers
    assert re.search(r"to=<x@a\.test>, relay=local, delay=\d+, status=bounced "
                     r"\(mail forwarding loop for x@a\.test\)$", a.log(), re.M), a.log()[-3000:]
    assert re.search(r"to=<y@b\.test>, relay=none, delay=\d+, status=bounced "
                     r"\(5\.4\.6 mail forwarding loop for x@a\.test\)$", a.log(), re.M), \
        a.log()[-3000:]
    assert wait_queue_empty(a) and wait_queue_empty(b)
    time.sleep(1)
    [first] = a.messages("x@a.test")
    prefix, rest = split_prepended(first)
    assert f" id {qid}\n".encode() in prefix and rest == lf(BODY)
    assert len(a.messages(ALICE)) == 1
    assert "status=bounced" not in b.log(), b.log()[-3000:]


def test_sigterm_during_a_relay_session_keeps_the_message(net):
    net.start_dns("--mx-host=b.test,mx.b.test,10", "--host-record=mx.b.test,127.0.0.2")
    sink = net.sink("127.0.0.2", "-w", "30")  # answers DATA only after 30 s
    a = net.sender()
    qid = send(a, ALICE, "bob@b.test", BODY)
    assert wait_for(lambda: "DATA" in sink.log().upper() and "RCPT" in sink.log().upper()), \
        sink.log()
    t0 = time.time()
    assert a.stop() == 0
    assert time.time() - t0 < 10, "SIGTERM waited for the relay session"
    assert wait_for(lambda: in_queue(a, qid)), a.queue_files()
    assert wait_log(a, log_re(qid, "bob@b.test", "deferred", reply=r"4\.3\.2 petrel is stopping"))
    sink.stop()
    b = net.receiver("127.0.0.2")
    a.start()
    msgs = b.wait_messages("bob@b.test", 1, timeout=20)
    assert len(msgs) == 1, a.log()[-3000:]
    check_relayed(msgs[0], qid, ALICE, "bob@b.test", BODY)
    assert wait_queue_empty(a)


def test_postfix_rejects_one_of_two_rcpts(net):
    # Postfix knows bob only: 550 5.1.1 for carol (virtual mailbox table)
    net.start_dns("--mx-host=b.test,mx.b.test,10", "--host-record=mx.b.test,127.0.0.5")
    pf = net.postfix("127.0.0.5", ["bob@b.test"])
    a = net.sender()
    qid = send(a, ALICE, ["bob@b.test", "carol@b.test"], BODY)
    msgs = wait_for(lambda: pf.messages("bob@b.test"), timeout=20)
    assert msgs and len(msgs) == 1, a.log()[-3000:] + pf.log()[-3000:]
    assert msgs[0].endswith(lf(BODY))
    assert wait_log(a, log_re(qid, "bob@b.test", "sent", ("mx.b.test", "127.0.0.5"), net.port))
    assert wait_log(a, log_re(qid, "carol@b.test", "bounced", ("mx.b.test", "127.0.0.5"),
                              net.port, r"550 5\.1\.1 .*[Uu]ser unknown.*"))
    [dsn] = bounce_of(a)
    text, rcpts = dsn_check(dsn, ["carol@b.test"], r"5\.1\.1")
    assert "bob@b.test" not in text
    assert wait_queue_empty(a)


def test_mx_pointing_at_ourselves_is_deferred_not_looped(net):
    """RFC 5321 5.1: an MX that is this server is a configuration error, not a loop."""
    net.start_dns("--mx-host=self.test,mx.self.test,10", "--host-record=mx.self.test,127.0.0.5")
    a = net.sender(start=False, listen_smtp=f"127.0.0.5:{net.port}")
    a.host, a.port = "127.0.0.5", net.port
    a.start()
    qid = send(a, ALICE, "bob@self.test", BODY)
    assert wait_log(a, rf"{qid}: .*loops back to myself"), a.log()[-3000:]
    assert wait_log(a, log_re(qid, "bob@self.test", "deferred"))
    # Nothing was sent to ourselves: one message in the queue, no second one.
    # (the status file is written as ID.st.new and renamed: wait for the rename)
    assert wait_for(lambda: a.queue_files() in ([qid], sorted([qid, qid + ".st"]))), \
        a.queue_files()
    assert "connect from unknown[127.0.0.5]" not in a.log().split(qid, 1)[1]


@pytest.mark.parametrize("address", ["0.0.0.0", "::ffff:127.0.0.5", "::"])
def test_mx_at_an_unspecified_or_mapped_address_is_ourselves(net, address):
    """An MX host at 0.0.0.0 or :: (no destination, RFC 1122 3.2.1.3; Linux connects them
    to this machine) or at our own address written IPv4-mapped: deferred as a loop to
    ourselves. Before, each was taken for another server: the message went round through
    petrel 51 times until the hop count bounced it."""
    net.start_dns("--mx-host=odd.test,mx.odd.test,10", f"--host-record=mx.odd.test,{address}")
    a = net.sender(start=False, listen_smtp=f"127.0.0.5:{net.port}")
    a.host, a.port = "127.0.0.5", net.port
    a.start()
    qid = send(a, ALICE, "bob@odd.test", BODY)
    assert wait_log(a, rf"{qid}: .*loops back to myself"), a.log()[-3000:]
    assert "status=sent" not in a.log(), a.log()[-3000:]
    assert "info: connect from" not in a.log().split(qid, 1)[1]


def test_relayhost_with_a_null_mx_defers(net):
    """relayhost = a domain whose MX is null (RFC 7505): our configuration is wrong, not
    the recipients: deferred (4.3.5), as Postfix does, not bounced."""
    net.start_dns("--dns-rr=smart.test,15,000000")  # the null MX "." (RFC 7505)
    a = net.sender(relayhost="smart.test")
    qid = send(a, ALICE, "bob@b.test", BODY)
    assert wait_log(a, log_re(qid, "bob@b.test", "deferred", reply=r"4\.3\.5 relayhost .*null MX.*")), \
        a.log()[-3000:]
    assert a.messages(ALICE) == []  # no bounce


def test_wildcard_listener_relays_to_other_hosts(net):
    """listen_smtp = 0.0.0.0:P with smtp_port = P (every server's defaults, 25 and 25):
    an MX elsewhere is another server and gets the mail (here an unroutable address:
    a connect timeout); only the machine's own addresses (all of 127/8) are ourselves.
    Before, a wildcard listener counted every address as ours: nothing was relayed."""
    net.start_dns("--mx-host=w.test,mx.w.test,10", "--host-record=mx.w.test,192.0.2.10",
                  "--mx-host=self.test,mx.self.test,10", "--host-record=mx.self.test,127.0.0.5")
    a = net.sender(start=False, listen_smtp=f"0.0.0.0:{net.port}", smtp_timeout="2s")
    a.port = net.port
    a.start()
    qid = send(a, ALICE, "bob@w.test", BODY)
    assert wait_log(a, log_re(qid, "bob@w.test", "deferred",
                              reply=r"4\.4\.1 mx\.w\.test\[192\.0\.2\.10\].*connect.*"),
                    timeout=20), a.log()[-3000:]
    qid2 = send(a, ALICE, "bob@self.test", BODY)
    assert wait_log(a, rf"{qid2}: .*loops back to myself"), a.log()[-3000:]
    assert f"{qid}: 4.4.6" not in a.log() and "w.test loops back" not in a.log()


def test_ipv6_wildcard_listener_is_not_our_ipv4_addresses(net):
    """listen_smtp = [::]:P is IPv6-only: an IPv4 server on 127.0.0.2:P is another server,
    not ourselves (mail to it was deferred "loops back to myself")."""
    if not socket.has_ipv6 or not port_free_on(["::"], net.port, socket.AF_INET6):
        pytest.skip("no IPv6 wildcard here")
    b = net.receiver("127.0.0.2")
    a = net.sender(start=False, listen_smtp=f"[::]:{net.port}",
                   relayhost=f"[127.0.0.2]:{net.port}",
                   relay_networks="127.0.0.0/8, ::1/128")
    a.host, a.port = "::1", net.port
    a.start()
    qid = send(a, ALICE, "bob@b.test", BODY)
    assert len(b.wait_messages("bob@b.test", 1)) == 1, a.log()[-3000:]
    assert "loops back to myself" not in a.log()
    assert wait_log(a, log_re(qid, "bob@b.test", "sent"))


def test_backup_mx_hands_mail_only_to_better_mx(net):
    """RFC 5321 5.1: A is s.test's MX 20; finding itself in the list it drops itself and
    MX 30 (B), keeping only MX 10, which is down: the mail waits at A.  Before, A sent it
    to B and B back to A until the hop count bounced it."""
    net.start_dns("--mx-host=s.test,mx1.s.test,10", "--host-record=mx1.s.test,127.0.0.4",
                  "--mx-host=s.test,mx2.s.test,20", "--host-record=mx2.s.test,127.0.0.2",
                  "--mx-host=s.test,mx3.s.test,30", "--host-record=mx3.s.test,127.0.0.3")
    b = net.receiver("127.0.0.3", domains="b.test", dns_resolver=net.dns.address,
                     smtp_port=net.port)
    a = net.sender(start=False, listen_smtp=f"127.0.0.2:{net.port}")
    a.host, a.port = "127.0.0.2", net.port
    a.start()
    qid = send(a, ALICE, "bob@s.test", BODY)
    assert wait_log(a, log_re(qid, "bob@s.test", "deferred", ("mx1.s.test", "127.0.0.4"),
                              net.port)), a.log()[-3000:]
    time.sleep(2)  # retries (retry_min 1 s) keep to MX 10
    assert "from=<alice@a.test>" not in b.log(), b.log()
    assert "mx3.s.test" not in a.log() and "bounced" not in a.log(), a.log()[-3000:]
    assert in_queue(a, qid)


# ---- a remote server that breaks the protocol ---------------------------------------


class ScriptedMX:
    """One connection at a time on addr:port: a 220, an EHLO reply with PIPELINING (and
    STARTTLS when asked), then `respond(conn, buffered)` for the rest.  What it read and
    what it did are kept in .seen."""

    def __init__(self, addr, port, respond, starttls=False):
        self.srv = socket.create_server((addr, port))
        self.srv.settimeout(0.2)
        self.respond, self.starttls = respond, starttls
        self.seen, self.stopping = [], False
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while not self.stopping:
            try:
                conn, _ = self.srv.accept()
            except socket.timeout:
                continue
            with conn:
                conn.settimeout(10)
                try:
                    conn.sendall(b"220 mx.fake.test ESMTP\r\n")
                    buf = read_until(conn, b"\r\n")
                    self.seen.append(buf)
                    conn.sendall(b"250-mx.fake.test\r\n" +
                                 (b"250-STARTTLS\r\n" if self.starttls else b"") +
                                 b"250 PIPELINING\r\n")
                    self.respond(self, conn)
                except OSError:
                    pass

    def close(self):
        self.stopping = True
        self.thread.join(5)
        self.srv.close()


def read_until(conn, end):
    buf = b""
    while end not in buf:
        got = conn.recv(65536)
        if not got:
            raise OSError("closed")
        buf += got
    return buf


def send_via_smarthost(net, rcpts=("bob@b.test",), **conf):
    """Sender A with 127.0.0.4 as its relayhost, one message to rcpts sent to it."""
    a = net.factory(hostname="mx.a.test", local_domains="a.test",
                    relayhost=f"[127.0.0.4]:{net.port}", **conf)
    return a, send(a, ALICE, list(rcpts), BODY)


def test_remote_data_after_354_is_not_taken_as_the_reply(net):
    """The remote server answers MAIL, RCPT and DATA and puts a 250 after its 354 before
    the message was sent, then refuses the message itself: that early 250 must not count
    as the reply to the message's end.  The message is deferred, not logged sent."""

    def respond(mx, conn):
        mx.seen.append(read_until(conn, b"DATA\r\n"))
        conn.sendall(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go ahead\r\n250 2.0.0 stale\r\n")
        try:
            mx.seen.append(read_until(conn, b"\r\n.\r\n"))
            conn.sendall(b"554 5.6.0 refused\r\n")
            read_until(conn, b"\r\n")
        except OSError:
            mx.seen.append(b"(closed before the message's end)")

    mx = ScriptedMX("127.0.0.4", net.port, respond)
    try:
        a, qid = send_via_smarthost(net)
        assert wait_log(a, log_re(qid, "bob@b.test", "deferred", reply=r".*after its 354.*")), \
            a.log()[-3000:]
        assert "status=sent" not in a.log()
        assert any(b"DATA\r\n" in s for s in mx.seen), mx.seen
    finally:
        mx.close()


def test_bdat_message_without_final_crlf_is_relayed_with_one(net):
    """A message whose last BDAT chunk ends inside a line goes out with one CRLF before the
    ".", not two."""
    def respond(mx, conn):
        read_until(conn, b"DATA\r\n")
        conn.sendall(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go ahead\r\n")
        mx.seen.append(read_until(conn, b"\r\n.\r\n"))
        conn.sendall(b"250 2.0.0 Ok: queued\r\n")

    mx = ScriptedMX("127.0.0.4", net.port, respond)
    try:
        a = net.factory(hostname="mx.a.test", local_domains="a.test",
                        relayhost=f"[127.0.0.4]:{net.port}")
        s, _ = a.connect()
        try:
            s.sendall(b"EHLO client.example\r\nMAIL FROM:<alice@a.test>\r\n"
                      b"RCPT TO:<bob@b.test>\r\nBDAT 17\r\nSubject: x\r\n\r\nabc"
                      b"BDAT 0 LAST\r\nQUIT\r\n")
            replies = recv_replies(s, 6)
        finally:
            s.close()
        assert [r[:3] for r in replies] == ["250", "250", "250", "250", "250", "221"], replies
        assert wait_log(a, log_re(queue_id(replies[4]), "bob@b.test", "sent")), a.log()[-3000:]
        data = mx.seen[-1]  # after the EHLO
        assert data.endswith(b"\r\nSubject: x\r\n\r\nabc\r\n.\r\n"), data
    finally:
        mx.close()


def test_remote_plaintext_after_starttls_220_is_refused(net):
    """Replies injected in clear right after the 220 to STARTTLS (RFC 3207 6) must not be
    read as replies over TLS: the conversation ends there, the message is deferred."""

    def respond(mx, conn):
        mx.seen.append(read_until(conn, b"STARTTLS\r\n"))
        conn.sendall(b"220 2.0.0 go ahead\r\n250-injected\r\n250 PIPELINING\r\n"
                     b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n250 2.0.0 injected ok\r\n")
        time.sleep(1)

    mx = ScriptedMX("127.0.0.4", net.port, respond, starttls=True)
    try:
        a, qid = send_via_smarthost(net)
        assert wait_log(a, log_re(qid, "bob@b.test", "deferred", reply=r".*after its 220.*")), \
            a.log()[-3000:]
        assert "status=sent" not in a.log()
    finally:
        mx.close()


def test_rcpt_refused_before_the_connection_broke_is_bounced(net):
    """The remote server refuses one recipient with 550 at RCPT, takes the other, then
    drops the connection after the message without a reply.  The refused recipient is
    bounced with the server's 550 (its verdict came before the failure); only the
    other one waits for a retry."""

    def respond(mx, conn):
        mx.seen.append(read_until(conn, b"DATA\r\n"))
        conn.sendall(b"250 2.1.0 Ok\r\n550 5.1.1 <carol@b.test>: no such user\r\n"
                     b"250 2.1.5 Ok\r\n354 go ahead\r\n")
        mx.seen.append(read_until(conn, b"\r\n.\r\n"))
        # closed here without a reply to the message's end

    mx = ScriptedMX("127.0.0.4", net.port, respond)
    try:
        a, qid = send_via_smarthost(net, rcpts=("carol@b.test", "bob@b.test"))
        assert wait_log(a, log_re(qid, "carol@b.test", "bounced",
                                  reply=r"550 5\.1\.1 <carol@b\.test>: no such user")), \
            a.log()[-3000:]
        assert wait_log(a, log_re(qid, "bob@b.test", "deferred",
                                  reply=r".*connection closed by server.*")), a.log()[-3000:]
        [dsn] = bounce_of(a)
        text, rcpts = dsn_check(dsn, ["carol@b.test"], r"5\.1\.1")
        assert "bob@b.test" not in text
        assert in_queue(a, qid), "the deferred recipient's message left the queue"
    finally:
        mx.close()


def drip(mx, conn, data, step=0.5):
    """Sends data a byte every step seconds until done, closed or the test ends."""
    for i in range(len(data)):
        if mx.stopping:
            return
        try:
            conn.sendall(data[i:i + 1])
        except OSError:
            mx.seen.append(b"(cut after %d bytes)" % i)
            return
        time.sleep(step)
    mx.seen.append(b"(all sent)")


def deferred_soon_and_cut(a, mx, qid, reply=r".*"):
    """The message is deferred well before the drip would end (smtp_timeout is 3 s), and
    the dripping server finds its connection cut."""
    sent = time.monotonic()
    assert wait_log(a, log_re(qid, "bob@b.test", "deferred", reply=reply), timeout=30), \
        a.log()[-3000:]
    elapsed = time.monotonic() - sent
    assert elapsed < 20, f"deferred {elapsed:.1f} s after the message; smtp_timeout is 3 s"
    assert wait_for(lambda: any(s.startswith(b"(cut") for s in mx.seen), 10), mx.seen


def test_remote_that_drips_its_reply_is_timed_out(net):
    """A server that answers RCPT a byte every half second keeps each read short of
    smtp_timeout (3 s) but the whole reply far past it: the wait for the reply ends at
    the timeout, the message is deferred."""

    def respond(mx, conn):
        read_until(conn, b"DATA\r\n")
        conn.sendall(b"250 2.1.0 Ok\r\n")
        drip(mx, conn, b"250 2.1.5 " + b"o" * 100 + b"\r\n")

    mx = ScriptedMX("127.0.0.4", net.port, respond)
    try:
        a, qid = send_via_smarthost(net, smtp_timeout="3s")
        deferred_soon_and_cut(a, mx, qid, reply=r".*timed out.*")
    finally:
        mx.close()


def test_remote_that_drips_its_tls_handshake_is_timed_out(net):
    """After the 220 to STARTTLS the server starts a TLS record and sends it a byte every
    half second: OpenSSL reads the record piece by piece, each read short of the timeout.
    The handshake ends at smtp_timeout; the message is deferred."""

    def respond(mx, conn):
        read_until(conn, b"STARTTLS\r\n")
        conn.sendall(b"220 2.0.0 go ahead\r\n")
        mx.seen.append(conn.recv(65536))  # the ClientHello
        conn.sendall(b"\x16\x03\x03\x40\x00")  # a handshake record of 16 KiB ...
        drip(mx, conn, b"\x02" * 200)  # ... that never completes

    mx = ScriptedMX("127.0.0.4", net.port, respond, starttls=True)
    try:
        a, qid = send_via_smarthost(net, smtp_timeout="3s")
        deferred_soon_and_cut(a, mx, qid)
        assert re.search(rf"{qid}: TLS with .* failed: timed out", a.log()), a.log()[-3000:]
    finally:
        mx.close()


def test_no_address_is_sent_as_the_tls_server_name(net):
    """Mail to bob@[127.0.0.4] goes to that address; its STARTTLS ClientHello names no
    server (RFC 6066 3: no literal address in server_name). It sent "127.0.0.4"."""

    def respond(mx, conn):
        read_until(conn, b"STARTTLS\r\n")
        conn.sendall(b"220 2.0.0 go ahead\r\n")
        mx.seen.append(conn.recv(65536))  # the ClientHello
        conn.close()

    mx = ScriptedMX("127.0.0.4", net.port, respond, starttls=True)
    try:
        a = net.sender()
        send(a, ALICE, "bob@[127.0.0.4]", BODY)
        assert wait_for(lambda: len(mx.seen) >= 2, 10), mx.seen
        hello = mx.seen[1]
        assert hello[:1] == b"\x16", hello[:16]  # a TLS handshake record
        assert b"127.0.0.4" not in hello, hello
    finally:
        mx.close()


def test_bounce_quotes_a_long_multiline_reply_whole(net):
    """A refusal of three long lines (as big providers give, with a help URL at the end)
    is quoted whole in the bounce's Diagnostic-Code; it was cut at 200 characters."""

    def respond(mx, conn):
        read_until(conn, b"DATA\r\n")
        conn.sendall(b"250 2.1.0 Ok\r\n"
                     b"550-5.1.1 The email account that you tried to reach does not exist. "
                     b"Please try\r\n"
                     b"550-5.1.1 double-checking the recipient's email address for typos or "
                     b"unnecessary spaces.\r\n"
                     b"550 5.1.1 For more information, go to https://support.example/x?p=NoSuchUser-END\r\n"
                     b"554 5.5.1 Error: no valid recipients\r\n")

    mx = ScriptedMX("127.0.0.4", net.port, respond)
    try:
        a, qid = send_via_smarthost(net)
        [dsn] = bounce_of(a)
        text, rcpts, headers = dsn_parts(dsn)
        [r] = rcpts
        assert r["Status"] == "5.1.1"
        diag = re.sub(r"\s+", " ", r["Diagnostic-Code"])
        assert diag.startswith("smtp; 550 5.1.1 The email account"), diag
        assert diag.endswith("p=NoSuchUser-END"), diag
    finally:
        mx.close()


def test_failed_starttls_handshake_is_retried_in_plaintext(net):
    """Opportunistic TLS: a server that offers STARTTLS but whose handshake fails (here
    it answers the ClientHello with garbage) gets the message over a new connection in
    plaintext, not never."""

    def respond(mx, conn):
        first = read_until(conn, b"\r\n")
        if first.startswith(b"STARTTLS"):
            conn.sendall(b"220 2.0.0 go ahead\r\n")
            conn.recv(65536)  # the ClientHello
            conn.sendall(b"this is no TLS server hello\r\n" * 4)
            mx.seen.append(b"(handshake refused)")
            return
        buf = first + read_until(conn, b"DATA\r\n") if b"DATA\r\n" not in first else first
        mx.seen.append(buf)
        conn.sendall(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go ahead\r\n")
        mx.seen.append(read_until(conn, b"\r\n.\r\n"))
        conn.sendall(b"250 2.0.0 Ok: queued\r\n")
        read_until(conn, b"\r\n")  # QUIT

    mx = ScriptedMX("127.0.0.4", net.port, respond, starttls=True)
    try:
        a, qid = send_via_smarthost(net)
        assert wait_log(a, log_re(qid, "bob@b.test", "sent"), timeout=20), a.log()[-3000:]
        assert re.search(rf"{qid}: TLS with .* failed", a.log()), a.log()[-3000:]
        assert re.search(rf"{qid}: trying .* again without TLS", a.log()), a.log()[-3000:]
        assert b"(handshake refused)" in mx.seen
        assert any(s.endswith(b"\r\n.\r\n") and b"relayed byte for byte" in s for s in mx.seen)
    finally:
        mx.close()


def test_at_most_five_addresses_are_tried_per_attempt(net):
    """A domain with 8 MX addresses, none answering: one attempt tries the best 5 (as
    Postfix's smtp_mx_address_limit), so a domain of many dead hosts cannot hold a relay
    thread for hours."""
    addrs = [f"127.0.0.{i}" for i in range(10, 18)]
    net.start_dns("--mx-host=many.test,mx.many.test,10",
                  *[f"--host-record=mx.many.test,{a}" for a in addrs])
    a = net.sender()
    qid = send(a, ALICE, "bob@many.test", BODY)
    assert wait_log(a, log_re(qid, "bob@many.test", "deferred")), a.log()[-3000:]
    first = a.log().split("status=deferred", 1)[0]
    tried = set(re.findall(rf"{qid}: to=<bob@many\.test>, relay=mx\.many\.test\[([\d.]+)\]",
                           first))
    tried |= set(re.findall(r"mx\.many\.test\[([\d.]+)\]:\d+: connect", first))
    assert len(tried) == 5, (tried, first[-3000:])


def test_bounce_of_an_smtputf8_message_reaches_a_server_without_it(net):
    """An all-ASCII message sent with SMTPUTF8 bounces (null MX); its notification is
    ASCII too and needs no SMTPUTF8, so a sender's server that lacks the extension gets
    it.  (It inherited the flag and was refused, and a bounce is never bounced: the
    sender heard nothing.)"""

    def respond(mx, conn):
        mx.seen.append(read_until(conn, b"DATA\r\n"))
        conn.sendall(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go ahead\r\n")
        mx.seen.append(read_until(conn, b"\r\n.\r\n"))
        conn.sendall(b"250 2.0.0 Ok: queued\r\n")
        read_until(conn, b"\r\n")

    net.start_dns("--dns-rr=nullmx.test,15,000000", "--mx-host=b.test,mx.b.test,10",
                  "--host-record=mx.b.test,127.0.0.4")
    mx = ScriptedMX("127.0.0.4", net.port, respond)
    try:
        a = net.sender()
        with smtp(a) as s:
            s.ehlo("client.example")
            assert s.mail("bob@b.test", ["SMTPUTF8"])[0] == 250
            assert s.rcpt("someone@nullmx.test")[0] == 250
            code, resp = s.data(BODY)
            assert code == 250, resp
            qid = resp.decode().rsplit(" ", 1)[1]
        assert wait_log(a, log_re(qid, "someone@nullmx.test", "bounced", "none"))
        assert wait_log(a, r"to=<bob@b\.test>, relay=mx\.b\.test\[127\.0\.0\.4\]:\d+, "
                           r"delay=\d+, status=sent"), a.log()[-3000:]
        mail_from = [s for s in mx.seen if s.startswith(b"MAIL FROM:<>")]
        assert mail_from and b"SMTPUTF8" not in mail_from[0], mx.seen
        dsn = next(s for s in mx.seen if s.endswith(b"\r\n.\r\n"))
        assert b"Remote-MTA: dns; none" not in dsn and b"host none said" not in dsn, dsn
        m = re.search(rb'boundary="([^"]+)"', dsn)
        assert m and len(m[1]) <= 70, m
    finally:
        mx.close()
