#!/usr/bin/env bash
# How the CUPTI sample traces are made (GPU machine, repository root): bash sample_traces/record.sh OUTDIR
# Each run is pinned to the same CPUs (CPUS, default 2-5) so that the scheduler's placement does not
# decide a run's speed; they run one after the other. serve.py's SERVE_SUMMARY line is kept next to
# the shards as serve_summary.json. `cctrace load DIR` builds trace.duckdb afterwards.
set -euo pipefail
out=${1:?usage: record.sh OUTDIR}
cpus=${CPUS:-2-5}
mkdir -p "$out"

run() { # run NAME [cctrace options] -- [serve.py options]
    local name=$1 opts=()
    shift
    while [ "$1" != "--" ]; do opts+=("$1"); shift; done
    shift
    taskset -c "$cpus" python3 -m cctrace record --no-load --force -o "$out/$name" "${opts[@]}" \
        -- python3 examples/serve.py --steps 300 "$@" | tee "$out/$name.log"
    grep '^SERVE_SUMMARY ' "$out/$name.log" | tail -1 | cut -d' ' -f2- | python3 -m json.tool >"$out/$name/serve_summary.json"
}

common=(--nvtx --kernels --host-probes off)
run serve-baseline "${common[@]}" --
run serve-zero-bridge "${common[@]}" --emulate-bridge toll_us=0,bw_ratio=1,serialize=off,async_block=off --
run serve-bridge "${common[@]}" --emulate-bridge b300-tdx --
run serve-bridge-remedied "${common[@]}" --emulate-bridge b300-tdx -- --packed-h2d --staging-stream --async-readback
if [ "${HOSTONLY:-0}" = 1 ]; then # needs bcc and root
    run serve-hostonly --kinds none --host-probes on --emulate-bridge b300-tdx --
fi
