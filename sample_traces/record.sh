#!/usr/bin/env bash
# How the CUPTI sample traces are made (GPU machine, repository root): bash sample_traces/record.sh OUTDIR
# benchmarks/run_serve.py's `samples` suite: every run pinned to the same CPUs (CPUS, default 2-5) so
# that the scheduler's placement does not decide a run's speed; every sample recorded REPS times
# (default 3), the samples interleaved (A B C D A B C D ...), and the run with the median steps/s kept
# in OUTDIR/NAME: selection by serve.py's own step time, never by what the analysis says (the lent
# machines' hosts slow down in bursts). OUTDIR/runs holds every run and its log, OUTDIR/recordings.json
# every run's steps/s and which was kept; serve.py's SERVE_SUMMARY is kept as serve_summary.json.
# HOSTONLY=1 adds serve-hostonly (root and bcc). `cctrace load DIR` builds trace.duckdb afterwards.
set -euo pipefail
out=${1:?usage: record.sh OUTDIR}
only=serve-baseline,serve-zero-bridge,serve-bridge,serve-bridge-remedied
[ "${HOSTONLY:-0}" = 1 ] && only=$only,serve-hostonly
python3 benchmarks/run_serve.py samples --reps "${REPS:-3}" --cpus "${CPUS:-2-5}" --only "$only" --keep "$out"
