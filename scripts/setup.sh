#!/usr/bin/env bash
# Installs the Debian packages that tests and dev mode need: redis-server,
# redis-tools (redis-cli, which creates the tests' Redis Clusters), kcat,
# Postgres 15 and its PL/Proxy extension, and for the web client's suites
# chromium (driven headless by playwright-core; no browser is downloaded)
# and, when missing, Node and npm. Quiet no-op when they are all
# present. Called by `make setup` (which `make run`, `make test` and
# `make bench` depend on).
#
# Package installation may start Debian's own redis-server (port 6379) and
# Postgres cluster (port 5432). Chapper never uses them: devstack runs private
# servers on other ports (dev: 16379 and 15432; tests: free ports).
set -euo pipefail

PG_BIN=/usr/lib/postgresql/15/bin
PLPROXY_CONTROL=/usr/share/postgresql/15/extension/plproxy.control

# Only the packages of missing pieces are installed, so a present package is
# never upgraded behind a running server's back.
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
command -v kcat >/dev/null 2>&1 || missing+=(kcat)
[[ -x "${PG_BIN}/postgres" && -x "${PG_BIN}/initdb" ]] || missing+=(postgresql-15)
[[ -f "${PLPROXY_CONTROL}" ]] || missing+=(postgresql-15-plproxy)
[[ -x /usr/bin/chromium ]] || missing+=(chromium)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)

if ((${#missing[@]} == 0)); then
  exit 0
fi

echo "setup: installing ${missing[*]}" >&2
if ! command -v apt-get >/dev/null 2>&1; then
  echo "setup: apt-get not found; install these yourself (Debian names): ${missing[*]}" >&2
  exit 1
fi

sudo=()
if ((EUID != 0)); then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "setup: not root and no sudo; run as root: apt-get install ${missing[*]}" >&2
    exit 1
  fi
  sudo=(sudo)
fi

"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"

# Check again: a package that installed but left a piece missing should stop
# the build here, not as a puzzling test failure later.
for f in "${PG_BIN}/postgres" "${PG_BIN}/initdb" "${PLPROXY_CONTROL}" /usr/bin/chromium; do
  [[ -e "$f" ]] || { echo "setup: $f still missing after install" >&2; exit 1; }
done
for c in redis-server redis-cli kcat node npm; do
  command -v "$c" >/dev/null 2>&1 || { echo "setup: $c still missing after install" >&2; exit 1; }
done
echo "setup: done" >&2
