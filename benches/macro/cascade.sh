#!/usr/bin/env bash
# 1 -> N through `kaskade loadtest`, on one bridge or across an Octo link (docs/benchmarks.md):
#   cargo build --release -p kaskade
#   benches/macro/cascade.sh 50 single     # publisher and subscribers on bridge 1
#   benches/macro/cascade.sh 50 cascade    # publisher on bridge 1, subscribers on bridge 2
# Bridges on CPU 0, the load generator on CPU 1. Prints the bridges' CPU seconds over the
# subscribers' window, the load tool's total line and, per bridge and input, the time inside the
# bridge in steady state (kaskade_forwarding_delay_seconds, and of it the wait before the read,
# kaskade_forwarding_wait_seconds, from /metrics scraped 3 s after the last join and 20 s later,
# through latency.py). B1_CPU=1 or B2_CPU=1 moves that bridge to the
# load generator's CPU, so that in a cascade the other bridge has CPU 0 to itself.
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
# -a: every thread (the shard thread already runs; without -a only the main thread moves).
taskset -a -p -c ${B1_CPU:-0} $P1 >/dev/null; [ -n "$P2" ] && taskset -a -p -c ${B2_CPU:-0} $P2 >/dev/null
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
ut() { awk '{print $14, $15}' /proc/$1/stat; }   # user, system ticks
SUBURL=http://127.0.0.1:7981; [ "$MODE" = cascade ] && SUBURL=http://127.0.0.1:7982
taskset -c 1 $BIN loadtest --url http://127.0.0.1:7981 --room bench --video-publishers 1 --audio-publishers 1 --subscribers 0 --duration 40s -q > $OUT/pub.out 2>&1 &
LP=$!
sleep 3
busy() { awk '/^cpu /{print $2+$3+$4+$7+$8}' /proc/stat; }   # whole machine, ticks
scrape() {
    curl -s http://127.0.0.1:7981/metrics > $OUT/m1.$1; cpu $P1 > $OUT/c1.$1
    if [ -n "$P2" ]; then curl -s http://127.0.0.1:7982/metrics > $OUT/m2.$1; cpu $P2 > $OUT/c2.$1; fi
    echo $(( $(cpu $LP) + $(cpu $SP) )) > $OUT/cl.$1; busy > $OUT/cm.$1
}
JOIN=$(( (N + 49) / 50 ))
C10=$(cpu $P1); C20=0; [ -n "$P2" ] && C20=$(cpu $P2); T0=$(date +%s.%N)
taskset -c 1 $BIN loadtest --url $SUBURL --room bench --video-publishers 0 --audio-publishers 0 --subscribers $N --join-rate 50 --duration 25s --json $OUT/sub.json -q > $OUT/sub.out 2>&1 &
SP=$!
( sleep $((JOIN + 3)); scrape before; ut $P1 > $OUT/u1.before; [ -n "$P2" ] && ut $P2 > $OUT/u2.before; sleep 20; scrape after; ut $P1 > $OUT/u1.after; [ -n "$P2" ] && ut $P2 > $OUT/u2.after ) & SCR=$!
wait $SP
C11=$(cpu $P1); C21=0; [ -n "$P2" ] && C21=$(cpu $P2); T1=$(date +%s.%N)
wait $SCR
awk -v m="$MODE" -v n="$N" -v a="$((C11-C10))" -v b="$((C21-C20))" -v t0="$T0" -v t1="$T1" \
    'BEGIN { printf "mode=%s N=%s node1_cpu_s=%.2f node2_cpu_s=%.2f wall_s=%.1f\n", m, n, a/100, b/100, t1-t0 }'
grep -E "^total|clients connected" $OUT/sub.out
d() { echo $(( ($(cat $OUT/$1.after) - $(cat $OUT/$1.before)) / 20 )); }   # % of one CPU
B2=0; [ -f $OUT/c2.after ] && B2=$(d c2)
for b in 1 2; do
    [ -f $OUT/u$b.after ] || continue
    echo "bridge $b over those 20 s: user $(( $(cut -d' ' -f1 $OUT/u$b.after) - $(cut -d' ' -f1 $OUT/u$b.before) )), system $(( $(cut -d' ' -f2 $OUT/u$b.after) - $(cut -d' ' -f2 $OUT/u$b.before) )) ticks of 10 ms"
done
echo "steady 20 s: bridges $(( $(d c1) + B2 ))%, load tools $(d cl)%, others $(( $(d cm) - $(d c1) - B2 - $(d cl) ))% of one CPU"
for b in 1 2; do
    [ -f $OUT/m$b.after ] || continue
    # CPU ticks are 1/100 s: ticks over 20 s / 20 = % of one CPU.
    echo "time inside bridge $b (CPU $(( ($(cat $OUT/c$b.after) - $(cat $OUT/c$b.before)) / 20 ))% of one CPU over those 20 s):"
    python3 "$HERE/latency.py" $OUT/m$b.before $OUT/m$b.after | sed 's/^/  total /'
    python3 "$HERE/latency.py" $OUT/m$b.before $OUT/m$b.after kaskade_forwarding_wait_seconds | sed 's/^/  wait  /'
done
echo "logs, JSON and /metrics scrapes in $OUT"
kill $LP $P1 $P2 2>/dev/null; wait 2>/dev/null
