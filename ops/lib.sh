# Shell helpers shared by ops/run-local.sh and ops/test.sh. Sourced, not run.

# Runs a command as root: directly when we are root, else through sudo.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "error: need root (or sudo) to run: $*" >&2
        return 1
    fi
}

# Makes sure redis-server and redis-cli are installed, from the
# distribution's packages when they are missing.
ensure_redis_installed() {
    if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; then
        return 0
    fi
    echo "==> redis-server not found; installing it from the distribution's packages"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    command -v redis-server >/dev/null 2>&1 || { echo "error: redis-server still missing after apt-get install" >&2; return 1; }
}

# True when something at HOST:PORT answers PING with PONG (no redis-cli needed).
redis_answers() {
    local host=$1 port=$2 reply
    { exec 3<>"/dev/tcp/$host/$port"; } 2>/dev/null || return 1
    printf 'PING\r\n' >&3
    IFS= read -r -t 2 reply <&3 || reply=
    exec 3<&- 3>&-
    [ "${reply%$'\r'}" = "+PONG" ]
}

# Sets PROMTOOL to a promtool binary: one on PATH, or the one in Debian's
# `prometheus` package, downloaded and unpacked (not installed: no service
# is started) under .data/promtool. Needs the repository root as $root.
ensure_promtool() {
    if command -v promtool >/dev/null 2>&1; then
        PROMTOOL=$(command -v promtool)
    else
        local dir="$root/.data/promtool"
        PROMTOOL="$dir/usr/bin/promtool"
        if [ ! -x "$PROMTOOL" ]; then
            echo "==> promtool not found; unpacking it from Debian's prometheus package into .data/promtool"
            mkdir -p "$dir"
            if ! (cd "$dir" && apt-get download -q prometheus >/dev/null 2>&1); then
                as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
                (cd "$dir" && apt-get download -q prometheus >/dev/null)
            fi
            dpkg-deb -x "$dir"/prometheus_*.deb "$dir"
            rm -f "$dir"/prometheus_*.deb
            [ -x "$PROMTOOL" ] || { echo "error: no promtool in Debian's prometheus package" >&2; return 1; }
        fi
    fi
    export PROMTOOL
}
