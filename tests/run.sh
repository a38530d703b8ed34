#!/usr/bin/env bash
# The test command (README: "Run the tests"). On a fresh Debian machine it installs what the suite
# needs and runs it:
#   * as root with apt: Samba AD DC packages, ldap-utils, PostgreSQL and Chromium (for the real-server
#     and browser tests; the harness starts the servers itself, on loopback, in temporary directories);
#   * a virtualenv in .venv with mvsync and its test, postgres, web, face, kerberos and emulator extras
#     (gssapi builds from source against libkrb5-dev);
#   * ruff, import-linter (the layering contracts), mypy and pytest (two workers: MVSYNC_TEST_WORKERS).
# Extra arguments go to pytest, e.g.  bash tests/run.sh -k engine -x
# With CI=true (or MVSYNC_REQUIRE_SERVERS=1) a test that would skip for lack of Samba, PostgreSQL or
# Chromium fails instead.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(samba samba-ad-provision samba-dsdb-modules samba-vfs-modules winbind krb5-user libkrb5-dev gcc faketime ldap-utils
              postgresql chromium chromium-driver)
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  missing=()
  for p in "${APT_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "tests/run.sh: installing ${missing[*]} (apt)" >&2
    # Never let package scripts start system daemons (smbd, postgresql) on this machine.
    added_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; added_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    [ "$added_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
  fi
else
  echo "tests/run.sh: not root or no apt: tests that need Samba, PostgreSQL or Chromium will skip" >&2
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
.venv/bin/python -m pip install -q --upgrade pip 2>/dev/null || true
.venv/bin/python -m pip install -q -e '.[test,postgres,web,face,kerberos,emulator]' 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -c 'import connector, pytest' # fail loudly if the install did not work

if [ "${CI:-}" = true ]; then export MVSYNC_REQUIRE_SERVERS=1; fi

echo "== ruff" >&2
.venv/bin/ruff check connector tests
.venv/bin/ruff format --check connector tests
echo "== lint-imports (the layering contracts in pyproject.toml)" >&2
.venv/bin/lint-imports --no-cache --no-logo
echo "== mypy" >&2
.venv/bin/mypy
echo "== mypy --platform win32 (no POSIX-only call in what the package runs on Windows)" >&2
.venv/bin/mypy --platform win32
echo "== pytest" >&2
set +e
# Two workers (pytest-xdist); the tests of each real server stay on one of them (tests/conftest.py).
# MVSYNC_TEST_WORKERS=0 runs everything in this process, as before.
workers=${MVSYNC_TEST_WORKERS:-2}
if [ "$workers" = 0 ]; then
  .venv/bin/python -m pytest "$@"
else
  .venv/bin/python -m pytest -n "$workers" --dist loadgroup "$@"
fi
rc=$?
set -e
# pytest's 5 means "no tests collected": a selection that ran nothing is not a failure of the suite.
if [ $rc = 5 ]; then rc=0; fi
exit $rc
