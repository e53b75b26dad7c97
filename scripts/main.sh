#!/usr/bin/env bash
# The README's main job. With an NVIDIA GPU: record examples/serve.py and report on it.
# Without one: the report of the bundled H100 samples: serve.py under an emulated B300/TDX bridge, and
# what the bridge cost relative to the plain run (sample_traces/serve-baseline, serve-bridge).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
if python3 -c 'import ctypes; ctypes.CDLL("libcuda.so.1")' 2>/dev/null; then
  out=${CCTRACE_OUT:-cctrace-serve}
  python3 -m cctrace record --force -o "$out" --nvtx --kernels -- python3 examples/serve.py --steps 300
  python3 -m cctrace report "$out"
else
  echo "no NVIDIA GPU here: reporting on the bundled sample traces (recorded on an H100)" >&2
  tmp=$(mktemp -d)
  cp -r sample_traces/serve-baseline sample_traces/serve-bridge "$tmp/"
  python3 -m cctrace report "$tmp/serve-bridge"
  python3 -m cctrace diff "$tmp/serve-baseline" "$tmp/serve-bridge"
  echo "explore them: cctrace explore $tmp/serve-bridge $tmp/serve-baseline" >&2
fi
