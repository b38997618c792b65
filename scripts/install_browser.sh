#!/usr/bin/env bash
# Install Debian's Chromium for the Playwright browser test (tests/app/test_browser.py).
# Quiet and idempotent; without root or apt-get it says so and exits 0: that test then skips itself.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_browser.sh: no apt-get; the browser test will be skipped" >&2
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
    echo "install_browser.sh: not root and no sudo; the browser test will be skipped" >&2
    exit 0
  fi
fi
export DEBIAN_FRONTEND=noninteractive
if ! { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends chromium; } >/dev/null 2>&1; then
  echo "install_browser.sh: apt-get install chromium failed; the browser test will be skipped" >&2
fi
exit 0
