#!/usr/bin/env bash
# Rooms of 1 -> N on one node with S media shards (docs/benchmarks.md, "Shards"):
#   cargo build --release -p kaskade
#   benches/macro/shards.sh ROOMS N SHARDS
# One 720p publisher (audio + video) per room, N receivers per room, `kaskade loadtest`.
# NODE_CPUS (default 0) and LOAD_CPUS (default 1) pin the node's threads and the load tools;
# SPREAD_AT (default 100, the product's) is media.spread_at: a room of more participants than
# that spans several shards (0: never).
# Over a 20 s window in steady state it prints the node's CPU, each shard thread's CPU, the
# copies forwarded per second and per node CPU-second, the datagrams handed between shards, the
# time inside the bridge (kaskade_forwarding_delay_seconds through latency.py) and the load
# tool's total line (loss, latency).
set -u
ROOMS=$1; N=$2; S=$3
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=${KASKADE_BIN:-$HERE/../../target/release/kaskade}
NODE_CPUS=${NODE_CPUS:-0}; LOAD_CPUS=${LOAD_CPUS:-1}; SPREAD_AT=${SPREAD_AT:-100}
OUT=$(mktemp -d)
ulimit -n 16384
URL=http://127.0.0.1:7985
$BIN serve --dev --http-port 7985 --media-port 10985 --shards "$S" --max-participants 1000 \
    --spread-at "$SPREAD_AT" \
    > "$OUT/node.log" 2>&1 & P=$!
sleep 2
taskset -a -p -c "$NODE_CPUS" $P > /dev/null
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
# Per shard thread: "name ticks" lines.
threads() {
    for t in /proc/$P/task/*; do
        name=$(cat "$t/comm" 2>/dev/null) || continue
        case "$name" in kaskade-shard-*) echo "$name $(awk '{print $14+$15}' "$t/stat")";; esac
    done | sort
}
taskset -c "$LOAD_CPUS" $BIN loadtest --url $URL --room sb --rooms "$ROOMS" --video-publishers 1 \
    --audio-publishers 1 --subscribers 0 --duration 45s -q > "$OUT/pub.out" 2>&1 &
LP=$!
sleep 3
JOIN=$(( (ROOMS * N + 49) / 50 ))
taskset -c "$LOAD_CPUS" $BIN loadtest --url $URL --room sb --rooms "$ROOMS" --video-publishers 0 \
    --audio-publishers 0 --subscribers "$N" --join-rate 50 --duration 28s --json "$OUT/sub.json" -q \
    > "$OUT/sub.out" 2>&1 &
SP=$!
sleep $((JOIN + 3))
curl -s $URL/metrics > "$OUT/m.before"; cpu $P > "$OUT/c.before"; threads > "$OUT/t.before"
echo $(( $(cpu $LP) + $(cpu $SP) )) > "$OUT/l.before"
sleep 20
curl -s $URL/metrics > "$OUT/m.after"; cpu $P > "$OUT/c.after"; threads > "$OUT/t.after"
echo $(( $(cpu $LP) + $(cpu $SP) )) > "$OUT/l.after"
wait $SP
metric() { awk -v m="$1" '$1 == m {print $2}' "$2"; }
fwd=$(( $(metric kaskade_rtp_forwarded_total "$OUT/m.after") - $(metric kaskade_rtp_forwarded_total "$OUT/m.before") ))
hand=$(( $(metric kaskade_shard_handoffs_in_total "$OUT/m.after") - $(metric kaskade_shard_handoffs_in_total "$OUT/m.before") ))
node=$(( $(cat "$OUT/c.after") - $(cat "$OUT/c.before") ))
load=$(( $(cat "$OUT/l.after") - $(cat "$OUT/l.before") ))
echo "rooms=$ROOMS N=$N shards=$S spread_at=$SPREAD_AT node_cpus=$NODE_CPUS load_cpus=$LOAD_CPUS"
grep '^kaskade_shard_participants' "$OUT/m.after" | tr '\n' ' '; echo
awk -v f="$fwd" -v h="$hand" -v c="$node" -v l="$load" 'BEGIN {
    printf "copies/s %.0f, node CPU %.0f%% of one core, copies per node CPU-s %.0f, hand-offs/s %.0f, load tools CPU %.0f%%\n",
        f / 20, c / 20, (c > 0 ? f / (c / 100) : 0), h / 20, l / 20 }'
join "$OUT/t.before" "$OUT/t.after" | awk '{ printf "  %s: %.0f%% of one core\n", $1, ($3 - $2) / 20 }'
grep -E "^total|clients connected" "$OUT/sub.out"
echo "time inside the bridge:"
python3 "$HERE/latency.py" "$OUT/m.before" "$OUT/m.after" | sed 's/^/  /'
echo "logs, JSON and /metrics scrapes in $OUT"
kill $LP $P 2>/dev/null; wait 2>/dev/null
