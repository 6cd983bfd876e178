#!/usr/bin/env bash
# CI: Debian's chromium for the report tests in a real browser (tests/test_browser.py).
# Installed from the distribution's packages (no browser download); the tests drive it headless over
# the DevTools pipe. Already installed: nothing to do.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
    chromium --version
    exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core
chromium --version
