#!/usr/bin/env bash
# Rebuilds marco_gguf/server/static/vendor/ from the versions pinned in package-lock.json (needs Node 18+ and npm).
# The output is committed: installing or running marco-gguf never builds anything.
set -euo pipefail
cd "$(dirname "$0")"
npm ci --no-audit --no-fund
node build.mjs
