#!/usr/bin/env bash
# Starts Janus 1.1 (Debian package `janus`) in the foreground for the kaskade benchmarks:
# VideoRoom plugin and HTTP transport only, ICE on 127.0.0.1 only, private configuration in a
# work directory. Builds the loopback shim (noloopback.c, gcc) first. The last step is an
# `exec`, so the PID of this script becomes the PID of Janus (through taskset when pinned).
#
#   benches/janus/run-janus.sh --http-port 8088 [--rtp-ports 20000-29999] [--cpus 0]
#       [--work-dir DIR] [--debug-level 3] [--event-loops N]
#
# The Janus API is then at http://127.0.0.1:<http-port>/janus. Needs: janus, gcc, taskset
# (only with --cpus). Exits 3 when janus is not installed (`apt-get install -y janus`).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
http_port=8088
rtp_ports=20000-29999
cpus=""
work_dir=""
debug_level=3
event_loops=""

while [ $# -gt 0 ]; do
	case "$1" in
	--http-port) http_port="$2"; shift 2 ;;
	--rtp-ports) rtp_ports="$2"; shift 2 ;;
	--cpus) cpus="$2"; shift 2 ;;
	--work-dir) work_dir="$2"; shift 2 ;;
	--debug-level) debug_level="$2"; shift 2 ;;
	--event-loops) event_loops="$2"; shift 2 ;;
	-h | --help) sed -n '2,12p' "$0"; exit 0 ;;
	*) echo "run-janus.sh: unknown argument $1" >&2; exit 2 ;;
	esac
done

janus_bin="$(command -v janus || true)"
if [ -z "$janus_bin" ]; then
	echo "run-janus.sh: janus is not installed (apt-get install -y janus)" >&2
	exit 3
fi
# Debian installs the plugins under the multiarch library directory.
janus_lib=""
for d in /usr/lib/*/janus /usr/lib/janus /usr/local/lib/janus /opt/janus/lib/janus; do
	if [ -d "$d/plugins" ]; then janus_lib="$d"; break; fi
done
if [ -z "$janus_lib" ]; then
	echo "run-janus.sh: no Janus plugins folder found" >&2
	exit 3
fi

if [ -z "$work_dir" ]; then
	work_dir="${TMPDIR:-/tmp}/kaskade-janus-$http_port"
fi
conf="$work_dir/conf"
mkdir -p "$conf"

shim="$work_dir/noloopback.so"
if [ ! -f "$shim" ] || [ "$here/noloopback.c" -nt "$shim" ]; then
	gcc -shared -fPIC -O2 -Wall -Wextra -o "$shim" "$here/noloopback.c" -ldl
fi

if [ -n "$event_loops" ]; then
	loops_line="event_loops = $event_loops"
else
	loops_line="# event_loops: Janus's default, one loop (thread) per handle"
fi
for t in janus.jcfg janus.transport.http.jcfg janus.plugin.videoroom.jcfg; do
	sed -e "s|@CONFIGS_DIR@|$conf|g" \
		-e "s|@JANUS_LIB@|$janus_lib|g" \
		-e "s|@DEBUG_LEVEL@|$debug_level|g" \
		-e "s|@RTP_PORT_RANGE@|$rtp_ports|g" \
		-e "s|@HTTP_PORT@|$http_port|g" \
		-e "s|@EVENT_LOOPS@|$loops_line|g" \
		"$here/$t.in" >"$conf/$t"
done

cmd=(env LD_PRELOAD="$shim" "$janus_bin" --config="$conf/janus.jcfg" --configs-folder="$conf"
	--disable-colors --debug-timestamps)
if [ -n "$cpus" ]; then
	exec taskset -c "$cpus" "${cmd[@]}"
fi
exec "${cmd[@]}"
