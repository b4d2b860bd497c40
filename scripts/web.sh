#!/usr/bin/env bash
# Builds and tests the TypeScript client and the web page (clients/web).
# Called by the Makefile:
#   web.sh gen     regenerate clients/web/src/gen from proto/ (buf + protoc-gen-es)
#   web.sh build   type-check and bundle the page into services/webapp/dist (embedded, committed)
#   web.sh check   fail when services/webapp/dist differs from a fresh build of the sources
#   web.sh test    check, then the Node suite and the chromium suite, each against its own chapper dev
# npm packages come from package-lock.json (npm ci, only when the lock changed);
# chromium is Debian's (make setup installs it); no browser is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
web=clients/web
BUF_VERSION=${BUF_VERSION:-v1.75.0}

deps() {
  command -v npm >/dev/null 2>&1 || { echo "web: npm not found; run make setup" >&2; exit 1; }
  local want have=""
  want=$(sha256sum "$web/package-lock.json" | cut -d' ' -f1)
  [[ -f "$web/node_modules/.chapper-lock" ]] && have=$(cat "$web/node_modules/.chapper-lock")
  if [[ "$want" != "$have" ]]; then
    echo "web: npm ci" >&2
    (cd "$web" && npm ci --no-audit --no-fund --loglevel=error)
    echo "$want" >"$web/node_modules/.chapper-lock"
  fi
}

typecheck() {
  (cd "$web" && rm -rf build && node_modules/.bin/tsc -p .)
}

case "${1:-}" in
gen)
  deps
  (cd "$web" && go run "github.com/bufbuild/buf/cmd/buf@${BUF_VERSION}" generate)
  ;;
build)
  deps
  typecheck
  (cd "$web" && node build.mjs)
  ;;
check)
  deps
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  (cd "$web" && node build.mjs "$tmp" >/dev/null)
  if ! diff -r "$tmp" services/webapp/dist >/dev/null; then
    diff -r "$tmp" services/webapp/dist | head -5 >&2 || true
    echo "web: services/webapp/dist is stale against clients/web: run make web and commit" >&2
    exit 1
  fi
  ;;
test)
  bash "$root/scripts/web.sh" check
  typecheck
  # The suites run the chapper of these sources, with this page embedded.
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  go build -o "$tmp/chapper" ./services/cmd/chapper
  [[ -x /usr/bin/chromium ]] || { echo "web: /usr/bin/chromium missing; run make setup" >&2; exit 1; }
  cd "$web"
  CHAPPER_BIN="$tmp/chapper" CHAPPER_WEB_ARTEFACTS="${CHAPPER_WEB_ARTEFACTS:-$root/var/web-artefacts}" \
    node --test --test-concurrency=1 --test-timeout=240000 build/test/*.test.js
  ;;
*)
  echo "usage: scripts/web.sh gen|build|check|test" >&2
  exit 2
  ;;
esac
