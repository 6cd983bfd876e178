#!/usr/bin/env bash
# CI: lint what the container job ships. hadolint on the Dockerfile (.hadolint.yaml: the deliberate
# exceptions and why), check-jsonschema on .circleci/config.yml (CircleCI's own schema, vendored in
# check-jsonschema), bosh validate on the Boutiques descriptor and its invocation example, and the
# descriptor regenerated from the parser must equal the checked-in one. Tools: the container-tools extra.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${VENV_BIN:-.venv/bin}
"$BIN/hadolint" --config .hadolint.yaml Dockerfile
"$BIN/check-jsonschema" --builtin-schema vendor.circle-ci .circleci/config.yml
"$BIN/bosh" validate boutiques/vbm-predict.json
"$BIN/bosh" invocation boutiques/vbm-predict.json -i boutiques/invocation-participant.json
"$BIN/python" scripts/make_boutiques.py --check
echo "container lint: hadolint, check-jsonschema, bosh validate, descriptor up to date"
