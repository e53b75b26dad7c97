#!/usr/bin/env bash
# How the HF generate sample pair is made (GPU machine, repository root): bash sample_traces/record_hf.sh OUTDIR
# tests/workloads/hf_generate.py (random-init Llama, 3 requests x 32 new tokens, batch 8), recorded with the
# default kinds, once plain (hf-generate-baseline) and once under --emulate-bridge b300-tdx (hf-generate-bridge),
# each pinned to CPUS (default 2-5). Each trace keeps the recorded run's own summary as workload_summary.json;
# OUTDIR/hf-generate-issued.json is a plain run with --count-copies: the crossings in the fence window counted by a
# torch dispatch mode (`counted`) and derived from generate()'s source (`window`); `counted_agrees` says they match.
set -euo pipefail
out=${1:?usage: record_hf.sh OUTDIR}
cpus=${CPUS:-2-5}
args=(--requests 3 --new-tokens 32 --json)
mkdir -p "$out"
summary() { grep '^WORKLOAD_SUMMARY ' | tail -1 | cut -d' ' -f2-; }
taskset -c "$cpus" python3 tests/workloads/hf_generate.py "${args[@]}" --count-copies | summary > "$out/hf-generate-issued.json"
for name in baseline bridge; do
  opts=(--host-probes off)
  [ "$name" = bridge ] && opts+=(--emulate-bridge b300-tdx)
  taskset -c "$cpus" python3 -m cctrace record -q --no-load --force -o "$out/hf-generate-$name" "${opts[@]}" -- \
    python3 tests/workloads/hf_generate.py "${args[@]}" | summary > "$out/hf-generate-$name.summary.json"
  mv "$out/hf-generate-$name.summary.json" "$out/hf-generate-$name/workload_summary.json"
done
du -sh "$out"/hf-generate-*
