-- module: advice
-- needs: cost_model
-- answers: What does the trace already do of the known remedies? (the advice leaves those out)

-- One row of facts about the window.
--   host_only: no copy records (host probes only): GPU times, memory kinds and streams are unknown
--   gpu_times: CUPTI recorded copies (GPU-side times), or nothing recorded any; false where the copies
--   carry their calls' host times only (the driver interposer's, host probes'): what needs them is not measured
--   packed_h2d: at most one small H2D crossing per step (the per-step inputs are packed)
--   staging_stream: most small H2D copies run on a stream where no kernel ran (a staging stream)
--   async_readback: no small D2H blocks (none into pageable memory) and a thread that issues
--   nothing (no launch, no copy) waits in syncs: readbacks are drained by a worker
--   readbacks_dominate: small D2H crossings lost more than small H2D ones
CREATE OR REPLACE TEMP TABLE trace_facts AS
WITH x AS (  -- one pass over the small transfers
    SELECT count(*) FILTER (WHERE copy_kind = 'HtoD') AS h2d,
           count(*) FILTER (WHERE copy_kind = 'HtoD' AND stream_id NOT IN (SELECT stream_id FROM kernels)) AS h2d_idle,
           count(*) FILTER (WHERE copy_kind = 'DtoH' AND api_tid IS NOT NULL) AS d2h,
           count(*) FILTER (WHERE copy_kind = 'DtoH' AND host_kind = 'pageable') AS d2h_blocking,
           coalesce(sum(excess_ns) FILTER (WHERE copy_kind = 'DtoH'), 0) AS d2h_excess,
           coalesce(sum(excess_ns) FILTER (WHERE copy_kind = 'HtoD'), 0) AS h2d_excess
    FROM xfer_costs WHERE small
)
SELECT NOT EXISTS (SELECT 1 FROM copies) AS host_only,
       (SELECT copies FROM cupti_present)
           OR NOT (EXISTS (SELECT 1 FROM copies WHERE source = 'interposer')
                   OR EXISTS (SELECT 1 FROM xfers WHERE timing = 'host')) AS gpu_times,
       x.h2d > 0 AND x.h2d <= (SELECT steps FROM win) AS packed_h2d,
       EXISTS (SELECT 1 FROM kernels) AND x.h2d > 0 AND 2 * x.h2d_idle >= x.h2d AS staging_stream,
       x.d2h > 0 AND x.d2h_blocking = 0
           AND EXISTS (SELECT 1 FROM calls SEMI JOIN (SELECT name FROM call_names WHERE sync) USING (name)
                       WHERE (pid, tid) NOT IN (SELECT (pid, tid) FROM issuers)) AS async_readback,
       x.d2h_excess > x.h2d_excess AS readbacks_dominate
FROM x;
