#!/bin/sh
# Make sure the `prometheus` and `promtool` binaries are on PATH, installing
# Debian's prometheus package when they are not. Idempotent; safe to call from
# `make test` and CI. Works as root, or through sudo when that is available.
set -eu

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
else
    echo "ensure-prometheus: prometheus is not installed and this is neither root nor has sudo;" >&2
    echo "ensure-prometheus: install Debian's 'prometheus' package (it provides prometheus and promtool)." >&2
    exit 1
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-prometheus: no apt-get here; install prometheus and promtool by other means." >&2
    exit 1
fi

echo "ensure-prometheus: installing Debian's prometheus package" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null

# The package also enables a system service; tests start their own servers.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
fi

prometheus --version 2>&1 | head -n 1
promtool --version 2>&1 | head -n 1
