#!/usr/bin/env python3
"""Helpers for bench/run.sh: timing, process-tree accounting, idle sessions, the table.

Sub-commands (all print or write JSON so run.sh never parses free text):
  stat PGID                      CPU seconds and memory of a process group (a server's tree)
  sample PGID OUT                until SIGTERM: peak of the group's summed RSS/PSS -> OUT
  run OUT -- CMD...              run CMD, record start/end epoch, exit code, client CPU -> OUT
  wait-count DIR N RUN TIMEOUT   poll DIR/*/new until N files; elapsed since RUN's start
  wait-sink FILE N RUN TIMEOUT   the same for the messages an `smtp-sink -c` has counted
  sink-count FILE                the message count an `smtp-sink -c` has printed so far
  hold HOST PORT N ...           open N SMTP sessions (greeting + EHLO) and keep them idle
  probe HOST PORT [K]            time from connect() to a complete 220 greeting, K times
  record RESULTS k=v ...         append one result line (numbers parsed) to RESULTS
  table RESULTS                  print the table: medians over runs, ratios petrel/Postfix

Only the standard library is used.
"""
import asyncio
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time

CLK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- /proc accounting

def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode("latin-1")
    except OSError:
        return None


def _stat_fields(pid):
    s = _read(f"/proc/{pid}/stat")
    if s is None:
        return None
    # comm may contain spaces and parentheses: split after the last ')'.
    rest = s[s.rfind(")") + 2:].split()
    # rest[k-3] is field k of proc(5): pgrp=5, utime=14, stime=15, cutime=16, cstime=17
    return {
        "pgrp": int(rest[2]),
        "utime": int(rest[11]),
        "stime": int(rest[12]),
        "cutime": int(rest[13]),
        "cstime": int(rest[14]),
    }


def _status_kib(pid, keys):
    s = _read(f"/proc/{pid}/status")
    out = {k: 0 for k in keys}
    if s is None:
        return out
    for line in s.splitlines():
        k, _, v = line.partition(":")
        if k in out:
            out[k] = int(v.split()[0])
    return out


def _pss_kib(pid):
    s = _read(f"/proc/{pid}/smaps_rollup")
    if s is None:
        return 0
    for line in s.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def group_pids(pgid):
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        f = _stat_fields(name)
        if f is not None and f["pgrp"] == pgid:
            pids.append((int(name), f))
    return pids


def group_stat(pgid, memory=True):
    """CPU of the whole tree: live members' utime+stime, plus what the leader has
    reaped from children that already exited (its cutime+cstime)."""
    ticks = 0
    rss = pss = hwm = 0
    pids = group_pids(pgid)
    for pid, f in pids:
        ticks += f["utime"] + f["stime"]
        if pid == pgid:
            ticks += f["cutime"] + f["cstime"]
        if memory:
            st = _status_kib(pid, ("VmRSS", "VmHWM"))
            rss += st["VmRSS"]
            hwm = max(hwm, st["VmHWM"])
            pss += _pss_kib(pid)
    return {"cpu": ticks / CLK, "rss_kib": rss, "pss_kib": pss, "hwm_kib": hwm,
            "nproc": len(pids), "t": time.time()}


def cmd_stat(args):
    print(json.dumps(group_stat(int(args[0]))))


def cmd_sample(args):
    pgid, out = int(args[0]), args[1]
    peak = {"rss_kib": 0, "pss_kib": 0, "hwm_kib": 0, "nproc": 0, "samples": 0}
    stop = []

    def write():
        tmp = out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(peak, f)
        os.replace(tmp, out)

    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    write()
    while not stop:
        t0 = time.monotonic()
        s = group_stat(pgid)
        cost = time.monotonic() - t0
        peak["samples"] += 1
        for k in ("rss_kib", "pss_kib", "hwm_kib", "nproc"):
            peak[k] = max(peak[k], s[k])
        write()
        # At most ~5% of one core for sampling, at least 2 samples a second when cheap.
        delay = max(0.5, 20 * cost)
        end = time.monotonic() + delay
        while not stop and time.monotonic() < end:
            time.sleep(0.05)
    write()


# --------------------------------------------------------------------------- timing a client

def cmd_run(args):
    out = args[0]
    assert args[1] == "--"
    cmd = args[2:]
    r0 = os.times()
    t0 = time.time()
    p = subprocess.run(cmd)
    t1 = time.time()
    r1 = os.times()
    cpu = (r1.children_user - r0.children_user) + (r1.children_system - r0.children_system)
    with open(out, "w") as f:
        json.dump({"t0": t0, "t1": t1, "wall": t1 - t0, "rc": p.returncode,
                   "client_cpu": cpu}, f)


def count_new(domain_dir):
    n = 0
    try:
        users = os.listdir(domain_dir)
    except OSError:
        return 0
    for u in users:
        try:
            with os.scandir(os.path.join(domain_dir, u, "new")) as it:
                for e in it:
                    if not e.name.startswith("."):
                        n += 1
        except OSError:
            pass
    return n


def sink_count(path):
    """Messages received by an `smtp-sink -c`: its stdout is a series of counter lines
    `sess=N quit=N mesg=N`, each ended by a CR, updated at every "." (and session end).
    Only the tail of the file is read; a line not yet ended by its CR is ignored."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            tail = f.read()
    except OSError:
        return 0
    m = re.findall(rb"mesg=(\d+)\r", tail)
    return int(m[-1]) if m else 0


def cmd_sink_count(args):
    print(sink_count(args[0]))


def cmd_wait_count(args, counter=count_new):
    """wait-count DIR N RUN.json TIMEOUT: elapsed is measured from the client's start."""
    d, n, timeout = args[0], int(args[1]), float(args[3])
    t0 = _load(args[2]).get("t0", time.time())
    deadline = time.time() + timeout
    last, last_change = -1, time.time()
    while True:
        c = counter(d)
        now = time.time()
        if c >= n:
            print(json.dumps({"count": c, "elapsed": now - t0, "complete": True}))
            return
        if c != last:
            last, last_change = c, now
        # Give up at the deadline, or when nothing moved for a long while.
        if now > deadline or now - last_change > max(30.0, timeout / 4):
            print(json.dumps({"count": c, "elapsed": now - t0, "complete": False}))
            return
        time.sleep(0.1)


def cmd_wait_sink(args):
    """wait-sink FILE N RUN.json TIMEOUT: wait-count for the messages an smtp-sink received."""
    cmd_wait_count(args, sink_count)


# --------------------------------------------------------------------------- SMTP helpers

async def _reply(reader, timeout):
    """Read one (possibly multi-line) SMTP reply; return its first line."""
    first = None
    while True:
        line = await asyncio.wait_for(reader.readline(), timeout)
        if not line:
            raise ConnectionError("connection closed")
        if first is None:
            first = line.decode("latin-1").rstrip()
        if len(line) < 4 or line[3:4] != b"-":
            return first


IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


async def _connect(host, port, bind):
    """Connect from source address `bind`.  IP_BIND_ADDRESS_NO_PORT leaves the choice of
    the port to connect(), which only needs the 4-tuple to be unique: a plain bind(addr, 0)
    must find a port free for every destination, and with thousands of ports in TIME_WAIT
    from the previous run that search costs the client whole seconds of CPU."""
    if not bind:
        return await asyncio.open_connection(host, port)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        s.bind((bind, 0))
        s.setblocking(False)
        await asyncio.get_running_loop().sock_connect(s, (host, port))
    except BaseException:
        s.close()
        raise
    return await asyncio.open_connection(sock=s)


async def _hold(host, port, n, bind, ready, status, max_seconds, window):
    sem = asyncio.Semaphore(window)
    conns, errors = [], {}
    t0 = time.monotonic()

    lat = []

    async def one():
        async with sem:
            t = time.monotonic()
            try:
                r, w = await asyncio.wait_for(_connect(host, port, bind), 60)
                g = await _reply(r, 60)
                if not g.startswith("220"):
                    raise ConnectionError("greeting: " + g)
                w.write(b"EHLO idle.bench.test\r\n")
                await w.drain()
                e = await _reply(r, 60)
                if not e.startswith("250"):
                    raise ConnectionError("EHLO: " + e)
                conns.append((r, w))
                lat.append(time.monotonic() - t)
            except Exception as ex:  # noqa: BLE001 - counted and reported
                k = type(ex).__name__ + ": " + str(ex)[:80]
                errors[k] = errors.get(k, 0) + 1

    await asyncio.gather(*(one() for _ in range(n)))
    setup = time.monotonic() - t0
    with open(ready + ".tmp", "w") as f:
        json.dump({"ok": len(conns), "failed": n - len(conns), "setup_s": setup,
                   "max_session_setup_s": max(lat) if lat else None,
                   "sessions_over_1s": sum(1 for x in lat if x > 1.0),
                   "errors": errors}, f)
    os.replace(ready + ".tmp", ready)

    # Hold: any byte or EOF from the server means the session did not stay idle.
    closed = [0]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)

    async def watch(r):
        try:
            await r.read(1)
        except Exception:  # noqa: BLE001
            pass
        closed[0] += 1

    watchers = [asyncio.ensure_future(watch(r)) for r, _ in conns]
    try:
        await asyncio.wait_for(stop.wait(), max_seconds)
    except asyncio.TimeoutError:
        pass
    for t in watchers:
        t.cancel()
    with open(status, "w") as f:
        json.dump({"ok": len(conns), "closed_by_server": closed[0]}, f)

    # End every session cleanly: QUIT, then wait for the server to close first.  That leaves
    # TIME_WAIT on the server's side, not on ours: thousands of client ports in TIME_WAIT
    # would make the next run's connect() fail (EADDRNOTAVAIL) or crawl.
    async def bye(r, w):
        try:
            w.write(b"QUIT\r\n")
            await w.drain()

            async def to_eof():
                while await r.read(4096):
                    pass
            await asyncio.wait_for(to_eof(), 10)
        except Exception:  # noqa: BLE001 - closing anyway
            pass
        finally:
            w.transport.abort()

    await asyncio.gather(*(bye(r, w) for r, w in conns))


def cmd_hold(args):
    # hold HOST PORT N BIND READYFILE STATUSFILE MAXSECONDS
    host, port, n, bind, ready, status, mx = args[:7]
    asyncio.run(_hold(host, int(port), int(n), None if bind == "-" else bind,
                      ready, status, float(mx), 256))


def probe_once(host, port, timeout=10.0):
    t0 = time.monotonic()
    s = socket.create_connection((host, port), timeout)
    try:
        f = s.makefile("rb")
        while True:
            line = f.readline()
            if not line:
                raise ConnectionError("closed before greeting")
            if len(line) < 4 or line[3:4] != b"-":
                break
        ms = (time.monotonic() - t0) * 1000
        code = line[:3].decode("latin-1")
        try:
            s.sendall(b"QUIT\r\n")
        except OSError:
            pass
        return code, ms
    finally:
        s.close()


def cmd_probe(args):
    host, port = args[0], int(args[1])
    k = int(args[2]) if len(args) > 2 else 1
    res = []
    for _ in range(k):
        try:
            res.append(probe_once(host, port))
        except OSError as e:
            res.append(("ERR " + str(e)[:60], None))
        time.sleep(0.05)
    ms = [m for c, m in res if c == "220" and m is not None]
    print(json.dumps({"codes": [c for c, _ in res], "ok": len(ms), "n": k,
                      "median_ms": statistics.median(ms) if ms else None,
                      "max_ms": max(ms) if ms else None}))


def cmd_wait_ready(args):
    """wait-ready HOST PORT TIMEOUT: exit 0 once a 220 greeting arrives."""
    host, port, timeout = args[0], int(args[1]), float(args[2])
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if probe_once(host, port, 2.0)[0] == "220":
                return 0
        except OSError:
            pass
        time.sleep(0.1)
    return 1


def _port_free(host, port):
    s = socket.socket()
    try:
        s.bind((host, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def cmd_free_ports(args):
    """free-ports K BASE [HOST...]: K TCP ports >= BASE (below the ephemeral range) free on
    every HOST (default 127.0.0.1)."""
    k, port, found = int(args[0]), int(args[1]), []
    hosts = args[2:] or ["127.0.0.1"]
    while len(found) < k and port < 32000:
        if all(_port_free(h, port) for h in hosts):
            found.append(port)
        port += 1
    print(" ".join(map(str, found)))


def cmd_get(args):
    """get FILE KEY: one value of a JSON file (empty when absent)."""
    v = _load(args[0]).get(args[1])
    print("" if v is None else v)


# --------------------------------------------------------------------------- results and table

def _num(v):
    for t in (int, float):
        try:
            return t(v)
        except ValueError:
            pass
    return v


def _load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _append(path, rec):
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")


def cmd_record(args):
    """record RESULTS k=v ...: a free-form line (skipped loads, notes)."""
    rec = {}
    for a in args[1:]:
        k, _, v = a.partition("=")
        rec[k] = _num(v) if v != "" else None
    _append(args[0], rec)


def _peaks(after, sample):
    # One process (petrel, smtp-sink): the kernel's own high-water mark, exact.
    # A tree (Postfix): the sampled peak of the summed RSS of its processes.
    if after.get("nproc") == 1:
        rss = max(after.get("hwm_kib", 0), sample.get("rss_kib", 0))
    else:
        rss = sample.get("rss_kib") or None
    return rss, sample.get("pss_kib") or None


def cmd_result(args):
    """result RESULTS LOAD SERVER RUN N RUN.json COUNT.json BEFORE.json AFTER.json SAMPLE.json [NOTE]"""
    path, load, server, run, n = args[0], args[1], args[2], int(args[3]), int(args[4])
    rj, cj, bj, aj, sj = (_load(p) for p in args[5:10])
    extra = args[10] if len(args) > 10 else ""
    notes = [extra] if extra else []
    wall = rj.get("wall")
    acc = n / wall if wall else None
    if rj.get("rc", 0) != 0:
        notes.append(f"run {run}: smtp-source exit {rj.get('rc')}")
        acc = None
    dlv = None
    if cj:
        if cj.get("complete"):
            dlv = n / cj["elapsed"] if cj["elapsed"] > 0 else None
        else:
            verb = "relayed to smtp-sink" if load == "E" else "delivered"
            notes.append(f"run {run}: only {cj.get('count')} of {n} {verb} "
                         f"after {cj.get('elapsed', 0):.0f}s")
    cpu = (aj["cpu"] - bj["cpu"]) if aj and bj else None
    rss, pss = _peaks(aj, sj)
    _append(path, {
        "load": load, "server": server, "run": run, "n": n, "acc_rate": acc,
        "dlv_rate": dlv, "cpu": cpu, "cpu_ms_per_msg": cpu * 1000 / n if cpu is not None else None,
        "rss_peak_kib": rss, "pss_peak_kib": pss, "client_cpu": rj.get("client_cpu"),
        "delivered": cj.get("count") if cj else None, "note": "; ".join(notes) or None})


def cmd_d_result(args):
    """d-result RESULTS SERVER RUN N BEFORE.json AFTER.json READY.json PROBE.json SAMPLE.json FULL_N"""
    path, server, run, n = args[0], args[1], int(args[2]), int(args[3])
    bj, aj, hj, pj, sj = (_load(p) for p in args[4:9])
    ok = hj.get("ok", 0)
    per_rss = per_pss = None
    if ok and aj and bj:
        per_rss = (aj["rss_kib"] - bj["rss_kib"]) / ok
        per_pss = (aj["pss_kib"] - bj["pss_kib"]) / ok
    cpu = (aj["cpu"] - bj["cpu"]) if aj and bj else None
    rss, pss = _peaks(aj, sj)
    notes = []
    if hj.get("failed"):
        notes.append(f"run {run}: {hj['failed']} sessions failed: {hj.get('errors')}")
    if hj.get("sessions_over_1s"):
        notes.append(f"run {run}: {hj['sessions_over_1s']} sessions took over 1 s from connect "
                     f"to the EHLO reply (slowest {hj['max_session_setup_s']:.1f} s)")
    if not pj.get("ok"):
        notes.append(f"run {run}: new client NOT greeted: {pj.get('codes')}")
    _append(path, {
        "load": "D", "server": server, "run": run, "n": ok, "target": n,
        "full_n": int(args[9]), "setup_s": hj.get("setup_s"), "cpu": cpu,
        "rss_peak_kib": rss, "pss_peak_kib": pss,
        "idle_kib_per_session": per_rss, "idle_pss_kib_per_session": per_pss,
        "probe_ms": pj.get("median_ms"), "probe_max_ms": pj.get("max_ms"),
        "note": "; ".join(notes) or None})


LOAD_TITLES = {
    "A": "A  20 sess, 1 KiB, new conn/msg",
    "Ad": "A-d  20 sess, 1 KiB, kept conn",
    "B": "B  100 sess, 64 KiB",
    "C": "C  load A + idle sessions held",
    "D": "D  idle sessions held",
    "E": "E  relay 20 sess, 1 KiB -> smtp-sink",
}
SERVER_ORDER = {"postfix": 0, "petrel": 1, "smtp-sink": 2}


def _med(vals):
    vals = [v for v in vals if isinstance(v, (int, float))]
    return statistics.median(vals) if vals else None


def _fmt(v, nd=0, width=0):
    if v is None:
        return "-"
    if isinstance(v, float) and nd == 0:
        return f"{v:.0f}"
    return f"{v:.{nd}f}" if isinstance(v, (int, float)) else str(v)


def cmd_table(args):
    recs = []
    with open(args[0]) as f:
        for line in f:
            if line.strip():
                recs.append(json.loads(line))
    groups = {}
    for r in recs:
        groups.setdefault((r["load"], r["server"]), []).append(r)

    def med(load, server, key):
        return _med([r.get(key) for r in groups.get((load, server), [])])

    def ratio(x, y):
        return f"{x / y:.2f}" if x and y else "-"

    hdr = ["load", "server", "runs", "msgs", "acc msg/s", "dlv msg/s", "acc x", "dlv x",
           "CPU s", "CPU ms/msg", "peak RSS MiB", "peak PSS MiB",
           "idle RSS KiB/sess", "idle PSS KiB/sess", "notes"]
    rows = []
    order = list(LOAD_TITLES)
    loads = sorted({k[0] for k in groups}, key=lambda l: order.index(l) if l in order else 99)
    for load in loads:
        servers = sorted({k[1] for k in groups if k[0] == load},
                         key=lambda s: SERVER_ORDER.get(s, 9))
        for srv in servers:
            rs = groups[(load, srv)]
            title = LOAD_TITLES.get(load, load)
            notes = []
            if rs[0].get("skipped"):
                rows.append([title, srv] + ["-"] * 12 + [rs[0].get("note") or ""])
                continue
            n = med(load, srv, "n")
            acc, dlv = med(load, srv, "acc_rate"), med(load, srv, "dlv_rate")
            accx = dlvx = "-"
            if srv != "postfix":
                accx = ratio(acc, med(load, "postfix", "acc_rate"))
                dlvx = ratio(dlv, med(load, "postfix", "dlv_rate"))
            if load in ("C",):
                notes.append(f"acc = {100 * acc / med('A', srv, 'acc_rate'):.0f}% of load A"
                             if acc and med("A", srv, "acc_rate") else "")
            if srv == "petrel" and acc and med(load, "smtp-sink", "acc_rate"):
                notes.append(f"acc = {100 * acc / med(load, 'smtp-sink', 'acc_rate'):.0f}% of smtp-sink")
            if load == "D":
                full_n = rs[0].get("full_n")
                held = min(r.get("n") or 0 for r in rs)
                target = rs[0].get("target")
                notes.append(f"{held} of {target} sessions held (worst run)")
                if rs[0].get("setup_s") is not None:
                    notes.append(f"all opened in {med(load, srv, 'setup_s'):.1f} s "
                                 f"(max {max(r.get('setup_s') or 0 for r in rs):.1f})")
                pm = med(load, srv, "probe_ms")
                if pm is not None:
                    notes.append(f"new client greeted in {pm:.1f} ms "
                                 f"(max {max(r.get('probe_max_ms') or 0 for r in rs):.1f})")
                per = med(load, srv, "idle_pss_kib_per_session")
                if per and full_n and held < full_n:
                    notes.append(f"measured with {held}, extrapolated to {full_n}: "
                                 f"{per * full_n / 1048576:.1f} GiB PSS")
                if srv == "petrel":
                    pf = med(load, "postfix", "idle_pss_kib_per_session")
                    if per and pf:
                        notes.append(f"Postfix needs {pf / per:.0f}x more per idle session")
            for r in rs:
                if r.get("note") and r["note"] not in notes:
                    notes.append(r["note"])
            if load == "D":
                msgs = "-"
            else:
                msgs = _fmt(n)
            rows.append([
                title, srv, str(len(rs)), msgs, _fmt(acc), _fmt(dlv), accx, dlvx,
                _fmt(med(load, srv, "cpu"), 1), _fmt(med(load, srv, "cpu_ms_per_msg"), 2),
                _fmt(_div(med(load, srv, "rss_peak_kib"), 1024), 1),
                _fmt(_div(med(load, srv, "pss_peak_kib"), 1024), 1),
                _fmt(med(load, srv, "idle_kib_per_session"), 1),
                _fmt(med(load, srv, "idle_pss_kib_per_session"), 1),
                "; ".join(x for x in notes if x),
            ])
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(hdr)]

    def line(cells):
        out = []
        for i, c in enumerate(cells):
            if i == len(cells) - 1:
                out.append(c)
            elif i >= 2:
                out.append(c.rjust(widths[i]))
            else:
                out.append(c.ljust(widths[i]))
        return " | ".join(out).rstrip()

    sep = "-+-".join("-" * w for w in widths[:-1]) + "-+-" + "-" * len(hdr[-1])
    print(line(hdr))
    print(sep)
    prev = None
    for r in rows:
        if prev is not None and r[0] != prev:
            print(sep)
        prev = r[0]
        print(line(r))


def _div(v, d):
    return v / d if v is not None else None


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    cmd, args = sys.argv[1], sys.argv[2:]
    fn = {"stat": cmd_stat, "sample": cmd_sample, "run": cmd_run,
          "wait-count": cmd_wait_count, "wait-sink": cmd_wait_sink,
          "sink-count": cmd_sink_count, "hold": cmd_hold, "probe": cmd_probe,
          "wait-ready": cmd_wait_ready, "free-ports": cmd_free_ports, "get": cmd_get, "record": cmd_record,
          "result": cmd_result, "d-result": cmd_d_result,
          "table": cmd_table}.get(cmd)
    if fn is None:
        print(__doc__)
        return 2
    return fn(args) or 0


if __name__ == "__main__":
    sys.exit(main())
