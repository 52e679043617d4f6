#!/usr/bin/env bash
# Sourced by scripts/test.sh: installs Debian's chromium and chromium-driver
# when they are missing, for the dashboard's browser test. Under CI=true a
# failed install is an error, else a warning (the test then skips).

ensure_browser() {
  if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    return 0
  fi
  echo "== installing chromium and chromium-driver"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 \
    || { $sudo apt-get update -q >/dev/null 2>&1 && $sudo apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; } \
    || return 1
  command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1
}

if ! ensure_browser; then
  if [ "${CI:-}" = "true" ]; then
    echo "error: chromium and chromedriver could not be installed; the dashboard's browser test needs them" >&2
    exit 1
  fi
  echo "warning: no chromium or chromedriver; the dashboard's browser test will skip (it fails under CI=true)" >&2
fi
