#!/usr/bin/env bash
# Installs the apiary binary and its systemd unit.
#   sudo deploy/install.sh                # builds from this checkout (cargo) and installs
#   sudo deploy/install.sh ./apiary       # installs a binary you already have
# Then edit /etc/apiary/apiary.env and `systemctl enable --now apiary`.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: run it as root (it writes /usr/local/bin and /etc/systemd/system)" >&2
    exit 1
fi
binary="${1:-}"
if [ -z "$binary" ]; then
    command -v cargo >/dev/null || { echo "install.sh: no binary given and no cargo to build one; pass the path of an apiary binary" >&2; exit 1; }
    echo "building apiary (release)…"
    (cd "$here/.." && cargo build --release -p apiary)
    binary="$here/../target/release/apiary"
fi
[ -x "$binary" ] || { echo "install.sh: $binary is not an executable" >&2; exit 1; }
install -m 0755 "$binary" /usr/local/bin/apiary
install -d -m 0755 /etc/apiary
if [ ! -e /etc/apiary/apiary.env ]; then
    install -m 0600 "$here/systemd/apiary.env.example" /etc/apiary/apiary.env
    sed -i "s/^APIARY_NAME=.*/APIARY_NAME=$(hostname -s)/" /etc/apiary/apiary.env
    echo "wrote /etc/apiary/apiary.env: set APIARY_ADVERTISE (and APIARY_JOIN/APIARY_JOIN_TOKEN on joining nodes)"
fi
install -m 0644 "$here/systemd/apiary.service" /etc/systemd/system/apiary.service
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    echo "installed; start with: systemctl enable --now apiary && journalctl -u apiary -f"
else
    echo "installed /usr/local/bin/apiary and the unit (no running systemd here to reload)"
fi
