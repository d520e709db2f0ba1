#!/usr/bin/env bash
# Runs the whole pipeline on this machine: Redis (started here with AOF when
# none answers), postback-ingest and one postback-deliver worker.
#
#   bash ops/run-local.sh
#
# Needs only a Rust toolchain: redis-server is installed from the
# distribution's packages if missing. Ctrl-C stops both services cleanly
# (the Redis started here keeps running, with its data under .data/redis).
# Settings come from the usual POSTBACK_* variables (see README.md).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
. ops/lib.sh

export POSTBACK_REDIS_URL=${POSTBACK_REDIS_URL:-redis://127.0.0.1:6379}
export POSTBACK_INGEST_ADDR=${POSTBACK_INGEST_ADDR:-127.0.0.1:8080}
export POSTBACK_DELIVER_ADDR=${POSTBACK_DELIVER_ADDR:-127.0.0.1:8081}
export RUST_LOG=${RUST_LOG:-info}

# host and port out of redis://[user:pass@]host:port[/db]
hostport=${POSTBACK_REDIS_URL#*://}
hostport=${hostport##*@}
hostport=${hostport%%/*}
redis_host=${hostport%:*}
redis_port=${hostport##*:}
[ "$redis_port" = "$hostport" ] && redis_port=6379

data="$root/.data"
mkdir -p "$data/redis" "$data/logs"

if redis_answers "$redis_host" "$redis_port"; then
    echo "==> using the Redis already answering at $redis_host:$redis_port"
else
    case "$redis_host" in
        127.*|localhost) ;;
        *) echo "error: Redis at $redis_host:$redis_port does not answer (POSTBACK_REDIS_URL)" >&2; exit 1 ;;
    esac
    ensure_redis_installed
    echo "==> starting redis-server on $redis_host:$redis_port with AOF under $data/redis"
    redis-server "$root/ops/redis.conf" --bind "$redis_host" --port "$redis_port" \
        --dir "$data/redis" --daemonize yes --pidfile "$data/redis/redis.pid" --logfile "$data/logs/redis.log"
    for _ in $(seq 50); do redis_answers "$redis_host" "$redis_port" && break; sleep 0.1; done
    redis_answers "$redis_host" "$redis_port" || { echo "error: redis-server did not start; see $data/logs/redis.log" >&2; exit 1; }
fi

echo "==> building (release)"
cargo build --release --locked -q -p postback-ingest -p postback-deliver -p postback-ctl

pids=()
stop() {
    echo
    echo "==> stopping"
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait "${pids[@]}" 2>/dev/null || true
}
trap stop INT TERM

target/release/postback-ingest >>"$data/logs/ingest.log" 2>&1 & pids+=($!)
target/release/postback-deliver >>"$data/logs/deliver.log" 2>&1 & pids+=($!)

for _ in $(seq 100); do
    curl -fs "http://$POSTBACK_INGEST_ADDR/readyz" >/dev/null 2>&1 && break
    sleep 0.1
done

cat <<MSG
==> running
    ingest   http://$POSTBACK_INGEST_ADDR   (log: .data/logs/ingest.log)
    deliver  http://$POSTBACK_DELIVER_ADDR/readyz   (log: .data/logs/deliver.log, one JSON line per attempt)

Send the sample request from the specification:

    curl -i -X POST http://$POSTBACK_INGEST_ADDR/ingest.php --data @schemas/examples/seed-request.json

then watch the delivery attempt, and the queue:

    tail -f .data/logs/deliver.log
    target/release/postbackctl status

Ctrl-C stops both services.
MSG
wait "${pids[@]}"
