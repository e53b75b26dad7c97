#!/usr/bin/env bash
# The README's main job, as any user (no root). With an NVIDIA GPU: record examples/serve.py and report
# on it. Without one: the report of the bundled H200 samples: serve.py under an emulated B300/TDX
# bridge, and what the bridge cost relative to the plain run (sample_traces/serve-baseline, serve-bridge),
# then transformers' generate() under the same bridge; both reports name the lines that cost it.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
if python3 -c 'import ctypes; ctypes.CDLL("libcuda.so.1")' 2>/dev/null; then
  venv analysis,gpu
  out=${CCTRACE_OUT:-cctrace-serve}
  step "recording examples/serve.py into $out (cctrace record)"
  "$VPY" -m cctrace record --force -o "$out" --nvtx --kernels -- "$VPY" examples/serve.py --steps 300
  step "reporting on $out"
  "$VPY" -m cctrace report "$out"
else
  venv analysis
  tmp=$(mktemp -d)
  step "no NVIDIA GPU here: reporting on the bundled sample traces (recorded on an H200), copied to $tmp"
  cp -r sample_traces/serve-baseline sample_traces/serve-bridge sample_traces/hf-generate-bridge "$tmp/"
  "$VPY" -m cctrace report "$tmp/serve-bridge"
  step "what the emulated bridge cost against the plain run (cctrace diff)"
  "$VPY" -m cctrace diff "$tmp/serve-baseline" "$tmp/serve-bridge"
  step "which lines of Python cost it: transformers generate() under the same bridge (H200, with call sites)"
  "$VPY" -m cctrace report "$tmp/hf-generate-bridge"
  step "explore them: $VENV/bin/cctrace explore $tmp/serve-bridge $tmp/serve-baseline"
fi
