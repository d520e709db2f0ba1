#!/usr/bin/env bash
# Where the pipeline's CPU goes under load: runs `postback-bench run` (one
# item per request, 32 in flight) and, during its first phase (our
# pipeline), samples ingest, deliver and the bench's redis-server with perf
# for SECONDS; then prints each one's top functions by their own samples.
#
#   bash ops/profile.sh [BIN_DIR] [SECONDS]     # BIN_DIR: target/release
#
# Needs perf (Debian's linux-perf) and a release build
# (cargo build --release --workspace). The perf data stays in the printed
# directory for `perf report -i`.
set -euo pipefail

bin=$(cd "${1:-target/release}" && pwd)
seconds=${2:-8}
command -v perf >/dev/null || { echo "profile.sh: perf is missing (apt-get install linux-perf)" >&2; exit 2; }
for name in postback-bench postback-ingest postback-deliver; do
    [[ -x $bin/$name ]] || { echo "profile.sh: $bin/$name is missing (cargo build --release --workspace)" >&2; exit 2; }
done
out=$(mktemp -d)
"$bin/postback-bench" run --duration $((seconds + 10))s --no-ceilings >"$out/run.txt" 2>&1 &
bench=$!
trap 'kill $bench 2>/dev/null || true' EXIT
sleep 4

# The newest of each: the bench's own, started just now.
pids=(
    "ingest:$(pgrep -n -f "^$bin/postback-ingest")"
    "deliver:$(pgrep -n -f "^$bin/postback-deliver")"
    "redis:$(pgrep -n redis-server)"
)
perfs=()
for named in "${pids[@]}"; do
    perf record -q -F 499 -p "${named#*:}" -o "$out/${named%%:*}.data" -- sleep "$seconds" 2>/dev/null &
    perfs+=($!)
done
wait "${perfs[@]}"
for named in "${pids[@]}"; do
    name=${named%%:*}
    echo "==> $name: top functions by own samples"
    perf report -q -i "$out/$name.data" --no-children --sort symbol --stdio 2>/dev/null \
        | sed -e 's/ *- *- *$//' -e 's/ \{2,\}/  /g' | grep -v '^$' | head -12 || true
done
wait $bench || true
trap - EXIT
echo "(perf data and the run's report: $out)"
