#!/usr/bin/env bash
# schemathesis against a LIVE loradock server's own OpenAPI schema, every phase including the stateful one
# (it follows the schema's OpenAPI links: list models -> chat with one, load/unload it, feedback -> delete):
# fails on any 5xx. tests/serve/test_fuzz.py runs a small budget of the same in-process in `make test`.
#   scripts/fuzz.sh [URL] [EXAMPLES]      e.g. scripts/fuzz.sh http://127.0.0.1:8000 200
# Uses LORADOCK_ADMIN_KEY (else LORADOCK_API_KEY) from the environment when set, so admin routes are fuzzed
# too. Start the server with a small LORADOCK_MAX_TOKENS_CAP (e.g. 16): every accepted request generates.
set -euo pipefail
url="${1:-http://127.0.0.1:8000}"
examples="${2:-200}"
key="${LORADOCK_ADMIN_KEY:-${LORADOCK_API_KEY:-none}}"
exec "$(dirname "$0")/../.venv/bin/schemathesis" run "$url/openapi.json" \
  --checks not_a_server_error \
  --header "Authorization: Bearer $key" \
  --max-examples "$examples" \
  --workers 1 \
  --request-timeout 120 \
  --suppress-health-check all \
  --phases examples,coverage,fuzzing,stateful
