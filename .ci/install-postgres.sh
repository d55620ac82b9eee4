#!/usr/bin/env bash
# PostgreSQL server binaries for the tests that run the application database on it (Debian's
# `postgresql`). Tests start their own throwaway cluster (tests/postgres.py); nothing is
# started here. Idempotent: does nothing when the binaries are there.
set -euo pipefail
if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
else
    echo "install-postgres: not root and no sudo: install Debian's postgresql yourself" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq postgresql >/dev/null
