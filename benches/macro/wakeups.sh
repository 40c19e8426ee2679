#!/usr/bin/env bash
# Wake-ups and CPU of an origin bridge (docs/benchmarks.md, "Macro runs"): bridge 1 idle for
# 5 s under `strace -c`, then one 720p publisher on bridge 1 and 50 subscribers on bridge 2;
# bridge 1's CPU over 20 s, then 5 s of `strace -c` with the source flowing.
#   benches/macro/wakeups.sh [kaskade binary]     # default target/release/kaskade
# Needs strace. Run under `flock /tmp/kaskade-bench.lock` when others share the machine.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
B=${1:-$HERE/../../target/release/kaskade}
OUT=$(mktemp -d)
cd "$HERE"
$B serve --config b1.toml > $OUT/n1.log 2>&1 & P1=$!
$B serve --config b2.toml > $OUT/n2.log 2>&1 & P2=$!
sleep 2
taskset -a -p -c 0 $P1 >/dev/null; taskset -a -p -c 0 $P2 >/dev/null
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
# idle: 5 s of the origin with nobody connected
timeout 5 strace -c -f -p $P1 -o $OUT/idle.txt 2>/dev/null
taskset -c 1 $B loadtest --url http://127.0.0.1:7981 --room bench --video-publishers 1 --audio-publishers 1 --subscribers 0 --duration 40s -q > $OUT/pub.out 2>&1 & LP=$!
sleep 2
taskset -c 1 $B loadtest --url http://127.0.0.1:7982 --room bench --video-publishers 0 --audio-publishers 0 --subscribers 50 --join-rate 50 --duration 30s -q > $OUT/sub.out 2>&1 & SP=$!
sleep 5
C0=$(cpu $P1)
sleep 20
C1=$(cpu $P1)
timeout 5 strace -c -f -p $P1 -o $OUT/busy.txt 2>/dev/null
echo "origin CPU over 20 s: $(( C1 - C0 )) ticks (1/100 s)"
echo "idle 5 s:"; grep -E "epoll_wait|total" $OUT/idle.txt
echo "with one source, 5 s:"; grep -E "epoll_wait|recvmsg|sendto|total" $OUT/busy.txt
wait $SP; grep -E "^total" $OUT/sub.out
kill $LP $P1 $P2 2>/dev/null; wait 2>/dev/null
