#!/usr/bin/env bash
# Builds the documentation site: checks docs/src against the code (generated
# flag and backend tables, every flag, variable, net-conf.json key and
# backend documented, no dead link), then renders it to target/docs-site.
#
#   scripts/docs.sh            # check + build; open target/docs-site/index.html
#   scripts/docs.sh update     # rewrite the generated tables after a code change
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-build}" in
    update) cargo run -q -p flannel-docs -- update docs/src ;;
    build) cargo run -q -p flannel-docs -- build docs/src "${CARGO_TARGET_DIR:-target}/docs-site" ;;
    *) echo "usage: scripts/docs.sh [build|update]" >&2; exit 2 ;;
esac
