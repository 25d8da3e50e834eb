#!/usr/bin/env python3
"""Measurement helper for bench/compare.sh (Python 3.11, standard library only).

compare.sh starts and stops the servers; this file talks to them:

  redis-wait   wait until a Redis replica's initial sync is complete
  redis-run    saturating load (redis-benchmark) + fixed-rate load, with lag sampling
  pg-setup     table kv on both clusters, publication, subscription; wait until streaming
  pg-run       saturating load (pgbench) + fixed-rate load (pgbench -R), with lag sampling
  fsync-probe  write 4 KiB + fsync in a loop for ~1 s in a directory
  report       read the parts, print the table, write the combined JSON

Lag is measured by replication POSITIONS, not marker keys (see compare.sh's header):
a sampler records (t, position at the origin) and then polls the replica's applied position,
in rounds of ~0.3-1 ms, while a load runs. A sample's lag is the time from t to the first
replica poll that shows a position >= it. Both timestamps are taken when the answer arrives.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import socket
import struct
import subprocess
import sys
import threading
import time

now = time.monotonic


def log(msg: str) -> None:
    print(f"anchors: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- Redis (RESP) client


class Redis:
    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection((host, port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.rf = self.sock.makefile("rb")

    @staticmethod
    def encode(*args) -> bytes:
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            b = a if isinstance(a, bytes) else str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(b), b))
        return b"".join(out)

    def send(self, *args) -> None:
        self.sock.sendall(self.encode(*args))

    def read(self):
        line = self.rf.readline()
        if not line:
            raise ConnectionError("redis closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.rf.read(n + 2)
            return data[:-2]
        if kind == b"*":
            return [self.read() for _ in range(int(rest))]
        raise RuntimeError(f"bad RESP line {line!r}")

    def cmd(self, *args):
        self.send(*args)
        return self.read()

    def info(self, section: str = "replication") -> dict[str, str]:
        text = self.cmd("INFO", section).decode()
        out = {}
        for line in text.splitlines():
            if ":" in line and not line.startswith("#"):
                k, v = line.split(":", 1)
                out[k] = v
        return out

    def close(self) -> None:
        self.sock.close()


def redis_offset(r: Redis, field: str) -> int:
    # A dedicated tiny parser: INFO replication is polled thousands of times a second.
    text = r.cmd("INFO", "replication")
    i = text.index(field.encode() + b":")
    j = text.index(b"\r\n", i)
    return int(text[i + len(field) + 1 : j])


# ---------------------------------------------------------------- PostgreSQL wire client


class Pg:
    """Just enough of protocol 3.0: startup with trust auth, simple Query, text results."""

    def __init__(self, port: int, host: str = "127.0.0.1", user: str = "postgres", db: str = "postgres") -> None:
        self.sock = socket.create_connection((host, port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.rf = self.sock.makefile("rb")
        params = b"user\0" + user.encode() + b"\0database\0" + db.encode() + b"\0\0"
        body = struct.pack("!I", 196608) + params
        self.sock.sendall(struct.pack("!I", len(body) + 4) + body)
        while True:
            kind, data = self._msg()
            if kind == b"R":
                (code,) = struct.unpack("!I", data[:4])
                if code != 0:
                    raise RuntimeError(f"postgres asks for authentication {code}; the bench needs trust")
            elif kind == b"E":
                raise RuntimeError(self._error(data))
            elif kind == b"Z":
                return

    def _msg(self) -> tuple[bytes, bytes]:
        head = self.rf.read(5)
        if len(head) < 5:
            raise ConnectionError("postgres closed the connection")
        kind, n = head[:1], struct.unpack("!I", head[1:])[0]
        return kind, self.rf.read(n - 4)

    @staticmethod
    def _error(data: bytes) -> str:
        fields = {f[:1]: f[1:].decode(errors="replace") for f in data.split(b"\0") if f}
        return f"{fields.get(b'S', 'ERROR')}: {fields.get(b'M', '?')}"

    def query(self, sql: str) -> list[list[str | None]]:
        self.sock.sendall(b"Q" + struct.pack("!I", len(sql.encode()) + 5) + sql.encode() + b"\0")
        rows: list[list[str | None]] = []
        err = None
        while True:
            kind, data = self._msg()
            if kind == b"D":
                (ncol,) = struct.unpack("!H", data[:2])
                pos, row = 2, []
                for _ in range(ncol):
                    (n,) = struct.unpack("!i", data[pos : pos + 4])
                    pos += 4
                    if n < 0:
                        row.append(None)
                    else:
                        row.append(data[pos : pos + n].decode())
                        pos += n
                rows.append(row)
            elif kind == b"E":
                err = self._error(data)
            elif kind == b"Z":
                if err:
                    raise RuntimeError(f"{err} (in: {sql[:80]})")
                return rows

    def value(self, sql: str) -> str | None:
        rows = self.query(sql)
        return rows[0][0] if rows else None

    def close(self) -> None:
        try:
            self.sock.sendall(b"X\0\0\0\4")
        finally:
            self.sock.close()


def lsn(text: str | None) -> int:
    if not text:
        return 0
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) + int(lo, 16)


# ---------------------------------------------------------------- the lag sampler


class Sampler:
    """Origin position every `origin_every` s (0: every round), replica position every round;
    a round sleeps `replica_every` s.

    `origin()` and `replica()` return an int position; each is called on its own connection
    from one thread, so one query is in flight at a time: on this machine a round takes
    0.3-1 ms (a few thousand tiny queries a second in all). A write is seen by the sampler up
    to one round after the origin had it, so short lags read short by up to a round.
    """

    def __init__(self, origin, replica, origin_every: float = 0.0, replica_every: float = 0.00025) -> None:
        self.origin, self.replica = origin, replica
        self.origin_every, self.replica_every = origin_every, replica_every
        self.o: list[tuple[float, int]] = []
        self.r: list[tuple[float, int]] = []
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.unresolved = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "Sampler":
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            next_o = now()
            while not self.stop.is_set():
                t = now()
                if t >= next_o:
                    pos = self.origin()
                    self.o.append((now(), pos))
                    next_o += self.origin_every
                    if next_o < t:
                        next_o = t + self.origin_every
                pos = self.replica()
                self.r.append((now(), pos))
                time.sleep(self.replica_every)
        except BaseException as e:  # reported by finish()
            self.error = e

    def finish(self) -> None:
        self.stop.set()
        self.thread.join()
        if self.error:
            raise self.error

    def lags_ms(self, t0: float, t1: float) -> list[float]:
        """Lag of every origin sample taken in [t0, t1] that shows new writes."""
        out, j, best, prev = [], 0, -1, None
        r = self.r
        for t, pos in self.o:
            new_writes = prev is not None and pos > prev
            prev = pos
            # a sample whose position did not move since the previous one carries no write
            # (an idle moment at a fixed rate): it would only measure the poll interval
            if t < t0 or t > t1 or not new_writes:
                continue
            # first replica poll answered at/after t whose (running max) position >= pos
            while j < len(r) and (r[j][0] < t or max(best, r[j][1]) < pos):
                best = max(best, r[j][1])
                j += 1
            if j == len(r):
                self.unresolved += 1  # never reached while sampling (catch-up timed out)
                continue
            out.append((r[j][0] - t) * 1000.0)
        return out


def quantiles(xs: list[float]) -> dict:
    if not xs:
        return {"count": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    s = sorted(xs)

    def q(p: float) -> float:
        return round(s[min(len(s) - 1, int(p * len(s)))], 3)

    return {"count": len(s), "p50_ms": q(0.50), "p99_ms": q(0.99), "max_ms": round(s[-1], 3)}


def wait_until(pred, timeout: float, poll: float = 0.00025) -> float | None:
    """Time (monotonic, at the answer) at which pred() first held, or None on timeout."""
    end = now() + timeout
    while now() < end:
        if pred():
            return now()
        time.sleep(poll)
    return None


def measured_load(a, positions, run, sampled: bool) -> dict:
    """Run one load (`run()` -> (writes, rate_per_sec, info)) and measure the catch-up after it.

    sampled=False: nothing polls the servers while the load runs (the throughput figures);
    sampled=True: the lag sampler runs throughout (the lag figures). Load time is the load
    tool's own (writes / its rate, without connection setup); catch-up starts when it exits.
    `positions()` opens fresh connections and returns (origin, replica, caught_up(target)):
    the sampler's thread and this one each have their own.
    """
    origin, _, caught_up = positions()
    s = Sampler(*positions()[:2]).start() if sampled else None
    if s:
        time.sleep(0.05)
    t0 = now()
    writes, rate, info = run()
    t1 = now()
    target = origin()
    done = wait_until(caught_up(target), a.catchup_timeout)
    load_secs = writes / rate if rate else None
    catchup = (done - t1) if done is not None else None
    res = {
        **info,
        "writes": writes,
        "write_rate_per_sec": rate,
        "load_secs": load_secs,
        "wall_secs": t1 - t0,
        "catchup_ms": None if catchup is None else round(catchup * 1000, 3),
        "converged": done is not None,
        "sustained_replicated_per_sec": None if catchup is None or not load_secs else writes / (load_secs + catchup),
    }
    if s:
        time.sleep(0.01)
        s.finish()
        lags = s.lags_ms(t0, t1)
        res.update({"lag": quantiles(lags), "lag_samples_unresolved": s.unresolved,
                    "origin_samples": len(s.o), "replica_polls": len(s.r)})
    return res


# ---------------------------------------------------------------- Redis


def redis_wait(a) -> None:
    p, r = Redis(a.primary), Redis(a.replica)
    end = now() + a.timeout
    while True:
        ri, pi = r.info("replication"), p.info("replication")
        rp, pp = r.info("persistence"), p.info("persistence")
        slave0 = pi.get("slave0", "")
        ok = (
            ri.get("master_link_status") == "up"
            and ri.get("master_sync_in_progress") == "0"
            and "state=online" in slave0
            and rp.get("loading") == "0"
            and rp.get("aof_rewrite_in_progress") == "0"
            and rp.get("aof_rewrite_scheduled") == "0"
            and pp.get("rdb_bgsave_in_progress") == "0"
            and pp.get("aof_rewrite_in_progress") == "0"
        )
        if ok:
            log(f"redis replica {a.replica} in sync with {a.primary} ({slave0})")
            return
        if now() > end:
            sys.exit(f"anchors: redis replica did not sync within {a.timeout} s: {ri.get('master_link_status')} / {slave0!r}")
        time.sleep(0.05)


def redis_positions(a):
    po, ro = Redis(a.primary), Redis(a.replica)
    origin = lambda: redis_offset(po, "master_repl_offset")  # noqa: E731
    replica = lambda: redis_offset(ro, "slave_repl_offset")  # noqa: E731
    return origin, replica, lambda target: (lambda: replica() >= target)


def redis_benchmark(a):
    cmd = [
        "redis-benchmark", "-h", "127.0.0.1", "-p", str(a.primary), "-t", "set",
        "-c", str(a.concurrency), "-n", str(a.writes), "-d", str(a.value_bytes),
        "-r", str(a.keys), "--csv",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        cells = [c.strip('"') for c in line.split(",")]
        if cells and cells[0].upper().startswith("SET"):
            return a.writes, float(cells[1]), {"tool": " ".join(cmd)}
    raise RuntimeError(f"no SET line in redis-benchmark output: {out!r}")


def redis_fixed_writer(a):
    """Open loop at a.rate SET/s for a.secs on one pipelined connection (replies read by a thread)."""
    w = Redis(a.primary)
    value = b"y" * a.value_bytes
    total = int(a.rate * a.secs)
    acked = [0]

    def reader() -> None:
        for _ in range(total):
            w.read()
            acked[0] += 1

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    t0 = now()
    sent = 0
    rnd = random.Random(7)
    while sent < total:
        due = min(total, int((now() - t0) * a.rate) + 1)
        if due > sent:
            w.sock.sendall(b"".join(Redis.encode("SET", f"key:{rnd.randrange(a.keys):012d}", value) for _ in range(due - sent)))
            sent = due
        time.sleep(0.0005)
    th.join(timeout=60)
    secs = now() - t0
    w.close()
    return acked[0], acked[0] / secs, {"tool": f"anchors.py open-loop writer, {a.rate} SET/s for {a.secs} s, 1 pipelined connection"}


def redis_run(a) -> None:
    positions = lambda: redis_positions(a)  # noqa: E731
    log(f"{a.label}: throughput, {a.writes} SETs, {a.concurrency} clients")
    thr = measured_load(a, positions, lambda: redis_benchmark(a), sampled=False)
    log(f"{a.label}: {thr['write_rate_per_sec']:.0f} SET/s, replica caught up {thr['catchup_ms']} ms after; same load again with the lag sampler")
    lag = measured_load(a, positions, lambda: redis_benchmark(a), sampled=True)
    fixed = None
    if a.rate > 0:
        log(f"{a.label}: fixed load {a.rate}/s for {a.secs} s with the lag sampler")
        fixed = measured_load(a, positions, lambda: redis_fixed_writer(a), sampled=True)
        fixed["rate_per_sec"] = a.rate
    info = Redis(a.primary).info("server")
    json.dump(
        {
            "system": a.label,
            "version": info.get("redis_version"),
            "lag_method": "replication offsets: primary master_repl_offset vs replica slave_repl_offset (applied)",
            "throughput": thr,
            "lag_under_load": lag,
            "fixed": fixed,
        },
        open(a.out, "w"),
        indent=2,
    )


# ---------------------------------------------------------------- PostgreSQL

SUB = "bench_sub"


def pg_setup(a) -> None:
    pub, sub = Pg(a.pub), Pg(a.sub)
    for c in (pub, sub):
        c.query("CREATE TABLE kv (k bigint PRIMARY KEY, v bytea)")
    pub.query("CREATE PUBLICATION bench_pub FOR TABLE kv")
    sub.query(
        f"CREATE SUBSCRIPTION {SUB} CONNECTION 'host=127.0.0.1 port={a.pub} user=postgres dbname=postgres' "
        "PUBLICATION bench_pub"
    )
    end = now() + a.timeout
    while True:
        streaming = pub.value(f"SELECT count(*) FROM pg_stat_replication WHERE application_name = '{SUB}' AND state = 'streaming'")
        worker = sub.value(f"SELECT count(*) FROM pg_stat_subscription WHERE subname = '{SUB}' AND pid IS NOT NULL AND relid IS NULL")
        ready = sub.value("SELECT count(*) FILTER (WHERE srsubstate <> 'r') FROM pg_subscription_rel")
        if streaming == "1" and worker == "1" and ready == "0":
            log("postgres subscription streaming, table sync done")
            return
        if now() > end:
            sys.exit(f"anchors: subscription not ready within {a.timeout} s (streaming={streaming} worker={worker} not-ready={ready})")
        time.sleep(0.05)


def pg_positions(a):
    po, so, pr = Pg(a.pub), Pg(a.sub), Pg(a.pub)
    origin = lambda: lsn(po.value("SELECT pg_current_wal_flush_lsn()"))  # noqa: E731
    # the subscriber's own applied position: end LSN of the last remote commit it applied
    replica = lambda: lsn(so.value("SELECT remote_lsn FROM pg_replication_origin_status LIMIT 1"))  # noqa: E731
    # what the subscriber reported to the publisher as applied; reaches the WAL end when idle
    reported = lambda: lsn(pr.value(f"SELECT replay_lsn FROM pg_stat_replication WHERE application_name = '{SUB}'"))  # noqa: E731
    # caught up: the subscriber's applied commit LSN, or (when only non-transactional WAL follows
    # the last commit) the applied position it reported to the publisher, reached the target
    return origin, replica, lambda target: (lambda: replica() >= target or reported() >= target)


def pgbench(a, extra: list[str]):
    script = os.path.join(a.workdir, "upsert.sql")
    with open(script, "w") as f:
        f.write(
            f"\\set k random(1, {a.keys})\n"
            f"INSERT INTO kv (k, v) VALUES (:k, convert_to(repeat('x', {a.value_bytes}), 'UTF8')) "
            "ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v;\n"
        )
    cmd = ["pgbench", "-h", "127.0.0.1", "-p", str(a.pub), "-U", "postgres", "-n", "-f", script,
           "-c", str(a.concurrency), "-j", str(a.threads), *extra, "postgres"]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"pgbench failed: {p.stderr}")
    out = p.stdout
    processed = int(re.search(r"number of transactions actually processed: (\d+)", out).group(1))
    tps = float(re.search(r"tps = ([\d.]+) \(without initial connection time\)", out).group(1))
    failed = re.search(r"number of failed transactions: (\d+)", out)
    return processed, tps, {"tool": " ".join(cmd), "failed_transactions": int(failed.group(1)) if failed else None}


def pg_run(a) -> None:
    positions = lambda: pg_positions(a)  # noqa: E731
    per_client = max(1, a.writes // a.concurrency)
    log(f"pg-logical: throughput, {per_client * a.concurrency} upserts, {a.concurrency} clients")
    thr = measured_load(a, positions, lambda: pgbench(a, ["-t", str(per_client)]), False)
    log(f"pg-logical: {thr['write_rate_per_sec']:.0f} tps, subscriber caught up {thr['catchup_ms']} ms after; same load again with the lag sampler")
    lag = measured_load(a, positions, lambda: pgbench(a, ["-t", str(per_client)]), True)
    fixed = None
    if a.rate > 0:
        log(f"pg-logical: fixed load {a.rate}/s for {a.secs} s with the lag sampler")
        fixed = measured_load(a, positions, lambda: pgbench(a, ["-R", str(a.rate), "-T", str(a.secs)]), True)
        fixed["rate_per_sec"] = a.rate
    pub, sub = Pg(a.pub), Pg(a.sub)
    rows = (pub.value("SELECT count(*) FROM kv"), sub.value("SELECT count(*) FROM kv"))
    json.dump(
        {
            "system": "pg-logical",
            "version": pub.value("SHOW server_version"),
            "lag_method": "WAL positions: publisher pg_current_wal_flush_lsn() vs subscriber "
            "pg_replication_origin_status.remote_lsn (end of the last applied remote commit)",
            "rows_publisher_subscriber": rows,
            "throughput": thr,
            "lag_under_load": lag,
            "fixed": fixed,
        },
        open(a.out, "w"),
        indent=2,
    )


# ---------------------------------------------------------------- fsync probe


def fsync_probe(a) -> None:
    path = os.path.join(a.dir, "fsync-probe")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    block, lat = b"\0" * 4096, []
    end = now() + a.secs
    try:
        while now() < end and len(lat) < 2000:
            os.pwrite(fd, block, 0)
            t = now()
            os.fsync(fd)
            lat.append((now() - t) * 1000)
    finally:
        os.close(fd)
        os.unlink(path)
    json.dump({"fsyncs": len(lat), **{k: v for k, v in quantiles(lat).items() if k != "count"}}, sys.stdout)


# ---------------------------------------------------------------- report


def fmt(x, unit: str = "") -> str:
    if x is None:
        return "—"
    if isinstance(x, float) and x < 100:
        return f"{x:.2f}{unit}"
    return f"{x:,.0f}{unit}".replace(",", " ")


def lagcell(q: dict | None) -> str:
    if not q or not q.get("count"):
        return "—"
    return f"{fmt(q['p50_ms'])} / {fmt(q['p99_ms'])} / {fmt(q['max_ms'])}"


def anchor_row(part: dict) -> dict:
    thr, fixed = part["throughput"], part.get("fixed") or {}
    return {
        "system": part["system"],
        "write_rate_per_sec": thr["write_rate_per_sec"],
        "sustained_replicated_per_sec": thr["sustained_replicated_per_sec"],
        "catchup_ms": thr["catchup_ms"],
        "lag_under_load": part["lag_under_load"]["lag"],
        "lag_fixed_rate": fixed.get("lag"),
        "fixed_rate_per_sec": fixed.get("rate_per_sec"),
    }


def meridian_row(name: str, doc: dict) -> dict:
    s = doc.get("summary")
    if not isinstance(s, dict):
        raise SystemExit(f"anchors: {name}: the meridian bench JSON has no \"summary\" object (needs the issue-7 bench flags)")
    need = ["regions", "sustained_writes_per_sec", "total_writes_per_sec", "lag_p50_ms", "lag_p99_ms",
            "lag_max_ms", "catchup_ms", "converged"]
    missing = [k for k in need if k not in s]
    if missing:
        raise SystemExit(f"anchors: {name}: summary lacks {missing}")
    rate = None
    lag = doc.get("lag")
    if isinstance(lag, dict):
        rate = lag.get("rate_per_sec")
    # summary.catchup_ms is the catch-up of a cut-off region (its catchup phase); the column
    # here is the drain after the throughput phase's load, as for the anchors
    thr = doc.get("throughput")
    drain = thr.get("drain_secs") if isinstance(thr, dict) else None
    return {
        "system": name,
        "write_rate_per_sec": s["total_writes_per_sec"],
        "sustained_replicated_per_sec": s["sustained_writes_per_sec"],
        "catchup_ms": None if drain is None else round(drain * 1000, 3),
        "lag_under_load": None,
        "lag_fixed_rate": {"count": 1, "p50_ms": s["lag_p50_ms"], "p99_ms": s["lag_p99_ms"], "max_ms": s["lag_max_ms"]},
        "fixed_rate_per_sec": rate,
        "converged": s["converged"],
        "bytes_per_replicated_write": s.get("bytes_per_replicated_write"),
        "summary": s,
    }


def meridian_wan_row(name: str, doc: dict) -> dict:
    """The row of a `meridian bench --phases wan,lag` run over links with latency and jitter."""
    w = doc.get("wan")
    s = doc.get("summary")
    if not isinstance(w, dict) or not isinstance(s, dict):
        raise SystemExit(f"anchors: {name}: the meridian bench JSON has no \"wan\" phase (needs --phases wan)")
    lag = doc.get("lag") if isinstance(doc.get("lag"), dict) else {}
    window = (w.get("secs") or 0) + (w.get("drain_secs") or 0)
    return {
        "system": name,
        "write_rate_per_sec": w["writes_per_sec"],
        "sustained_replicated_per_sec": w["writes"] / window if window > 0 else None,
        "catchup_ms": round(w["drain_secs"] * 1000, 3),
        "lag_under_load": None,
        "lag_fixed_rate": {"count": 1, "p50_ms": s["lag_p50_ms"], "p99_ms": s["lag_p99_ms"], "max_ms": s["lag_max_ms"]} if lag else None,
        "fixed_rate_per_sec": lag.get("rate_per_sec"),
        "converged": s["converged"],
        "bytes_per_replicated_write": s.get("bytes_per_replicated_write"),
        "links": {"latency_ms": w["injected_one_way_ms"], "jitter_ms": w["jitter_ms"]},
        "relayed_per_client_write": w["relayed_per_client_write"],
        "trend_pct_per_min": w["trend_pct_per_min"],
        "first_third_writes_per_sec": w["first_third_writes_per_sec"],
        "last_third_writes_per_sec": w["last_third_writes_per_sec"],
        "summary": s,
    }


def ratio(a: dict | None, b: dict | None) -> float | None:
    if not a or not b:
        return None
    x, y = a.get("sustained_replicated_per_sec"), b.get("sustained_replicated_per_sec")
    if not x or not y:
        return None
    return x / y


def report(a) -> None:
    doc = json.load(open(a.machine))
    rows: dict[str, dict] = {}
    parts = {}
    for p in a.part:
        part = json.load(open(p))
        parts[part["system"]] = part
        rows[part["system"]] = anchor_row(part)
    meridian = {}
    for n, path in (("meridian-2", a.meridian2), ("meridian-3", a.meridian3)):
        if path:
            m = json.load(open(path))
            meridian[n] = m
            rows[n] = meridian_row(n, m)
    if a.meridian3_wan:
        m = json.load(open(a.meridian3_wan))
        meridian["meridian-3-wan"] = m
        rows["meridian-3-wan"] = meridian_wan_row("meridian-3-wan", m)

    cols = ["system", "writes/s", "sustained repl./s", "catch-up ms", "lag under load p50/p99/max ms",
            "lag at fixed rate p50/p99/max ms", "fixed rate/s"]
    table = [cols]
    for name in ["redis-everysec", "redis-always", "pg-logical", "meridian-2", "meridian-3", "meridian-3-wan"]:
        r = rows.get(name)
        if not r:
            table.append([name, "not run", "", "", "", "", ""])
            continue
        table.append([
            name, fmt(r["write_rate_per_sec"]), fmt(r["sustained_replicated_per_sec"]), fmt(r["catchup_ms"]),
            lagcell(r["lag_under_load"]), lagcell(r["lag_fixed_rate"]), fmt(r["fixed_rate_per_sec"]),
        ])
    widths = [max(len(str(row[i])) for row in table) for i in range(len(cols))]
    lines = []
    for k, row in enumerate(table):
        lines.append("  ".join(str(c).ljust(widths[i]) if i == 0 else str(c).rjust(widths[i]) for i, c in enumerate(row)))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))

    ratios = {}
    for m in ("meridian-3", "meridian-2"):
        for base in ("pg-logical", "redis-always", "redis-everysec"):
            ratios[f"{m} / {base}"] = ratio(rows.get(m), rows.get(base))
    r_pg, r_ra = ratios["meridian-3 / pg-logical"], ratios["meridian-3 / redis-always"]
    targets = {
        "meridian-3 >= 5 x pg-logical": None if r_pg is None else r_pg >= 5.0,
        "meridian-3 >= 0.5 x redis-always": None if r_ra is None else r_ra >= 0.5,
    }

    m = doc["machine"]
    out = []
    out.append(f"machine: {m['nproc']} cpus, {m['cpu']}; load average before {m['load_before']}, after {m['load_after']}")
    fp = m.get("fsync_probe") or {}
    out.append(f"fsync probe ({m.get('fsync_dir')}): {fp.get('fsyncs')} fsyncs of 4 KiB, p50 {fmt(fp.get('p50_ms'))} ms, p99 {fmt(fp.get('p99_ms'))} ms")
    p = doc["params"]
    out.append(f"same for every system: {p['keys']} keys, {p['value_bytes']}-byte values, {p['concurrency']} clients, {p['writes']} writes; fixed-rate lag load {p['fixed_rate']}/s for {p['fixed_secs']} s (anchors)")
    out.append("")
    out.extend(lines)
    out.append("")
    out.append("sustained repl./s = writes / (load time + time until the replica/all regions had them all)")
    out.append("anchors' lag: replication positions (origin position, sampled in rounds of ~0.3-1 ms -> first replica poll showing it applied);")
    out.append("meridian: clients write at every region at once (multi-leader); writes/s and sustained are totals over its")
    out.append("  regions, catch-up is the drain after its load; lag is its own lag phase (ack at the origin -> read at each")
    out.append("  other region, every ordered pair), --lag-rate auto = half its sustained rate")
    out.append(f"anchors: one writable origin; fixed-rate lag load from {p.get('fixed_rate_source', 'FIXED_RATE')}")
    wan = rows.get("meridian-3-wan")
    if wan:
        base = rows.get("meridian-3")
        share = None
        if base and base.get("write_rate_per_sec"):
            share = wan["write_rate_per_sec"] / base["write_rate_per_sec"]
        out.append(
            f"meridian-3-wan: links {wan['links']['latency_ms']} ms ± {wan['links']['jitter_ms']} ms one way; closed loop, then"
            f" its lag phase at half that rate; writes relayed per client write {wan['relayed_per_client_write']:.4f};"
        )
        out.append(
            f"  writes/s first third {fmt(wan['first_third_writes_per_sec'])}, last third {fmt(wan['last_third_writes_per_sec'])},"
            f" trend {wan['trend_pct_per_min']:+.1f} %/min; "
            + ("vs meridian-3 (no latency): —" if share is None else f"{share * 100:.0f} % of meridian-3's writes/s (no latency)")
        )
    out.append("")
    out.append("ratios of sustained replicated rates:")
    for k, v in ratios.items():
        out.append(f"  {k:<32} {'—' if v is None else f'{v:.2f}x'}")
    out.append("issue 7 targets:")
    for k, v in targets.items():
        out.append(f"  {k:<32} {'not measured' if v is None else ('met' if v else 'NOT met')}")
    for name, r in rows.items():
        if r.get("converged") is False:
            out.append(f"WARNING: {name} reports converged: false")
        elif r.get("sustained_replicated_per_sec") is None:
            out.append(f"WARNING: {name}: the replica did not catch up in time, no sustained rate")
    for name, part in parts.items():
        for phase in ("throughput", "lag_under_load", "fixed"):
            ph = part.get(phase) or {}
            if ph.get("lag_samples_unresolved"):
                out.append(f"WARNING: {name} {phase}: {ph['lag_samples_unresolved']} lag samples never reached the replica")
            if ph.get("failed_transactions"):
                out.append(f"WARNING: {name} {phase}: {ph['failed_transactions']} failed transactions")
    text = "\n".join(out)
    print(text)
    doc.update({"rows": rows, "ratios": ratios, "targets": targets, "anchors": parts, "meridian": meridian, "table": text})
    with open(a.out, "w") as f:
        json.dump(doc, f, indent=2)


# ---------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    def load_args(p) -> None:
        p.add_argument("--keys", type=int, required=True)
        p.add_argument("--value-bytes", type=int, required=True)
        p.add_argument("--concurrency", type=int, required=True)
        p.add_argument("--writes", type=int, required=True)
        p.add_argument("--rate", type=int, default=1000, help="fixed-rate phase, writes/s (0: skip)")
        p.add_argument("--secs", type=int, default=10, help="fixed-rate phase length")
        p.add_argument("--catchup-timeout", type=float, default=120)
        p.add_argument("--out", required=True)

    p = sub.add_parser("redis-wait")
    p.add_argument("--primary", type=int, required=True)
    p.add_argument("--replica", type=int, required=True)
    p.add_argument("--timeout", type=float, default=60)
    p.set_defaults(fn=redis_wait)

    p = sub.add_parser("redis-run")
    p.add_argument("--primary", type=int, required=True)
    p.add_argument("--replica", type=int, required=True)
    p.add_argument("--label", required=True)
    load_args(p)
    p.set_defaults(fn=redis_run)

    p = sub.add_parser("pg-setup")
    p.add_argument("--pub", type=int, required=True)
    p.add_argument("--sub", type=int, required=True)
    p.add_argument("--timeout", type=float, default=60)
    p.set_defaults(fn=pg_setup)

    p = sub.add_parser("pg-run")
    p.add_argument("--pub", type=int, required=True)
    p.add_argument("--sub", type=int, required=True)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--workdir", required=True)
    load_args(p)
    p.set_defaults(fn=pg_run)

    p = sub.add_parser("fsync-probe")
    p.add_argument("--dir", required=True)
    p.add_argument("--secs", type=float, default=1.0)
    p.set_defaults(fn=fsync_probe)

    p = sub.add_parser("report")
    p.add_argument("--machine", required=True, help="JSON with machine and params")
    p.add_argument("--part", action="append", default=[])
    p.add_argument("--meridian2")
    p.add_argument("--meridian3")
    p.add_argument("--meridian3-wan")
    p.add_argument("--out", required=True)
    p.set_defaults(fn=report)

    a = ap.parse_args()
    a.fn(a)


if __name__ == "__main__":
    main()
