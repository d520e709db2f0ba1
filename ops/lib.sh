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

# Sends one HTTP/1.0 request (no curl needed) and prints the response's
# status code; BODY, when given, is sent as application/json.
#   http_status GET 127.0.0.1:8080 /readyz
#   http_status POST 127.0.0.1:8080 /v1/postbacks '{"endpoint":…}'
http_status() {
    local method=$1 hostport=$2 path=$3 body=${4-} line LC_ALL=C
    { exec 3<>"/dev/tcp/${hostport%:*}/${hostport##*:}"; } 2>/dev/null || { echo 000; return 1; }
    printf '%s %s HTTP/1.0\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s' \
        "$method" "$path" "$hostport" "${#body}" "$body" >&3
    IFS= read -r -t 5 line <&3 || line=
    exec 3<&- 3>&-
    line=${line#HTTP/1.? }
    echo "${line%% *}"
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

# Installs what the tests run besides the project's binaries (the runbook
# pages' own commands: curl, ps; openssl, which makes the TLS tests'
# certificates), from the distribution's packages.
ensure_runbook_tools() {
    local missing=()
    command -v curl >/dev/null 2>&1 || missing+=(curl)
    command -v ps >/dev/null 2>&1 || missing+=(procps)
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "==> installing ${missing[*]} from the distribution's packages (the runbook and TLS tests run them)"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

# Sets CHROMIUM to Debian's chromium, installing it when missing: the
# dashboard test loads /dashboard in it headless and saves a screenshot.
ensure_chromium() {
    if ! command -v chromium >/dev/null 2>&1; then
        echo "==> chromium not found; installing it from the distribution's packages"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    fi
    CHROMIUM=$(command -v chromium)
    export CHROMIUM
}

# Checks the files that run the services outside this repository:
# ops/install.sh installs into a scratch root, `systemd-analyze verify`
# reads both units (pointed at that root's binaries; any message at all is
# a failure, since verify itself exits 0 on unknown keys), and
# `docker-compose config -q` validates docker-compose.yml. systemd and
# docker-compose come from the distribution's packages. Needs the debug
# binaries (built by the tests) and $root.
check_service_files() {
    local tmp out
    local missing=()
    command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
    command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "==> installing ${missing[*]} from the distribution's packages"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    tmp=$(mktemp -d)
    DESTDIR="$tmp/root" BIN_DIR="$root/target/debug" bash "$root/ops/install.sh" >/dev/null
    for unit in "$tmp"/root/etc/systemd/system/*.service; do
        local name
        name=$(basename "$unit")
        [ "$name" = "postback-deliver@.service" ] && name="postback-deliver@1.service"
        sed "s#/usr/local/bin/#$tmp/root/usr/local/bin/#" "$unit" >"$tmp/$name"
    done
    out=$(systemd-analyze verify --man=no "$tmp"/*.service 2>&1) || { echo "$out"; return 1; }
    [ -z "$out" ] || { echo "$out"; echo "error: systemd-analyze verify found problems in ops/systemd" >&2; return 1; }
    docker-compose -f "$root/docker-compose.yml" config -q
    rm -rf "$tmp"
}
