#!/bin/sh
# Install what the Rust client crate needs to build offline: the Debian
# packages that ship the crate sources (into /usr/share/cargo/registry), the
# ZeroMQ C library with its headers, and pkg-config. Idempotent: packages
# already installed are left alone. Fails loudly when it can not install.
#
# Usage: clients/rust/install-deps.sh    (as root, or with sudo available)
set -eu

PACKAGES="librust-zmq-dev librust-serde-json-dev librust-serde-derive-dev librust-serde-dev libzmq3-dev pkg-config"
REGISTRY=/usr/share/cargo/registry

say() { printf 'install-deps: %s\n' "$*"; }
die() { printf 'install-deps: ERROR: %s\n' "$*" >&2; exit 1; }

command -v dpkg-query >/dev/null 2>&1 || die "dpkg-query not found: this script needs a Debian-based system"

missing=""
for pkg in $PACKAGES; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    case "$status" in
        *"install ok installed"*)
            say "$pkg is installed ($(dpkg-query -W -f='${Version}' "$pkg"))" ;;
        *)
            missing="$missing $pkg" ;;
    esac
done

if [ -n "$missing" ]; then
    if [ "$(id -u)" -eq 0 ]; then
        SUDO=""
    elif command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        die "missing packages:$missing; run as root or install sudo"
    fi
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; missing packages:$missing"
    say "installing:$missing"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q \
        || die "apt-get update failed"
    # shellcheck disable=SC2086 # word splitting of the package list is intended
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing \
        || die "apt-get install failed for:$missing"
    for pkg in $missing; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || die "$pkg is still not installed after apt-get install"
        say "installed $pkg ($(dpkg-query -W -f='${Version}' "$pkg"))"
    done
else
    say "nothing to install"
fi

for crate in zmq zmq-sys serde serde_json serde_derive libc; do
    ls -d "$REGISTRY/$crate"-[0-9]* >/dev/null 2>&1 \
        || die "crate $crate not found in $REGISTRY after installing the packages"
done
pkg-config --exists libzmq || die "pkg-config does not find libzmq (libzmq3-dev)"
say "crate registry: $REGISTRY ($(ls -d "$REGISTRY/zmq"-[0-9]* | xargs -n1 basename))"
say "libzmq $(pkg-config --modversion libzmq)"
