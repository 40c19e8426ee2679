#!/usr/bin/env bash
# 1 -> N through `kaskade loadtest`, on one bridge or across an Octo link (docs/benchmarks.md):
#   cargo build --release -p kaskade
#   benches/macro/cascade.sh 50 single     # publisher and subscribers on bridge 1
#   benches/macro/cascade.sh 50 cascade    # publisher on bridge 1, subscribers on bridge 2
# Bridges on CPU 0, the load generator on CPU 1. Prints the bridges' CPU seconds over the
# subscribers' window and the load tool's total line.
set -u
N=$1; MODE=$2
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=${KASKADE_BIN:-$HERE/../../target/release/kaskade}
cd "$HERE"
P2=""
OUT=$(mktemp -d)
ulimit -n 16384
$BIN serve --config b1.toml > $OUT/node1.log 2>&1 & P1=$!
if [ "$MODE" = cascade ]; then $BIN serve --config b2.toml > $OUT/node2.log 2>&1 & P2=$!; fi
sleep 2
taskset -p -c 0 $P1 >/dev/null; [ -n "$P2" ] && taskset -p -c 0 $P2 >/dev/null
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
SUBURL=http://127.0.0.1:7981; [ "$MODE" = cascade ] && SUBURL=http://127.0.0.1:7982
taskset -c 1 $BIN loadtest --url http://127.0.0.1:7981 --room bench --video-publishers 1 --audio-publishers 1 --subscribers 0 --duration 40s -q > $OUT/pub.out 2>&1 &
LP=$!
sleep 3
C10=$(cpu $P1); C20=0; [ -n "$P2" ] && C20=$(cpu $P2); T0=$(date +%s.%N)
taskset -c 1 $BIN loadtest --url $SUBURL --room bench --video-publishers 0 --audio-publishers 0 --subscribers $N --join-rate 50 --duration 25s --json $OUT/sub.json -q > $OUT/sub.out 2>&1
C11=$(cpu $P1); C21=0; [ -n "$P2" ] && C21=$(cpu $P2); T1=$(date +%s.%N)
awk -v m="$MODE" -v n="$N" -v a="$((C11-C10))" -v b="$((C21-C20))" -v t0="$T0" -v t1="$T1" \
    'BEGIN { printf "mode=%s N=%s node1_cpu_s=%.2f node2_cpu_s=%.2f wall_s=%.1f\n", m, n, a/100, b/100, t1-t0 }'
grep -E "^total|clients connected" $OUT/sub.out; echo "logs and JSON in $OUT"
kill $LP $P1 $P2 2>/dev/null; wait 2>/dev/null
