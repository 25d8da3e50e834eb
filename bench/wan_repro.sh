#!/bin/bash
# bench/wan_repro.sh — the load of issue 11 item 1 (relay storm), for before/after comparisons.
#
# Usage: bench/wan_repro.sh REGION_BIN LOAD_BIN OUT_DIR SECS BASEPORT [LAT_A LAT_B LAT_C JITTER]
#
# Starts three regions with REGION_BIN (`run --simulate-links`, any build), links
# us-east<->eu-west LAT_A, eu-west<->ap-south LAT_B, us-east<->ap-south LAT_C ms one way (default
# 4, 12, 20), each with JITTER ms (default 2); runs 18 closed-loop clients (6 per region) over
# 2,000 keys per region for SECS s with LOAD_BIN (a build with `bench --phases wan`, against the
# regions with --target); OUT_DIR is emptied first; polls every region's /v1/status at 5, 10, 20, 30, 40, 60, 90... s into
# OUT_DIR/snaps.txt (client writes, writes relayed, resyncs, send-queue pauses, lag per peer).
# Ports BASEPORT+1..3 (QUIC) and BASEPORT+11..13 (API) must be free. LOGLEVEL sets MERIDIAN_LOG
# of the regions (default warn). Needs curl and jq. The load generator waits up to 60 s for the
# regions to converge after the load, then is stopped. See docs/benchmarks.md.
set -u
BIN=$1; LOAD=$2; OUT=$3; SECS=$4; BASE=$5
LA=${6:-4}; LB=${7:-12}; LC=${8:-20}; J=${9:-2}
rm -rf "$OUT"; mkdir -p "$OUT"; cd "$OUT"
cat > regions.toml <<T
cluster = "repro"
tls_dir = "certs"
[tables]
default = "lww"
[[region]]
name = "us-east"
peer_addr = "127.0.0.1:$((BASE+1))"
api_addr = "127.0.0.1:$((BASE+11))"
data_dir = "data/us-east"
[[region]]
name = "eu-west"
peer_addr = "127.0.0.1:$((BASE+2))"
api_addr = "127.0.0.1:$((BASE+12))"
data_dir = "data/eu-west"
[[region]]
name = "ap-south"
peer_addr = "127.0.0.1:$((BASE+3))"
api_addr = "127.0.0.1:$((BASE+13))"
data_dir = "data/ap-south"
[[simulation.link]]
from = "us-east"
to = "eu-west"
latency_ms = $LA
jitter_ms = $J
[[simulation.link]]
from = "eu-west"
to = "ap-south"
latency_ms = $LB
jitter_ms = $J
[[simulation.link]]
from = "us-east"
to = "ap-south"
latency_ms = $LC
jitter_ms = $J
T
"$BIN" certs init --config regions.toml >/dev/null 2>&1 || { echo "certs failed"; exit 1; }
PIDS=(); FDS=()
for r in us-east eu-west ap-south; do
  mkfifo "stdin-$r"
  MERIDIAN_LOG=${LOGLEVEL:-warn} "$BIN" run --config regions.toml --region $r --simulate-links --exit-with-stdin < "stdin-$r" > "$r.log" 2>&1 &
  PIDS+=($!)
  exec {fd}> "stdin-$r"; FDS+=($fd)
done
API1=http://127.0.0.1:$((BASE+11)); API2=http://127.0.0.1:$((BASE+12)); API3=http://127.0.0.1:$((BASE+13))
for i in $(seq 1 300); do
  ok=1; for a in $API1 $API2 $API3; do
    n=$(curl -s $a/v1/status | jq '[.peers[] | select(.replicating==true)] | length' 2>/dev/null); [ "$n" = "2" ] || ok=0; done
  [ $ok = 1 ] && break; sleep 0.1; done
snap() { # t
  local t=$1
  local line="t=$t"
  for a in $API1 $API2 $API3; do
    line="$line $(curl -s -m 5 $a/v1/status | jq -r '"\(.region): cw=\(.counters.client_writes) relayed=\(.counters.writes_relayed) resyncs=\(.counters.resyncs) sqf=\(.counters.send_queue_full // "-") lagw=\([.peers[] | "\(.region):\(.lag_writes)"] | join(","))"')"
  done
  echo "$line" >> snaps.txt
}
( start=$(date +%s.%N); for t in 5 10 20 30 40 60 90 120 180 240 300; do
    [ $t -gt $SECS ] && break
    now=$(date +%s.%N); sl=$(echo "$start + $t - $now" | bc); [ "${sl:0:1}" != "-" ] && sleep $sl
    snap $t; done ) &
SNAPPER=$!
"$LOAD" bench --target $API1 --target $API2 --target $API3 --phases wan --wan-secs $SECS --concurrency 18 --keys 2000 --out wan.json > bench.out 2> bench.err &
BENCH=$!
wait $SNAPPER
# the bench waits for the drain; give it 60 s, then stop it (a storm never drains)
for i in $(seq 1 60); do kill -0 $BENCH 2>/dev/null || break; sleep 1; done
if kill -0 $BENCH 2>/dev/null; then kill $BENCH; echo "bench stopped: no drain within 60 s" >> bench.err; fi
wait $BENCH; echo "bench exit $?" >> bench.err
for a in $API1 $API2 $API3; do curl -s $a/v1/admin/links | jq -c '{dropped_queue_full}' >> links.txt; curl -s $a/v1/status | jq -c '{region, peers: [.peers[] | {region, quic}]}' >> quic.txt; done
for fd in "${FDS[@]}"; do eval "exec $fd>&-"; done
sleep 2
for p in "${PIDS[@]}"; do kill $p 2>/dev/null; done
wait 2>/dev/null
cat snaps.txt
