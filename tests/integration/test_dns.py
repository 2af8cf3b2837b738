"""relay_dns against a real DNS server: dnsmasq on loopback.

The resolver is driven through tests/tools/dnsq (built here with make:
build/tools/dnsq, or build/san/tools/dnsq for the sanitized run; $DNSQ_BIN
names a ready binary instead), which prints each lookup's result as lines:

    domain b.test / status OK / target 10 mx1.b.test 127.0.0.3 / end

dnsmasq serves the *.test zone from command-line records.  `--local=/test/`
makes it answer NXDOMAIN (unknown name) and NODATA (known name, other type)
inside .test; without it dnsmasq, having no upstream (--no-resolv), answers
REFUSED to both.  Names outside .test still get REFUSED, which libunbound
turns into SERVFAIL: a temporary failure.  dnsmasq runs through
peers.Dnsmasq.  Every process a test starts, it stops (by PID).
"""
import os
import re
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import PETREL_BIN, ROOT
from peers import Dnsmasq, common_port

# $DNSQ_BIN overrides (and skips the make step).
DNSQ_BIN = Path(os.environ.get("DNSQ_BIN", PETREL_BIN.parent / "tools" / "dnsq")).resolve()

# One flag per record; see dnsmasq(8).  127.0.0.x are distinct loopback hosts.
RECORDS = [
    # b.test: one best MX, two equal second-best ones (one with A and AAAA).
    "--mx-host=b.test,mx1.b.test,10",
    "--mx-host=b.test,mx2.b.test,20",
    "--mx-host=b.test,mx3.b.test,20",
    "--host-record=mx1.b.test,127.0.0.3",
    "--host-record=mx2.b.test,127.0.0.4",
    "--host-record=mx3.b.test,127.0.0.5,::5",
    # a.test: no MX, A and AAAA (implicit MX); v6only.test: AAAA only.
    "--host-record=a.test,127.0.0.6,::6",
    "--host-record=v6only.test,::7",
    # RFC 7505 null MX "0 .": type 15, preference 0, the root name.
    "--dns-rr=nullmx.test,15,000000",
    # skip.test: the best MX does not exist, the next has no address (a TXT
    # record only: NODATA for A and AAAA), the third works.
    "--mx-host=skip.test,gone.skip.test,10",
    "--mx-host=skip.test,txtonly.skip.test,15",
    "--txt-record=txtonly.skip.test,no address here",
    "--mx-host=skip.test,ok.skip.test,20",
    "--host-record=ok.skip.test,127.0.0.7",
    # noaddr.test: MX hosts, none with an address.
    "--mx-host=noaddr.test,gone.noaddr.test,10",
    "--mx-host=noaddr.test,txtonly.skip.test,20",
    # empty.test: exists (a TXT record), no MX, no A/AAAA.
    "--txt-record=empty.test,nothing for mail",
    # alias.test: the MX target is a CNAME.
    "--mx-host=alias.test,mail.alias.test,10",
    "--cname=mail.alias.test,mx1.b.test",
    # dup.test: the same host twice.
    "--mx-host=dup.test,mx1.b.test,10",
    "--mx-host=dup.test,mx1.b.test,30",
]
# many.test: 12 MX hosts, preferences 1..12; only the best 10 are used.
for _i in range(1, 13):
    RECORDS += [f"--mx-host=many.test,h{_i:02d}.many.test,{_i}",
                f"--host-record=h{_i:02d}.many.test,127.0.1.{_i}"]


@pytest.fixture(scope="module")
def dnsq_bin():
    """Builds dnsq for the build under test (release or ASan+UBSan)."""
    if "DNSQ_BIN" in os.environ:
        return DNSQ_BIN
    target = os.path.relpath(DNSQ_BIN, ROOT)
    args = ["make", "-s", target]
    if "san" in DNSQ_BIN.parts:
        args.insert(2, "SAN=1")
    r = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, f"cannot build {target}:\n{r.stdout}\n{r.stderr}"
    return DNSQ_BIN


@pytest.fixture
def dnsmasq_factory(tmp_path):
    servers = []

    def make(start=True, records=RECORDS):
        d = Dnsmasq(tmp_path / f"dns{len(servers)}", records)
        d.dir.mkdir()
        servers.append(d)
        return d.start() if start else d

    yield make
    for d in servers:
        d.stop()


@pytest.fixture
def dns(dnsmasq_factory):
    return dnsmasq_factory()


class Result:
    def __init__(self, domain):
        self.domain = domain
        self.status = None
        self.error = ""
        self.targets = []  # (preference, hostname, [addresses])

    @property
    def hosts(self):
        return [t[1] for t in self.targets]

    def __repr__(self):
        return f"<{self.domain} {self.status} {self.error!r} {self.targets}>"


def parse(out):
    """dnsq's output → list of Result, in arrival order."""
    results, cur = [], None
    for line in out.splitlines():
        word, _, rest = line.partition(" ")
        if word == "domain":
            cur = Result(rest)
        elif word == "status":
            cur.status = rest
        elif word == "error":
            cur.error = rest
        elif word == "target":
            f = rest.split()
            cur.targets.append((int(f[0]), f[1], f[2:]))
        elif word == "end":
            results.append(cur)
    return results


def dnsq(dnsq_bin, resolver, *domains, args=(), timeout=60):
    """Runs dnsq to completion; returns (results by domain, seconds, raw stdout)."""
    env = dict(os.environ)
    env.setdefault("ASAN_OPTIONS", "detect_leaks=1")
    started = time.monotonic()
    r = subprocess.run([str(dnsq_bin), "-r", resolver, "-t", str(timeout), *args, *domains],
                       capture_output=True, text=True, timeout=timeout + 30, env=env)
    elapsed = time.monotonic() - started
    assert r.returncode == 0, f"dnsq exited with {r.returncode}:\n{r.stdout}\n{r.stderr}"
    assert "Sanitizer" not in r.stderr and "runtime error" not in r.stderr, r.stderr
    results = parse(r.stdout)
    return {res.domain: res for res in results}, elapsed, r.stdout


def lookup(dnsq_bin, resolver, domain, **kw):
    results, _, _ = dnsq(dnsq_bin, resolver, domain, **kw)
    return results[domain]


# ---- answers ------------------------------------------------------------------


def test_mx_ordered_by_preference(dnsq_bin, dns):
    r = lookup(dnsq_bin, dns.address, "b.test")
    assert r.status == "OK" and r.error == ""
    assert r.targets[0] == (10, "mx1.b.test", ["127.0.0.3"])
    assert [t[0] for t in r.targets] == [10, 20, 20]
    assert sorted(r.targets[1:]) == [(20, "mx2.b.test", ["127.0.0.4"]),
                                     (20, "mx3.b.test", ["127.0.0.5", "::5"])]


def test_equal_preferences_are_shuffled(dnsq_bin, dns):
    # 30 lookups at once: both orders of the two preference-20 hosts show up
    # (all 30 alike has probability 2^-29), and the best host is always first.
    _, _, out = dnsq(dnsq_bin, dns.address, *["b.test"] * 30)
    runs = parse(out)
    assert len(runs) == 30
    orders = {tuple(r.hosts) for r in runs}
    assert orders == {("mx1.b.test", "mx2.b.test", "mx3.b.test"),
                      ("mx1.b.test", "mx3.b.test", "mx2.b.test")}


def test_implicit_mx(dnsq_bin, dns):
    r = lookup(dnsq_bin, dns.address, "a.test")
    assert r.status == "OK"
    assert r.targets == [(0, "a.test", ["127.0.0.6", "::6"])]
    r = lookup(dnsq_bin, dns.address, "v6only.test")
    assert r.targets == [(0, "v6only.test", ["::7"])]


def test_null_mx(dnsq_bin, dns):
    r = lookup(dnsq_bin, dns.address, "nullmx.test")
    assert r.status == "NULL_MX"
    assert "null MX" in r.error and r.targets == []


def test_nxdomain(dnsq_bin, dns):
    r = lookup(dnsq_bin, dns.address, "nope.test")
    assert r.status == "NXDOMAIN"
    assert "NXDOMAIN" in r.error and r.targets == []


def test_mx_hosts_without_address_are_skipped(dnsq_bin, dns):
    r = lookup(dnsq_bin, dns.address, "skip.test")
    assert r.status == "OK"
    assert r.targets == [(20, "ok.skip.test", ["127.0.0.7"])]


def test_no_mx_host_has_an_address(dnsq_bin, dns):
    r = lookup(dnsq_bin, dns.address, "noaddr.test")
    assert r.status == "NO_ADDRESS"
    assert "noaddr.test" in r.error


def test_domain_without_mx_or_address(dnsq_bin, dns):
    # RFC 5321 5.1: the implicit MX is unusable; permanent, like NXDOMAIN.
    r = lookup(dnsq_bin, dns.address, "empty.test")
    assert r.status == "NXDOMAIN"
    assert "no MX and no A/AAAA" in r.error


def test_at_most_ten_mx_hosts(dnsq_bin, dns):
    r = lookup(dnsq_bin, dns.address, "many.test")
    assert r.status == "OK"
    assert r.hosts == [f"h{i:02d}.many.test" for i in range(1, 11)]
    assert r.targets[9][2] == ["127.0.1.10"]


def test_cname_mx_target_and_duplicates(dnsq_bin, dns):
    res, _, _ = dnsq(dnsq_bin, dns.address, "alias.test", "dup.test")
    assert res["alias.test"].targets == [(10, "mail.alias.test", ["127.0.0.3"])]
    assert res["dup.test"].targets == [(10, "mx1.b.test", ["127.0.0.3"])]


def test_name_spelling(dnsq_bin, dns):
    res, _, _ = dnsq(dnsq_bin, dns.address, "B.TEST", "a.test.")
    assert res["B.TEST"].status == "OK" and res["B.TEST"].targets[0][2] == ["127.0.0.3"]
    assert res["a.test."].targets == [(0, "a.test", ["127.0.0.6", "::6"])]


def test_address_literals_and_bad_domains(dnsq_bin, dns):
    res, _, out = dnsq(dnsq_bin, dns.address, "[127.0.0.2]", "[IPv6:::1]", "127.0.0.1",
                       "[example.test]", "bad..test")
    assert res["[127.0.0.2]"].targets == [(0, "127.0.0.2", ["127.0.0.2"])]
    assert res["[IPv6:::1]"].targets == [(0, "::1", ["::1"])]
    for d in ("127.0.0.1", "[example.test]", "bad..test"):
        assert res[d].status == "NXDOMAIN" and res[d].error.startswith("not a domain"), out
    # None of them reached the DNS server.
    asked = set(re.findall(r"query\[\w+\] (\S+) from", dns.log()))
    assert not asked & {"127.0.0.2", "127.0.0.1", "::1", "example.test", "bad..test"}, asked


def test_many_lookups_at_once(dnsq_bin, dns):
    domains = ["b.test", "a.test", "nullmx.test", "nope.test", "skip.test", "many.test",
               "[127.0.0.1]"] * 5
    results, _, out = dnsq(dnsq_bin, dns.address, *domains)
    assert len(parse(out)) == len(domains)
    assert {d: r.status for d, r in results.items()} == {
        "b.test": "OK", "a.test": "OK", "nullmx.test": "NULL_MX", "nope.test": "NXDOMAIN",
        "skip.test": "OK", "many.test": "OK", "[127.0.0.1]": "OK"}


def test_cancel_from_a_callback(dnsq_bin, dns):
    # The literal is answered first (no DNS); its callback cancels the rest,
    # some queued, some in flight in libunbound.  The sanitized build checks
    # that nothing is used after it is freed.
    _, _, out = dnsq(dnsq_bin, dns.address, "[127.0.0.1]", "b.test", "many.test",
                     "[IPv6:::1]", "nope.test", args=("-k",))
    assert out.splitlines().count("end") == 1
    assert out.startswith("domain [127.0.0.1]\nstatus OK\n")
    assert out.count("cancelled ") == 4


# ---- failures -----------------------------------------------------------------


def test_refused_is_temporary(dnsq_bin, dns):
    # Outside --local=/test/ dnsmasq has no upstream and answers REFUSED.
    r = lookup(dnsq_bin, dns.address, "b.example")
    assert r.status == "TEMPFAIL"
    assert "SERVFAIL" in r.error


def test_nothing_listening_is_a_bounded_tempfail(dnsq_bin):
    port = common_port(["127.0.0.1"])
    res, elapsed, _ = dnsq(dnsq_bin, f"127.0.0.1:{port}", "b.test", "a.test")
    assert res["b.test"].status == "TEMPFAIL" and res["a.test"].status == "TEMPFAIL"
    assert "SERVFAIL" in res["b.test"].error
    assert elapsed < 15, f"took {elapsed:.1f}s"


def test_silent_server_is_a_bounded_tempfail(dnsq_bin):
    # A UDP socket that reads queries and never answers: a timeout, not a
    # refusal.  libunbound retries with a growing timeout (about 5 s in all).
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    port = sock.getsockname()[1]
    seen = []
    stop = threading.Event()

    def swallow():
        while not stop.is_set():
            try:
                seen.append(sock.recvfrom(4096)[0])
            except OSError:
                pass

    t = threading.Thread(target=swallow)
    t.start()
    try:
        r, elapsed, _ = dnsq(dnsq_bin, f"127.0.0.1:{port}", "b.test")
    finally:
        stop.set()
        t.join()
        sock.close()
    assert r["b.test"].status == "TEMPFAIL"
    assert len(seen) >= 2  # it did retry
    assert 1 < elapsed < 15, f"took {elapsed:.1f}s"


def test_resolver_back_after_failure(dnsq_bin, dnsmasq_factory):
    # The first lookup fails (nothing listens); libunbound then counts the
    # server as down and fails at once until infra-host-ttl (5 s) expires.
    # A dnsmasq started meanwhile is used again within seconds.
    d = dnsmasq_factory(start=False)
    env = dict(os.environ)
    env.setdefault("ASAN_OPTIONS", "detect_leaks=1")
    p = subprocess.Popen([str(dnsq_bin), "-r", d.address, "-t", "60", "-s", "1",
                          *["b.test"] * 10], stdout=subprocess.PIPE, text=True, env=env)
    try:
        first = []
        for line in p.stdout:
            first.append(line)
            if line == "end\n":
                break
        assert "status TEMPFAIL\n" in first
        d.start()
        out = "".join(first) + p.stdout.read()
        assert p.wait(timeout=60) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    statuses = [r.status for r in parse(out)]
    assert "OK" in statuses, statuses
    # Seen here: 6 failures (5 s of infra-host-ttl), then OK for good.
    assert statuses[-1] == "OK" and statuses.index("OK") <= 8, statuses
