#!/usr/bin/env bash
# The README's main job. With an NVIDIA GPU: record examples/serve.py and report on it.
# Without one: report on the bundled sample trace recorded on an H100 (sample_traces/serve-kernels).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
if python3 -c 'import ctypes; ctypes.CDLL("libcuda.so.1")' 2>/dev/null; then
  out=${CCTRACE_OUT:-cctrace-serve}
  python3 -m cctrace record --force -o "$out" --nvtx --kernels -- python3 examples/serve.py --steps 300
  python3 -m cctrace report "$out"
else
  echo "no NVIDIA GPU here: reporting on the bundled sample trace (recorded on an H100)" >&2
  tmp=$(mktemp -d)
  cp -r sample_traces/serve-kernels "$tmp/serve-kernels"
  python3 -m cctrace report "$tmp/serve-kernels"
fi
