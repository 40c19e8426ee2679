#!/usr/bin/env bash
# RSS per participant of a meeting (docs/benchmarks.md, the meeting section): 10 rooms of 6,
# everyone publishing 360p and receiving the 5 others, for 30 s.
#   cargo build --release -p kaskade
#   benches/macro/meeting_rss.sh [SHARDS]       # default 1
# The node on CPU 0, the load tool on CPU 1; VmRSS sampled every second. Prints the idle RSS,
# the highest RSS and (highest - idle) / 60.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=${KASKADE_BIN:-$HERE/../../target/release/kaskade}
S=${1:-1}
OUT=$(mktemp -d)
$BIN serve --dev --http-port 7990 --media-port 10990 --max-participants 100 --shards "$S" \
    > "$OUT/node.log" 2>&1 & P=$!
sleep 2
taskset -a -p -c 0 $P > /dev/null
rss() { awk '/VmRSS/{print $2}' /proc/$P/status 2>/dev/null; }
IDLE=$(rss)
echo 0 > "$OUT/max"
( while kill -0 $P 2>/dev/null; do
      R=$(rss); [ -n "$R" ] && [ "$R" -gt "$(cat "$OUT/max")" ] && echo "$R" > "$OUT/max"
      sleep 1
  done ) &
taskset -c 1 $BIN loadtest --url http://127.0.0.1:7990 --rooms 10 --video-publishers 6 \
    --audio-publishers 6 --subscribers 0 --resolution 360p --join-rate 20 --duration 30s -q \
    2>&1 | grep -E "clients connected"
MAX=$(cat "$OUT/max")
kill $P; wait 2>/dev/null
echo "idle $IDLE KiB, max $MAX KiB, per participant $(( (MAX - IDLE) / 60 )) KiB"
