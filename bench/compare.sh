#!/usr/bin/env bash
# bench/compare.sh — Meridian beside its anchors, in one run (issue 7 §2).
#
# Systems, each loaded with the SAME key count (KEYS), value size (VALUE_BYTES), client
# concurrency (CONCURRENCY) and number of writes (WRITES), all on 127.0.0.1 of this machine:
#   redis-everysec  Redis primary -> replica, async replication, AOF appendfsync everysec on both
#   redis-always    the same with appendfsync always on both (a reply comes after the fsync)
#   pg-logical      PostgreSQL 15 publisher -> subscriber, logical replication of kv(k bigint
#                   primary key, v bytea); synchronous_commit=on at the publisher (durable there)
#   meridian-2/-3   `meridian bench --regions 2|3 ... --mix write-only --phases throughput,lag`:
#                   multi-leader, its clients (CONCURRENCY in all) write at EVERY region at once,
#                   each region to its own KEYS keys (bench's --keys is per region); writes/s and
#                   sustained are totals over the regions. The anchors have one writable origin.
#   meridian-3-wan  the same three regions with WAN_LATENCY_MS one-way links and WAN_JITTER_MS
#                   jitter on every link (what a geo-distributed store exists for), `--phases
#                   wan,lag`: a closed loop (CONCURRENCY clients) for WAN_SECS, then the lag
#                   phase at half that rate. writes/s is the wan phase's rate; sustained is
#                   writes / (WAN_SECS + drain); below the table: writes relayed per client
#                   write, the throughput trend and its ratio to meridian-3's writes/s.
#   meridian-3-resp redis-benchmark itself against one region's RESP listener of a 3-region
#                   cluster (`meridian simulate`, no link latency; bench/resp.py): SET, GET and SET
#                   -P RESP_PIPELINE with -c CONCURRENCY -n WRITES -d VALUE_BYTES -r KEYS, the
#                   same commands against each Redis primary, in a second table with the issue-14
#                   targets (sustained = writes / (load + time until both other regions applied
#                   them all); the cluster's CPU per write from /proc).
#
# What each figure means:
#   writes/s            the load tool's own rate: redis-benchmark's requests/s (SET, random key
#                       in 0..KEYS-1, -c CONCURRENCY -n WRITES -d VALUE_BYTES -r KEYS), pgbench's
#                       tps without connection time (upsert of a random key 1..KEYS, -c
#                       CONCURRENCY, -t WRITES/CONCURRENCY), meridian's total_writes_per_sec.
#   sustained repl./s   writes / (load time + catch-up), where load time = writes / writes/s and
#                       catch-up = time from the load tool's exit until the replica had applied
#                       everything the origin had then (Redis: replica slave_repl_offset >=
#                       primary master_repl_offset; PG: subscriber's applied remote commit LSN, or
#                       replay_lsn reported in pg_stat_replication, >= publisher's
#                       pg_current_wal_flush_lsn()). For Meridian: its sustained_writes_per_sec
#                       (writes / (load + time until every region applied everything)); its
#                       catch-up column is throughput.drain_secs (summary.catchup_ms is another
#                       figure: a cut-off region's catch-up, a phase not run here).
#   lag under load      anchors only: the same saturating load is run a SECOND time (the
#                       throughput figures above come from the first, unsampled run, because
#                       the sampler costs CPU); a sampler, in rounds of ~0.3-1 ms, records the
#                       origin's position (Redis master_repl_offset; PG pg_current_wal_flush_lsn(),
#                       i.e. WAL durable at the publisher) and then polls the replica's APPLIED
#                       position (Redis replica slave_repl_offset; PG
#                       pg_replication_origin_status.remote_lsn on the subscriber). Lag of a
#                       sample = time until the first replica poll showing a position >= it.
#                       Method: replication positions, not marker keys. Both times are taken
#                       when the answer arrives, so a lag includes one local round trip; a write
#                       reaches the sampler up to one round after the origin had it, so short
#                       lags read short by up to a round (Meridian's own lag is measured from
#                       the client's ack instead). Samples whose position did not move since the
#                       previous one carry no write and are skipped.
#   lag at fixed rate   the same sampler while the origin takes FIXED_RATE writes/s for FIXED_SECS
#                       (Redis: an open-loop pipelined writer in bench/anchors.py; PG: pgbench -R).
#                       FIXED_RATE=auto (default): the rate meridian-3's lag phase used, when its
#                       JSON says (summary.lag_rate_per_sec, lag.rate_per_sec or args.lag_rate),
#                       else 1000 (500 with --quick). Meridian's column is its own lag phase at
#                       --lag-rate auto, half its sustained rate (time from the origin's ack to a
#                       successful read at each other region, every ordered pair).
# Limits:
#   - Everything shares this machine's cores: servers, replicas, load tools and the sampler. The
#     sampler itself costs CPU (a few thousand tiny queries/s). Figures from a loaded machine are
#     lower bounds for throughput and upper bounds for lag; print the load average with them.
#   - Redis "applied" is not "durable" at the replica; PG's subscriber applies with its
#     subscription's synchronous_commit (off by default), also not durable at once.
#   - Redis at `everysec` acknowledges before any fsync; it is the non-durable reference.
#   - PG's replay_lsn comes from subscriber feedback and is used only to end the catch-up wait
#     when trailing non-transactional WAL keeps remote_lsn below the target.
#   - One run, no repetitions: run it several times on a quiet machine before quoting figures.
#
# Usage: bench/compare.sh [--quick] [--out FILE] [--skip-meridian]
#   env: KEYS=10000 VALUE_BYTES=100 CONCURRENCY=64 WRITES=200000 FIXED_RATE=auto FIXED_SECS=10
#        WAN_LATENCY_MS=20 WAN_JITTER_MS=2 WAN_SECS=60 RESP_PIPELINE=16
#        (--quick: WRITES=12800 FIXED_SECS=2 WAN_SECS=10, others the same); FIXED_SECS is also
#        passed to meridian bench as --lag-secs when it takes that flag
#        MERIDIAN_BIN (default: cargo build --release -p meridian, then $CARGO_TARGET_DIR/release/meridian)
#        MERIDIAN_JSON2 / MERIDIAN_JSON3 / MERIDIAN_JSON3_WAN: use these meridian bench outputs
#        instead of running it
#        SKIP_MERIDIAN=1: anchors only
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
quick=0
out=""
skip_meridian=${SKIP_MERIDIAN:-0}
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --out) out=$2; shift ;;
    --out=*) out=${1#--out=} ;;
    --skip-meridian) skip_meridian=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "compare.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done

if [ "$quick" = 1 ]; then
  KEYS=${KEYS:-10000}; VALUE_BYTES=${VALUE_BYTES:-100}; CONCURRENCY=${CONCURRENCY:-64}
  WRITES=${WRITES:-12800}; FIXED_RATE=${FIXED_RATE:-auto}; FIXED_SECS=${FIXED_SECS:-2}; fixed_default=500
  WAN_SECS=${WAN_SECS:-10}
else
  KEYS=${KEYS:-10000}; VALUE_BYTES=${VALUE_BYTES:-100}; CONCURRENCY=${CONCURRENCY:-64}
  WRITES=${WRITES:-200000}; FIXED_RATE=${FIXED_RATE:-auto}; FIXED_SECS=${FIXED_SECS:-10}; fixed_default=1000
  WAN_SECS=${WAN_SECS:-60}
fi
WAN_LATENCY_MS=${WAN_LATENCY_MS:-20}; WAN_JITTER_MS=${WAN_JITTER_MS:-2}
stamp=$(date -u +%Y%m%dT%H%M%SZ)
out=${out:-${TMPDIR:-/tmp}/meridian-compare-$stamp.json}
PGBIN=/usr/lib/postgresql/15/bin
py() { python3 "$here/anchors.py" "$@"; }
say() { echo "compare: $*" >&2; }
die() { echo "compare: error: $*" >&2; exit 1; }

# ---------------------------------------------------------------- cleanup on any exit
work=$(mktemp -d "${TMPDIR:-/tmp}/meridian-compare.XXXXXX")
chmod 755 "$work"
pids=()
pgdirs=()
cleanup() {
  local rc=$?
  set +e
  for d in "${pgdirs[@]}"; do
    [ -f "$d/postmaster.pid" ] && runuser -u postgres -- "$PGBIN/pg_ctl" -D "$d" stop -m immediate >/dev/null 2>&1
  done
  for p in "${pids[@]}"; do
    kill "$p" 2>/dev/null
  done
  for p in "${pids[@]}"; do
    wait "$p" 2>/dev/null
  done
  rm -rf "$work"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait for one child we started and forget its pid (so cleanup never signals a reused pid)
reap() {
  local pid=$1 rc=0 keep=() p
  wait "$pid" || rc=$?
  for p in "${pids[@]}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
  pids=("${keep[@]}")
  return $rc
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# ---------------------------------------------------------------- meridian binary (fail early)
meridian_ok=0
if [ "$skip_meridian" != 1 ] && [ -z "${MERIDIAN_JSON2:-}${MERIDIAN_JSON3:-}${MERIDIAN_JSON3_WAN:-}" ]; then
  if [ -z "${MERIDIAN_BIN:-}" ]; then
    say "building meridian (cargo build --release -p meridian)"
    (cd "$repo" && cargo build --release -p meridian) >&2 || die "cargo build --release -p meridian failed"
    MERIDIAN_BIN=${CARGO_TARGET_DIR:-$repo/target}/release/meridian
  fi
  [ -x "$MERIDIAN_BIN" ] || die "no meridian binary at $MERIDIAN_BIN"
  help=$("$MERIDIAN_BIN" bench --help 2>&1) || die "$MERIDIAN_BIN bench --help failed"
  for flag in --writes --mix --phases --lag-rate; do
    grep -q -- "$flag" <<<"$help" || die "$MERIDIAN_BIN bench has no $flag flag: this script needs the issue-7 bench flags (--writes, --mix, --phases, --lag-rate auto, JSON summary). Update/rebuild, or run with --skip-meridian for the anchors only."
  done
  # its lag phase as long as the anchors' fixed-rate phase, when it can be told
  mextra=()
  grep -q -- --lag-secs <<<"$help" && mextra=(--lag-secs "$FIXED_SECS")
  # the WAN row needs the wan phase (issue 11); an older binary runs the other rows only
  wan_ok=0
  grep -q -- --jitter-ms <<<"$help" && wan_ok=1
  meridian_ok=1
fi

# ---------------------------------------------------------------- packages
need=()
command -v redis-server >/dev/null && command -v redis-benchmark >/dev/null || need+=(redis-server redis-tools)
[ -x "$PGBIN/postgres" ] && [ -x "$PGBIN/pgbench" ] || need+=(postgresql-15 postgresql-client-15)
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >&2
fi
export PATH="$PGBIN:$PATH"

# ---------------------------------------------------------------- machine
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
fsync=$(py fsync-probe --dir "$work" --secs 1)
say "machine: $(nproc) cpus, $cpu; load average $load_before; fsync probe $fsync"

# redis-benchmark's SET, GET and SET -P RESP_PIPELINE, the same against Redis and Meridian (issue 14)
RESP_PIPELINE=${RESP_PIPELINE:-16}
rcommon=(--keys "$KEYS" --value-bytes "$VALUE_BYTES" --concurrency "$CONCURRENCY" --requests "$WRITES"
         --pipeline "$RESP_PIPELINE")

# ---------------------------------------------------------------- Meridian (first: its lag rate
# can set the anchors' fixed rate)
m2=${MERIDIAN_JSON2:-}; m3=${MERIDIAN_JSON3:-}; m3w=${MERIDIAN_JSON3_WAN:-}
meridian_cmds=""
if [ "$meridian_ok" = 1 ]; then
  for n in 2 3; do
    say "meridian bench --regions $n"
    mcmd=("$MERIDIAN_BIN" bench --regions "$n" --keys "$KEYS" --value-bytes "$VALUE_BYTES"
          --concurrency "$CONCURRENCY" --writes "$WRITES" --mix write-only --phases throughput,lag
          --lag-rate auto "${mextra[@]}" --out "$work/meridian-$n.json")
    meridian_cmds+="${mcmd[*]}"$'\n'
    "${mcmd[@]}" >"$work/meridian-$n.txt" 2>&1 &
    pids+=($!)
    if ! reap $!; then cat "$work/meridian-$n.txt" >&2; die "meridian bench --regions $n failed"; fi
  done
  m2=$work/meridian-2.json; m3=$work/meridian-3.json
  if [ "$wan_ok" = 1 ]; then
    say "meridian bench --regions 3 over ${WAN_LATENCY_MS} ms ± ${WAN_JITTER_MS} ms links"
    mcmd=("$MERIDIAN_BIN" bench --regions 3 --keys "$KEYS" --value-bytes "$VALUE_BYTES"
          --concurrency "$CONCURRENCY" --latency-ms "$WAN_LATENCY_MS" --jitter-ms "$WAN_JITTER_MS"
          --mix write-only --phases wan,lag --wan-secs "$WAN_SECS" --lag-rate auto "${mextra[@]}"
          --out "$work/meridian-3-wan.json")
    meridian_cmds+="${mcmd[*]}"$'\n'
    "${mcmd[@]}" >"$work/meridian-3-wan.txt" 2>&1 &
    pids+=($!)
    if ! reap $!; then cat "$work/meridian-3-wan.txt" >&2; die "meridian bench (wan) failed"; fi
    m3w=$work/meridian-3-wan.json
  else
    say "$MERIDIAN_BIN bench has no --jitter-ms: the meridian-3-wan row is skipped"
  fi
fi
if [ "$meridian_ok" = 1 ]; then
  say "redis-benchmark against one region of a 3-region meridian (RESP)"
  python3 "$here/resp.py" meridian --bin "$MERIDIAN_BIN" --work "$work/resp-meridian" "${rcommon[@]}" \
    --out "$work/resp-meridian.json" || die "the RESP benchmark of meridian failed (see $work/resp-meridian/simulate.log)"
fi
fixed_source="FIXED_RATE"
if [ "$FIXED_RATE" = auto ]; then
  # the rate of meridian-3's lag phase when its JSON tells it, else a default
  FIXED_RATE=$(python3 -c '
import json, sys
try:
    d = json.load(open(sys.argv[1]))
    s, l = d.get("summary") or {}, d.get("lag") or {}
    r = s.get("lag_rate_per_sec") or l.get("rate_per_sec") or (d.get("args") or {}).get("lag_rate")
    print(int(float(r)) if isinstance(r, (int, float)) and r > 0 else sys.argv[2])
except Exception:
    print(sys.argv[2])' "${m3:-/nonexistent}" "$fixed_default")
  if [ "$FIXED_RATE" = "$fixed_default" ]; then fixed_source="default (no meridian-3 lag rate)"; else fixed_source="meridian-3's lag rate"; fi
  say "anchors' fixed-rate lag load: $FIXED_RATE writes/s"
fi

# ---------------------------------------------------------------- Redis
common=(--keys "$KEYS" --value-bytes "$VALUE_BYTES" --concurrency "$CONCURRENCY" --writes "$WRITES"
        --rate "$FIXED_RATE" --secs "$FIXED_SECS")
redis_pair() { # $1 = everysec|always
  local mode=$1 pp rp d ppid rpid
  pp=$(free_port); rp=$(free_port)
  for role in primary replica; do
    d="$work/redis-$mode-$role"; mkdir -p "$d"
    local port=$pp extra=()
    [ $role = replica ] && { port=$rp; extra=(--replicaof 127.0.0.1 "$pp"); }
    redis-server --bind 127.0.0.1 --port "$port" --dir "$d" --save '' --appendonly yes \
      --appendfsync "$mode" --repl-diskless-sync-delay 0 --protected-mode no --daemonize no \
      --logfile "$d/redis.log" "${extra[@]}" &
    pids+=($!)
    if [ $role = primary ]; then ppid=$!; else rpid=$!; fi
    local i=0
    until redis-cli -p "$port" ping >/dev/null 2>&1; do
      i=$((i + 1)); [ $i -gt 100 ] && die "redis on $port did not start (see $d/redis.log)"; sleep 0.05
    done
  done
  py redis-wait --primary "$pp" --replica "$rp"
  py redis-run --primary "$pp" --replica "$rp" --label "redis-$mode" "${common[@]}" --out "$work/redis-$mode.json"
  python3 "$here/resp.py" redis --port "$pp" --replica "$rp" --label "redis-$mode" "${rcommon[@]}" --out "$work/resp-redis-$mode.json"
  redis-cli -p "$rp" shutdown nosave >/dev/null 2>&1 || true
  redis-cli -p "$pp" shutdown nosave >/dev/null 2>&1 || true
  reap "$rpid" || true
  reap "$ppid" || true
}
redis_pair everysec
redis_pair always

# ---------------------------------------------------------------- PostgreSQL logical replication
pg_cluster() { # $1 = name, $2 = port, $3.. = extra postgresql.conf lines
  local name=$1 port=$2 d="$work/pg-$1"; shift 2
  mkdir -p "$d"; chown postgres: "$d"
  runuser -u postgres -- "$PGBIN/initdb" -D "$d/data" -A trust -U postgres --no-sync >"$work/initdb-$name.log" 2>&1 \
    || die "initdb $name failed (see $work/initdb-$name.log)"
  {
    echo "port = $port"
    echo "listen_addresses = '127.0.0.1'"
    echo "unix_socket_directories = '$d'"
    echo "max_connections = $((CONCURRENCY + 40))"
    echo "synchronous_commit = on"
    echo "fsync = on"
    printf '%s\n' "$@"
  } >>"$d/data/postgresql.conf"
  pgdirs+=("$d/data")
  runuser -u postgres -- "$PGBIN/pg_ctl" -D "$d/data" -l "$d/server.log" -w -t 60 start >/dev/null \
    || die "postgres $name did not start (see $d/server.log)"
}
pub=$(free_port); sub=$(free_port)
pg_cluster publisher "$pub" "wal_level = logical" "max_wal_senders = 10" "max_replication_slots = 10"
pg_cluster subscriber "$sub" "max_logical_replication_workers = 4"
py pg-setup --pub "$pub" --sub "$sub"
py pg-run --pub "$pub" --sub "$sub" --workdir "$work" "${common[@]}" --out "$work/pg-logical.json"
for d in "${pgdirs[@]}"; do runuser -u postgres -- "$PGBIN/pg_ctl" -D "$d" stop -m fast >/dev/null 2>&1 || true; done

# ---------------------------------------------------------------- report
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
STAMP=$stamp CPU=$cpu LOAD_BEFORE=$load_before LOAD_AFTER=$load_after FSYNC=$fsync WORK=$work \
KEYS=$KEYS VALUE_BYTES=$VALUE_BYTES CONCURRENCY=$CONCURRENCY WRITES=$WRITES FIXED_RATE=$FIXED_RATE \
FIXED_SECS=$FIXED_SECS QUICK=$quick FIXED_SOURCE=$fixed_source MERIDIAN_CMDS=$meridian_cmds python3 - "$work/machine.json" <<'EOF'
import json, os, sys
e = os.environ
json.dump({
    "when_utc": e["STAMP"],
    "machine": {"nproc": os.cpu_count(), "cpu": e["CPU"], "load_before": e["LOAD_BEFORE"],
                "load_after": e["LOAD_AFTER"], "fsync_dir": e["WORK"], "fsync_probe": json.loads(e["FSYNC"])},
    "params": {k.lower(): int(e[k]) for k in ("KEYS", "VALUE_BYTES", "CONCURRENCY", "WRITES", "FIXED_RATE", "FIXED_SECS")}
              | {"quick": e["QUICK"] == "1", "fixed_rate_source": e["FIXED_SOURCE"]},
    "meridian_commands": [c for c in e["MERIDIAN_CMDS"].splitlines() if c],
}, open(sys.argv[1], "w"))
EOF
args=(--machine "$work/machine.json" --out "$out")
for s in redis-everysec redis-always pg-logical; do args+=(--part "$work/$s.json"); done
[ -n "$m2" ] && args+=(--meridian2 "$m2")
[ -n "$m3" ] && args+=(--meridian3 "$m3")
[ -n "$m3w" ] && args+=(--meridian3-wan "$m3w")
echo
py report "${args[@]}"
echo
rargs=(--pipeline "$RESP_PIPELINE" --into "$out")
for s in resp-redis-everysec resp-redis-always resp-meridian; do
  [ -f "$work/$s.json" ] && rargs+=(--part "$work/$s.json")
done
python3 "$here/resp.py" report "${rargs[@]}"
echo
say "results written to $out"
