#!/usr/bin/env bash
# Hot-key read latency (issue 11, item 3): one region, N HTTP writers on one key, one reader.
#
#   bench/hot_key_reads.sh                      # builds and measures this checkout
#   MERIDIAN=/path/to/other/meridian bench/hot_key_reads.sh   # another build, same client
#
# Env: WRITERS (16), SECONDS_PER_RUN (10). Prints one line per run from the example client.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p meridian --bin meridian --example hot_key_reads
MERIDIAN=${MERIDIAN:-target/release/meridian}
CLIENT=target/release/examples/hot_key_reads
dir=$(mktemp -d)
trap 'kill "${pid:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
api=$(port); peer=$(port)
cat > "$dir/regions.toml" <<TOML
cluster = "hot-key"
tls_dir = "certs"
[tables]
default = "lww"
[[region]]
name = "solo"
peer_addr = "127.0.0.1:$peer"
api_addr = "127.0.0.1:$api"
data_dir = "data/solo"
TOML
"$MERIDIAN" certs init --config "$dir/regions.toml" >/dev/null
MERIDIAN_LOG=warn "$MERIDIAN" run --config "$dir/regions.toml" --region solo >"$dir/solo.log" 2>&1 &
pid=$!
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$api/healthz" >/dev/null && break
  sleep 0.1
done
"$CLIENT" --target "http://127.0.0.1:$api" --writers "${WRITERS:-16}" --seconds "${SECONDS_PER_RUN:-10}"
