#!/usr/bin/env bash
# Runs every test of the workspace, as CI does:
#
#   bash ops/test.sh
#
# Needs only a Rust toolchain: redis-server (which the tests start on their
# own free ports, never touching 6379) is installed from the distribution's
# packages if missing, and promtool (which checks the alert rules and lints
# the services' /metrics) is unpacked from Debian's prometheus package, and
# chromium (for the /dashboard test) is installed from Debian's. Last,
# the service files are checked (systemd-analyze verify, docker-compose
# config; both installed from Debian's packages when missing).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
. ops/lib.sh

ensure_redis_installed
ensure_promtool
ensure_chromium
ensure_runbook_tools

echo "==> promtool: alert rules and their unit tests"
"$PROMTOOL" check config ops/prometheus/prometheus.yml
"$PROMTOOL" check config ops/prometheus/prometheus-compose.yml
"$PROMTOOL" test rules ops/prometheus/alerts.test.yml

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -q -- -D warnings

echo "==> tests"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast
else
    cargo test --workspace --locked --no-fail-fast
fi

echo "==> service files: ops/install.sh, systemd-analyze verify, docker-compose config"
check_service_files
