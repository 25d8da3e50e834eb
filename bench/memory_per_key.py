#!/usr/bin/env python3
"""Memory per key at rest (issue 13, item 5): one region, N distinct keys of VALUE_BYTES-byte
values written through its RESP listener, then the process's resident memory.

For each N (default 10 000, 100 000, 1 000 000) a fresh region is started from an empty data
directory (`meridian run`, one region, no peers): its RSS is read once it serves (baseline),
N keys `key:<n>` are written with pipelined MSETs of 100 pairs, and once every write is
answered (durable) and the region has been idle for a second, RSS is read again. The region
is then stopped and started again on the same directory (recovery from the checkpoint and
the log) and its RSS read once more. Per key = (RSS - baseline) / N. RSS includes the
allocator's free lists and the storage cache's pages, so it is what an operator sees, not a
count of live bytes.

Usage: bench/memory_per_key.py --bin target/release/meridian [--keys 10000,100000,1000000]
       [--value-bytes 100] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def encode(*args: bytes) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class Region:
    def __init__(self, binary: str, work: str) -> None:
        self.binary, self.work = binary, work
        self.resp, self.api = free_port(), free_port()
        cfg = os.path.join(work, "regions.toml")
        with open(cfg, "w") as f:
            f.write(
                'cluster = "memory"\ntls_dir = "certs"\n\n[[region]]\nname = "solo"\n'
                f'peer_addr = "127.0.0.1:{free_port()}"\napi_addr = "127.0.0.1:{self.api}"\n'
                f'resp_addr = "127.0.0.1:{self.resp}"\ndata_dir = "data"\n\n[tables]\ndefault = "lww"\n'
            )
        self.cfg = cfg
        subprocess.run([binary, "certs", "init", "--config", cfg], check=True, capture_output=True)
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(os.path.join(self.work, "region.log"), "a")
        self.proc = subprocess.Popen([self.binary, "run", "--config", self.cfg, "--region", "solo"],
                                     stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.resp), timeout=1) as s:
                    s.sendall(encode(b"PING"))
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise SystemExit(f"the region exited (see {log.name})")
            time.sleep(0.05)
        raise SystemExit("the region did not start within 300 s")

    def stop(self) -> None:
        assert self.proc
        self.proc.terminate()
        self.proc.wait(timeout=60)

    def load(self, n: int, value: bytes) -> float:
        t0 = time.monotonic()
        with socket.create_connection(("127.0.0.1", self.resp)) as s:
            s.settimeout(300)
            sent = 0
            batch = 100
            pending = 0
            buf = b""
            while sent < n or pending:
                # keep up to 64 MSETs in flight
                while sent < n and pending < 64:
                    pairs = []
                    for k in range(sent, min(n, sent + batch)):
                        pairs += [b"key:%d" % k, value]
                    s.sendall(encode(b"MSET", *pairs))
                    sent = min(n, sent + batch)
                    pending += 1
                buf += s.recv(65536)
                while b"\r\n" in buf:
                    line, buf = buf.split(b"\r\n", 1)
                    if line != b"+OK":
                        raise SystemExit(f"MSET answered {line!r}")
                    pending -= 1
        return time.monotonic() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--keys", default="10000,100000,1000000")
    ap.add_argument("--value-bytes", type=int, default=100)
    ap.add_argument("--out")
    a = ap.parse_args()
    value = b"v" * a.value_bytes
    rows = []
    for n in [int(x) for x in a.keys.split(",")]:
        with tempfile.TemporaryDirectory(prefix="meridian-memory-") as work:
            r = Region(a.bin, work)
            r.start()
            time.sleep(1)
            base = rss_kib(r.proc.pid)
            secs = r.load(n, value)
            time.sleep(1)
            loaded = rss_kib(r.proc.pid)
            r.stop()
            r.start()
            time.sleep(1)
            restarted = rss_kib(r.proc.pid)
            r.stop()
            du = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(os.path.join(work, "data")) for f in fs)
        row = {
            "keys": n, "value_bytes": a.value_bytes, "load_secs": round(secs, 2),
            "rss_baseline_kib": base, "rss_loaded_kib": loaded, "rss_restarted_kib": restarted,
            "bytes_per_key_loaded": round((loaded - base) * 1024 / n, 1),
            "bytes_per_key_restarted": round((restarted - base) * 1024 / n, 1),
            "data_dir_bytes": du,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"{'keys':>9}  {'RSS base':>9}  {'RSS loaded':>10}  {'per key':>8}  {'after restart':>13}  {'per key':>8}  {'data dir':>9}")
    for r in rows:
        print(f"{r['keys']:>9}  {r['rss_baseline_kib'] // 1024:>6} MiB  {r['rss_loaded_kib'] // 1024:>7} MiB  "
              f"{r['bytes_per_key_loaded']:>6} B  {r['rss_restarted_kib'] // 1024:>10} MiB  "
              f"{r['bytes_per_key_restarted']:>6} B  {r['data_dir_bytes'] // 1048576:>5} MiB")
    if a.out:
        json.dump({"rows": rows, "bin": a.bin, "load": open("/proc/loadavg").read().split()[:3]}, open(a.out, "w"), indent=2)


if __name__ == "__main__":
    sys.exit(main())
