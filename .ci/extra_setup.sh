#!/usr/bin/env bash
# Extra CI setup: headless Chromium for the browser tests of the HTML report (tests/test_report.py) and of the
# web app (tests/test_web.py: Playwright drives this chromium; the app's runtime comes from npm ci of its lockfile).
# Never fails CI: without Chromium those tests skip with their reason.
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo -n"; fi
if command -v apt-get >/dev/null 2>&1 \
    && $SUDO apt-get update -qq >/dev/null 2>&1 \
    && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null 2>&1; then
    echo "extra_setup: installed chromium"
else
    echo "warning: could not install chromium with apt-get; the report browser test will be skipped" >&2
fi
exit 0
