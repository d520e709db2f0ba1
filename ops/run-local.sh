#!/usr/bin/env bash
# Runs the whole pipeline on this machine: Redis (started here with AOF when
# none answers), postback-ingest, one postback-deliver worker and a demo
# partner that prints what it receives, then sends one postback to it.
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
# A stable name: a restarted worker takes back what it held.
export POSTBACK_CONSUMER=${POSTBACK_CONSUMER:-local-1}
# The demo partner gets a loopback address of its own (see its --help).
partner=${POSTBACK_DEMO_PARTNER_ADDR:-127.0.0.2:9090}
first='{"endpoint":{"method":"POST","url":"http://'"$partner"'/postback?title={mascot}"},"data":[{"mascot":"Gopher","location":"https://blog.golang.org/gopher/gopher.png"}]}'

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

echo "==> building (release; the first build takes a few minutes)"
cargo build --release --locked -p postback-ingest -p postback-deliver -p postback-ctl -p postback-demo-partner

pids=()
stop() {
    echo
    echo "==> stopping"
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait "${pids[@]}" 2>/dev/null || true
}
trap stop INT TERM

# Fails the start: says which service, shows the end of its log, stops the
# others.
give_up() {
    echo "error: $1 is not running and ready; the end of $2:" >&2
    tail -n 20 "$2" >&2 || true
    stop
    exit 1
}

# The demo partner prints every request it receives here, in this terminal.
target/release/postback-demo-partner --addr "$partner" & pids+=($!)
target/release/postback-ingest >>"$data/logs/ingest.log" 2>&1 & pids+=($!)
ingest_pid=$!
POSTBACK_TARGET_ALLOW=${POSTBACK_TARGET_ALLOW:-${partner%:*}} \
    target/release/postback-deliver >>"$data/logs/deliver.log" 2>&1 & pids+=($!)
deliver_pid=$!

for service in ingest deliver; do
    if [ "$service" = ingest ]; then addr=$POSTBACK_INGEST_ADDR pid=$ingest_pid; else addr=$POSTBACK_DELIVER_ADDR pid=$deliver_pid; fi
    ready=
    for _ in $(seq 150); do
        kill -0 "$pid" 2>/dev/null || break
        [ "$(http_status GET "$addr" /readyz)" = 200 ] && { ready=1; break; }
        sleep 0.2
    done
    [ -n "$ready" ] || give_up "postback-$service" "$data/logs/$service.log"
done

cat <<MSG
==> running
    ingest        http://$POSTBACK_INGEST_ADDR   (log: .data/logs/ingest.log)
    deliver       http://$POSTBACK_DELIVER_ADDR/readyz   (log: .data/logs/deliver.log, one JSON line per attempt)
    demo partner  http://$partner   (prints what it receives below; the SSRF guard lets exactly ${partner%:*} through)
    postbackctl   $root/target/release/postbackctl   (or: export PATH="$root/target/release:\$PATH")

==> sending a first postback to the demo partner:
    curl -i -X POST http://$POSTBACK_INGEST_ADDR/v1/postbacks \\
      --data '$first'
MSG
echo "    -> HTTP $(http_status POST "$POSTBACK_INGEST_ADDR" /v1/postbacks "$first")"
cat <<MSG

The specification's own sample targets sample_domain_endpoint.com, which
does not exist: deliver retries it (25 attempts, 12 to 24 hours with the
defaults) and then dead-letters it. Follow it with

    curl -s -X POST http://$POSTBACK_INGEST_ADDR/ingest.php --data @schemas/examples/seed-request.json
    target/release/postbackctl attempts ID      # ID from the 202's "ids"
    target/release/postbackctl dead list

Ctrl-C stops everything.
MSG
wait "${pids[@]}"
