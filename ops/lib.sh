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
