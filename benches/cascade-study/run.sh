#!/usr/bin/env bash
# The cascade study in one command, from a clean checkout (docs/cascade-study.md):
#   benches/cascade-study/run.sh [study.py options]      e.g. --reps 3 --duration 20 --chromium
# Builds the release `kaskade` and `kaskade-netsim` (into $CARGO_TARGET_DIR or target/), makes
# the .venv of tests/run.sh when missing (with tests/e2e/requirements.txt, for selenium; study.py
# adds the plot's pins of requirements.txt), and runs study.py under nice, as the machine's
# other work should not wait for a benchmark (docs/cascade-study.md says what that costs).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
cd "$ROOT"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
cargo build --release -p kaskade -p kaskade-netsim
VENV="$ROOT/.venv"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"  # Debian: needs python3-venv (tests/run.sh installs it)
fi
# The same stamp as tests/run.sh: the pins are installed once per change of the file.
REQ="$ROOT/tests/e2e/requirements.txt"
STAMP="$VENV/.requirements.sha256"
WANT="$(sha256sum "$REQ" | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    "$VENV/bin/pip" install --no-input --disable-pip-version-check -q -r "$REQ"
    echo "$WANT" > "$STAMP"
fi
exec nice -n 10 "$VENV/bin/python" "$HERE/study.py" --kaskade "$TARGET/release/kaskade" "$@"
