#!/usr/bin/env python3
"""redis-benchmark against Meridian and Redis, side by side (issue 14), for bench/compare.sh.

Subcommands:
  redis      redis-benchmark SET and GET (unpipelined and with -P PIPELINE) against a running Redis
             primary; writes a JSON part.
  meridian   starts a 3-region Meridian cluster on localhost (`meridian simulate` on a generated
             regions.toml: no link latency, every region with a resp_addr), runs the same
             redis-benchmark commands against one region's RESP listener, measures after each
             write run how long the other regions take to apply everything (sustained
             replicated rate), samples the cluster's CPU, stops the cluster; writes a JSON part.
  report     the table, ratios and issue-14 targets from the two parts; adds them to the
             compare.sh result JSON.

Every figure is redis-benchmark's own requests/s (`--csv`); the same -c, -n, -d and -r for
every system. The sustained replicated rate is writes / (load time + time until every other
region had applied all of them), as compare.sh's other rows.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request


def log(msg: str) -> None:
    print(f"resp: {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def benchmark(port: int, test: str, a, pipeline: int = 1) -> dict:
    """One redis-benchmark run; its requests/s and the command line."""
    cmd = [
        "redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-t", test,
        "-c", str(a.concurrency), "-n", str(a.requests), "-d", str(a.value_bytes),
        "-r", str(a.keys), "-P", str(pipeline), "--csv",
    ]
    if a.db:
        cmd += ["--dbnum", str(a.db)]
    t0 = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    secs = time.monotonic() - t0
    for line in out.splitlines():
        cells = [c.strip('"') for c in line.split(",")]
        if cells and cells[0].upper().startswith(test.upper()):
            return {"rps": float(cells[1]), "requests": a.requests, "pipeline": pipeline,
                    "wall_secs": round(secs, 3), "tool": " ".join(cmd)}
    raise RuntimeError(f"no {test} line in redis-benchmark output: {out!r}")


def cpu_ticks(pids: list[int]) -> int:
    """User + system clock ticks of these processes and their children so far."""
    total = 0
    for pid in pids:
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total


# ---------------------------------------------------------------- Redis


def redis_offset(port: int, field: str) -> int:
    out = subprocess.run(["redis-cli", "-p", str(port), "info", "replication"], capture_output=True,
                         text=True, check=True).stdout
    for line in out.splitlines():
        if line.startswith(field + ":"):
            return int(line.split(":", 1)[1])
    raise RuntimeError(f"no {field} in INFO replication of port {port}")


def redis_write_run(a, pipeline: int) -> dict:
    """A SET run, then the time until the replica has applied all of it (as for Meridian)."""
    run = benchmark(a.port, "set", a, pipeline)
    if a.replica:
        target = redis_offset(a.port, "master_repl_offset")
        t0 = time.monotonic()
        while redis_offset(a.replica, "slave_repl_offset") < target:
            if time.monotonic() - t0 > 120:
                return run
            time.sleep(0.001)
        drain = time.monotonic() - t0
        run["catchup_ms"] = round(drain * 1000, 1)
        run["sustained_replicated_per_sec"] = a.requests / (a.requests / run["rps"] + drain)
    return run


def redis(a) -> None:
    part = {"system": a.label, "set": redis_write_run(a, 1)}
    part["get"] = benchmark(a.port, "get", a)
    part["set_pipelined"] = redis_write_run(a, a.pipeline)
    log(f"{a.label}: SET {part['set']['rps']:.0f}/s, GET {part['get']['rps']:.0f}/s, "
        f"SET -P {a.pipeline} {part['set_pipelined']['rps']:.0f}/s")
    json.dump(part, open(a.out, "w"), indent=2)


# ---------------------------------------------------------------- Meridian

REGIONS = ["us-east", "eu-west", "ap-south"]


def config(work: str) -> tuple[str, dict]:
    ports = {r: {"peer": free_port(), "api": free_port(), "resp": free_port()} for r in REGIONS}
    lines = ['cluster = "resp-bench"', 'tls_dir = "certs"', ""]
    for r in REGIONS:
        p = ports[r]
        lines += ["[[region]]", f'name = "{r}"', f'peer_addr = "127.0.0.1:{p["peer"]}"',
                  f'api_addr = "127.0.0.1:{p["api"]}"', f'resp_addr = "127.0.0.1:{p["resp"]}"',
                  f'data_dir = "data/{r}"', ""]
    lines += ["[tables]", 'default = "lww"', ""]
    path = os.path.join(work, "regions.toml")
    open(path, "w").write("\n".join(lines))
    return path, ports


def status(api: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{api}/v1/status", timeout=5) as r:
        return json.load(r)


def applied_of(doc: dict, origin: str) -> int:
    return next((a["seq"] for a in doc.get("applied", []) if a["region"] == origin), 0)


def catch_up(ports: dict, origin: str, timeout: float) -> float | None:
    """Seconds from now until every other region has applied all that `origin` had now."""
    target = applied_of(status(ports[origin]["api"]), origin)
    t0 = time.monotonic()
    others = [r for r in REGIONS if r != origin]
    while time.monotonic() - t0 < timeout:
        if all(applied_of(status(ports[r]["api"]), origin) >= target for r in others):
            return time.monotonic() - t0
        time.sleep(0.002)
    return None


def write_run(ports: dict, origin: str, a, pipeline: int, pids: list[int]) -> dict:
    ticks0, t0 = cpu_ticks(pids), time.monotonic()
    run = benchmark(ports[origin]["resp"], "set", a, pipeline)
    drain = catch_up(ports, origin, a.catchup_timeout)
    secs = time.monotonic() - t0
    cpu = (cpu_ticks(pids) - ticks0) / os.sysconf("SC_CLK_TCK")
    load = a.requests / run["rps"]
    run["catchup_ms"] = None if drain is None else round(drain * 1000, 1)
    run["sustained_replicated_per_sec"] = None if drain is None else a.requests / (load + drain)
    run["cluster_cpu_secs"] = round(cpu, 2)
    run["cluster_cpu_us_per_write"] = round(cpu / a.requests * 1e6, 1)
    run["cluster_cpu_cores"] = round(cpu / secs, 2)
    return run


def meridian(a) -> None:
    work = a.work
    os.makedirs(work, exist_ok=True)
    path, ports = config(work)
    logf = open(os.path.join(work, "simulate.log"), "w")
    proc = subprocess.Popen([a.bin, "simulate", "--config", path], stdout=logf, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"resp: meridian simulate exited early (see {logf.name})")
            try:
                if all(p["replicating"] for r in REGIONS for p in status(ports[r]["api"])["peers"]):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"resp: the regions did not connect within 60 s (see {logf.name})")
            time.sleep(0.1)
        pids = [proc.pid] + [int(p) for p in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                                             text=True).stdout.split()]
        origin = REGIONS[0]
        part = {"system": "meridian-3-resp", "regions": REGIONS, "origin": origin}
        log(f"meridian: SET at {origin}, {a.concurrency} clients, {a.requests} requests")
        part["set"] = write_run(ports, origin, a, 1, pids)
        log(f"meridian: GET at {origin}")
        part["get"] = benchmark(ports[origin]["resp"], "get", a)
        log(f"meridian: SET -P {a.pipeline} at {origin}")
        part["set_pipelined"] = write_run(ports, origin, a, a.pipeline, pids)
        s = status(ports[origin]["api"])
        part["counters"] = s.get("counters")
        log(f"meridian: SET {part['set']['rps']:.0f}/s, GET {part['get']['rps']:.0f}/s, "
            f"SET -P {a.pipeline} {part['set_pipelined']['rps']:.0f}/s")
        json.dump(part, open(a.out, "w"), indent=2)
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# ---------------------------------------------------------------- report


def fmt(x) -> str:
    return "—" if x is None else f"{x:,.0f}".replace(",", " ")


def report(a) -> None:
    parts = [json.load(open(p)) for p in a.part]
    rows = {p["system"]: p for p in parts}
    head = ["system", "SET/s", "sustained repl. SET/s", "catch-up ms", "GET/s", f"SET -P{a.pipeline}/s",
            f"sustained -P{a.pipeline}/s"]
    table = [head]
    for p in parts:
        sp = p["set_pipelined"]
        table.append([p["system"], fmt(p["set"]["rps"]), fmt(p["set"].get("sustained_replicated_per_sec")),
                      fmt(p["set"].get("catchup_ms")), fmt(p["get"]["rps"]), fmt(sp["rps"]),
                      fmt(sp.get("sustained_replicated_per_sec"))])
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    out = ["redis-benchmark, the same commands against each (issue 14): "
           + (parts[0]["set"]["tool"].split(" -P")[0] if parts else "")]
    for k, r in enumerate(table):
        out.append("  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)))
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    m, ra = rows.get("meridian-3-resp"), rows.get("redis-always")
    targets = {}
    if m and ra:
        def sus(run):
            return run.get("sustained_replicated_per_sec") or run["rps"]
        r_set = sus(m["set"]) / sus(ra["set"])
        r_pip = sus(m["set_pipelined"]) / sus(ra["set"])
        r_get = m["get"]["rps"] / ra["get"]["rps"]
        targets = {
            "SET unpipelined >= 0.5 x redis-always": (r_set, r_set >= 0.5),
            f"SET -P{a.pipeline} >= 1 x redis-always unpipelined": (r_pip, r_pip >= 1.0),
            "GET >= 0.5 x redis-always GET": (r_get, r_get >= 0.5),
        }
        out.append("ratios (sustained replicated rates for SET, each until the last replica/region applied everything;")
        out.append("        Redis's replica has applied, not fsynced; Meridian's regions have fsynced):")
        for k, (r, ok) in targets.items():
            out.append(f"  {k:<44} {r:.2f}x  {'met' if ok else 'NOT met'}")
        for name in ("set", "set_pipelined"):
            run = m[name]
            out.append(f"  meridian {name}: cluster CPU {run['cluster_cpu_us_per_write']} us/write "
                       f"({run['cluster_cpu_cores']} cores busy over the run, all 3 regions)")
    text = "\n".join(out)
    print(text)
    if a.into and os.path.exists(a.into):
        doc = json.load(open(a.into))
        doc["resp"] = {"rows": rows, "targets": {k: {"ratio": r, "met": ok} for k, (r, ok) in targets.items()},
                       "table": text}
        json.dump(doc, open(a.into, "w"), indent=2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    def load(p) -> None:
        p.add_argument("--keys", type=int, required=True)
        p.add_argument("--value-bytes", type=int, required=True)
        p.add_argument("--concurrency", type=int, required=True)
        p.add_argument("--requests", type=int, required=True)
        p.add_argument("--pipeline", type=int, default=16)
        p.add_argument("--db", type=int, default=0)
        p.add_argument("--out", required=True)

    p = sub.add_parser("redis")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--replica", type=int, help="the replica's port: time its catch-up after each SET run")
    p.add_argument("--label", required=True)
    load(p)
    p.set_defaults(fn=redis)

    p = sub.add_parser("meridian")
    p.add_argument("--bin", required=True)
    p.add_argument("--work", required=True)
    p.add_argument("--catchup-timeout", type=float, default=120)
    load(p)
    p.set_defaults(fn=meridian)

    p = sub.add_parser("report")
    p.add_argument("--part", action="append", default=[])
    p.add_argument("--pipeline", type=int, default=16)
    p.add_argument("--into", help="compare.sh's result JSON to add the rows to")
    p.set_defaults(fn=report)

    a = ap.parse_args()
    a.fn(a)


if __name__ == "__main__":
    main()
