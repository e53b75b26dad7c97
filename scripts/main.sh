#!/usr/bin/env bash
# The README's main job. With an NVIDIA GPU: record examples/serve.py. Without: analyse a bundled sample.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
if python3 -c 'import ctypes; ctypes.CDLL("libcuda.so.1")' 2>/dev/null; then
  out=${CCTRACE_OUT:-cctrace-serve}
  python3 -m cctrace record --force -o "$out" --nvtx -- python3 examples/serve.py --steps 200
  echo "trace: $out"
else
  echo "no NVIDIA GPU here: loading the bundled sample trace instead" >&2
  sample=$(ls -d sample_traces/*/ 2>/dev/null | head -1)
  [ -n "$sample" ] || { echo "no sample trace bundled yet in sample_traces/" >&2; exit 1; }
  tmp=$(mktemp -d); cp -r "$sample" "$tmp/trace"
  python3 -m cctrace load "$tmp/trace"
fi
