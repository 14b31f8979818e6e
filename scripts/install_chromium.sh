#!/usr/bin/env bash
# Installs Debian's chromium for the real-browser test (tests/test_browser.py), once: a no-op when `chromium` is
# already on PATH. Quiet, with no prompts and no standard input, as root (CI) or through passwordless sudo.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_chromium.sh: no apt-get here; install chromium with your system's package manager" >&2
  exit 1
fi
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo -n"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq </dev/null >/dev/null
$sudo apt-get install -y -qq chromium </dev/null >/dev/null
chromium --version 2>/dev/null | head -1
