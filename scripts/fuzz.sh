#!/usr/bin/env bash
# schemathesis against a LIVE loradock server's own OpenAPI schema: fails on any 5xx.
# (tests/serve/test_fuzz.py runs the same check in-process in `make test`, with a fake engine.)
#   scripts/fuzz.sh [URL] [EXAMPLES]      e.g. scripts/fuzz.sh http://127.0.0.1:8000 25
# Uses LORADOCK_API_KEY / LORADOCK_ADMIN_KEY from the environment when set. Keep EXAMPLES small on CPU:
# every accepted chat request generates tokens (LORADOCK_MAX_TOKENS_CAP bounds each one).
set -euo pipefail
url="${1:-http://127.0.0.1:8000}"
examples="${2:-25}"
key="${LORADOCK_ADMIN_KEY:-${LORADOCK_API_KEY:-none}}"
exec "$(dirname "$0")/../.venv/bin/schemathesis" run "$url/openapi.json" \
  --checks not_a_server_error \
  --header "Authorization: Bearer $key" \
  --max-examples "$examples" \
  --request-timeout 120 \
  --phases examples,fuzzing
