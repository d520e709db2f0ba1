#!/usr/bin/env bash
# Installs the release binaries, the systemd units and the settings file:
#
#   cargo build --release --locked
#   sudo bash ops/install.sh            (DESTDIR=/some/root to stage elsewhere)
#
# then: systemctl daemon-reload
#       systemctl enable --now postback-ingest postback-deliver@1 postback-deliver@2
# An existing /etc/postback/postback.env is kept (the new one is written
# beside it as postback.env.new). Nothing is started or enabled here.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dest=${DESTDIR:-}
bin_dir=${BIN_DIR:-$root/target/release}

for bin in postback-ingest postback-deliver postbackctl; do
    [ -x "$bin_dir/$bin" ] || { echo "error: $bin_dir/$bin missing: run cargo build --release --locked" >&2; exit 1; }
done

install -d "$dest/usr/local/bin" "$dest/etc/systemd/system" "$dest/etc/postback"
install -m 0755 "$bin_dir/postback-ingest" "$bin_dir/postback-deliver" \
    "$bin_dir/postbackctl" "$dest/usr/local/bin/"
install -m 0644 "$root/ops/systemd/postback-ingest.service" "$root/ops/systemd/postback-deliver@.service" \
    "$dest/etc/systemd/system/"
if [ -e "$dest/etc/postback/postback.env" ]; then
    install -m 0640 "$root/ops/systemd/postback.env" "$dest/etc/postback/postback.env.new"
    echo "kept $dest/etc/postback/postback.env; the shipped one is postback.env.new"
else
    install -m 0640 "$root/ops/systemd/postback.env" "$dest/etc/postback/postback.env"
fi
echo "installed into ${dest:-/}: binaries in /usr/local/bin, units in /etc/systemd/system, settings in /etc/postback"
