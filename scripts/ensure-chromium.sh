#!/usr/bin/env bash
# Makes sure Debian's chromium is at /usr/bin/chromium for the browser tests (Playwright drives
# the system binary; it never downloads a browser of its own). Installs the package with apt-get,
# as root or through `sudo -n`, only when the binary is missing. Where it cannot be installed the
# script says so and exits 0: the browser tests then skip, naming the reason.
set -uo pipefail

CHROMIUM=/usr/bin/chromium
[ -x "$CHROMIUM" ] && exit 0

sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi; }

echo "chromium: installing Debian's chromium for the browser tests" >&2
sudo_ env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1 || true
if ! sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    chromium fonts-dejavu-core >/dev/null 2>&1; then
  echo "chromium: cannot install chromium; the browser tests will skip" >&2
fi
exit 0
