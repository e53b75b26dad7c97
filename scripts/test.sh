#!/usr/bin/env bash
# The README's test command: the project's .venv with the test extras, (as root) what the eBPF host
# probes need, lint, then the whole suite (GPU tests skip without a GPU; root tests skip without root).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
venv dev
if [ "$(id -u)" = 0 ]; then
  bash scripts/setup.sh --host-probes
else
  step "not root: the eBPF host-probe tests will skip (as root this also sets up bcc and kernel headers)"
fi
step "lint (ruff check .)"
"$VPY" -m ruff check .
step "tests (pytest)"
"$VPY" -m pytest -q "$@"
