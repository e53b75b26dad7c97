-- module: steps
-- needs: traced
-- answers: What is one step (iteration) of the traced program, and over which window is it analysed?
-- Steps come from, in order: NVTX ranges named like step_pattern; markers of a user-named step function
-- (source 'step_function', `record --step-function`); detected iterations: the ends of blocking
-- readbacks (D2H into pageable memory; D2H into pinned/device memory or a graph replay completed by a
-- stream/event/context sync on the same thread, as .item() does), then driver-level syncs, then the
-- period of the call sequence. steps_from picks one of them. Parameters: step_pattern, steps_from,
-- min_steps. Times are ns on CLOCK_MONOTONIC; works on CUPTI, host-probe-only and merged traces.

-- Whether CUPTI recorded copies and calls, and whether the driver interposer did. One call seen by
-- several sources counts once: CUPTI's record first, else the interposer's, else the probe's (source
-- ebpf); the others add detail, never a second count.
--   copies: CUPTI copy records exist; calls: CUPTI API call records exist; interposed: interposer calls exist
CREATE OR REPLACE TEMP TABLE cupti_present AS
SELECT EXISTS (SELECT 1 FROM copies WHERE source = 'cupti') AS copies,
       EXISTS (SELECT 1 FROM api_calls WHERE source = 'cupti') AS calls,
       EXISTS (SELECT 1 FROM api_calls WHERE source = 'interposer') AS interposed;

-- Each distinct call name once, with what kind of call it is: names are matched here, not per call.
--   returns_at_once: meant to return at once (async memset, launch, graph launch, async alloc/free)
--   async_copy: cudaMemcpy*Async / cuMemcpy*Async; copy: any memcpy call
--   sync: stream/event/device/context synchronize
--   graph_launch: a CUDA graph replay; launch: a kernel launch (never a step's signature)
--   blocking_readback_probe: a probed synchronous D2H copy (host-probe-only traces)
CREATE OR REPLACE TEMP TABLE call_names AS
SELECT name,
       regexp_matches(name, '^cu(da)?(Memset(D8|D16|D32|2D)?.*Async|LaunchKernel|LaunchCooperativeKernel|GraphLaunch|MallocAsync|FreeAsync|MemAllocAsync|MemFreeAsync)') AS returns_at_once,
       regexp_matches(name, '^cu(da)?Memcpy.*Async') AS async_copy,
       regexp_matches(name, '^cu(da)?Memcpy') AS copy,
       regexp_matches(name, '^cu(da)?(Stream|Event|Device|Ctx)Synchronize') AS sync,
       regexp_matches(name, '^cu(da)?GraphLaunch') AS graph_launch,
       regexp_matches(name, '^cu(da)?(LaunchKernel|LaunchCooperativeKernel|LaunchKernelEx)') AS launch,
       regexp_matches(name, '^cuMemcpyDtoH(_v2)?(_ptds)?$') AS blocking_readback_probe
FROM (SELECT DISTINCT name FROM api_calls);

-- The recorded calls, each once: in merged traces the CUPTI record of a call is the call, else the
-- interposer's, else the probe's.
CREATE OR REPLACE TEMP VIEW calls AS
SELECT a.* FROM api_calls a, cupti_present p
WHERE CASE a.source WHEN 'ebpf' THEN NOT (p.calls OR p.interposed) WHEN 'interposer' THEN NOT p.calls ELSE true END;

-- The threads that issue GPU work, launches or copies (a thread that only waits is a worker; with
-- launches not recorded, the copies still tell the issuing thread).
--   pid, tid
CREATE OR REPLACE TEMP VIEW issuers AS
SELECT DISTINCT pid, tid FROM calls SEMI JOIN (SELECT name FROM call_names WHERE launch OR graph_launch OR copy) USING (name);

-- Marked steps: NVTX ranges, then the user's step function.
--   step_source: nvtx | step_function
CREATE OR REPLACE TEMP TABLE marked_steps AS
SELECT name, pid, tid, start_ns, end_ns,
       CASE WHEN source = 'step_function' THEN 'step_function' ELSE 'nvtx' END AS step_source
FROM markers
WHERE end_ns > start_ns
  AND ((source <> 'step_function' AND name LIKE getvariable('step_pattern') AND getvariable('steps_from') IN ('auto', 'nvtx'))
       OR (source = 'step_function' AND getvariable('steps_from') IN ('auto', 'step_function')));

SET VARIABLE marked_source = (
    SELECT CASE WHEN bool_or(step_source = 'nvtx') THEN 'nvtx' ELSE any_value(step_source) END FROM marked_steps);

-- Iteration ends, detected only where no steps are marked: per thread, each candidate with its
-- signature (what it completes: call, bytes, host memory kind, and the Python stack of the call where
-- one was recorded: two readbacks of one size from different code are two signatures) and its rank (readbacks, graph
-- replays and the syncs of a worker thread that drains readbacks 1; driver-level syncs 2; recurring
-- calls 3).
--   pid, tid: the thread; t: when the iteration ended; wait_ns: the ending call's duration
--   kind: readback | graph_replay | driver_sync | worker_sync | period; rank: precedence; sig: signature
CREATE OR REPLACE TEMP TABLE step_ends AS
WITH rb AS (
    -- D2H copies with their issuing call (CUPTI): pageable ones block in the call itself
    SELECT c.pid, c.api_tid AS tid, c.api_name AS name, c.bytes, c.dst_kind AS host_kind, c.api_start_ns AS start_ns,
           c.api_end_ns AS end_ns, c.api_stack_id AS stack_id
    FROM copies_with_api c
    WHERE getvariable('marked_source') IS NULL AND c.copy_kind = 'DtoH' AND c.op = 'memcpy' AND c.api_tid IS NOT NULL
      AND (c.source <> 'interposer' OR NOT (SELECT copies FROM cupti_present))
), syncs AS (
    SELECT a.pid, a.tid, a.name, a.domain, a.start_ns, a.end_ns, a.stack_id
    FROM calls a SEMI JOIN (SELECT name FROM call_names WHERE sync) USING (name) WHERE getvariable('marked_source') IS NULL
), graphs AS (
    SELECT a.pid, a.tid, a.name, a.start_ns, a.end_ns, a.stack_id
    FROM calls a SEMI JOIN (SELECT name FROM call_names WHERE graph_launch) USING (name)
    WHERE getvariable('marked_source') IS NULL
), issued AS (
    -- what a later sync on the same thread completes: a D2H into pinned/device memory, a graph replay
    -- (a graph's own memcpy nodes are its replay's, counted once as the replay)
    SELECT pid, tid, name, bytes, host_kind, start_ns, end_ns, stack_id, 0 AS is_sync FROM rb
    WHERE host_kind <> 'pageable' AND name NOT IN (SELECT name FROM call_names WHERE graph_launch)
    UNION ALL
    SELECT pid, tid, name, NULL, 'graph', start_ns, end_ns, stack_id, 0 FROM graphs
    UNION ALL
    SELECT pid, tid, name, NULL, NULL, start_ns, end_ns, stack_id, 1 FROM syncs
), completed AS (
    -- a sync whose thread's previous event was something it completes (not another sync)
    SELECT *, lag(is_sync) OVER w AS prev_sync, lag(name) OVER w AS prev_name, lag(bytes) OVER w AS prev_bytes,
           lag(host_kind) OVER w AS prev_kind, lag(stack_id) OVER w AS prev_stack
    FROM issued WINDOW w AS (PARTITION BY pid, tid ORDER BY start_ns, is_sync)
)
SELECT pid, tid, end_ns AS t, end_ns - start_ns AS wait_ns,
       CASE WHEN prev_kind = 'graph' THEN 'graph_replay' ELSE 'readback' END AS kind, 1 AS rank,
       concat_ws(':', prev_name, prev_bytes, prev_kind, name, prev_stack) AS sig
FROM completed WHERE is_sync = 1 AND prev_sync = 0
UNION ALL
-- a graph replay begins a step even where no recorded sync completes it (XLA waits otherwise)
SELECT pid, tid, start_ns, end_ns - start_ns, 'graph_replay', 1, concat_ws(':', name, stack_id, 'launch') FROM graphs
UNION ALL
SELECT pid, tid, end_ns, end_ns - start_ns, 'readback', 1, concat_ws(':', name, bytes, host_kind, stack_id)
FROM rb WHERE host_kind = 'pageable'
UNION ALL
-- host-probe-only traces know no memory kinds: there, small D2H copy calls (sampled tokens) mark them
SELECT a.pid, a.tid, a.end_ns, a.end_ns - a.start_ns, 'readback', 1, concat_ws(':', a.name, a.bytes)
FROM api_calls a
WHERE getvariable('marked_source') IS NULL AND a.source = 'ebpf' AND a.copy_kind = 'DtoH' AND a.bytes < 65536
  AND NOT (SELECT copies OR interposed FROM cupti_present)
UNION ALL
-- a worker thread that only waits (issues no launch and no copy) drains what another thread read back
SELECT pid, tid, end_ns, end_ns - start_ns, 'worker_sync', 1, name
FROM syncs WHERE (pid, tid) NOT IN (SELECT (pid, tid) FROM issuers)
UNION ALL
SELECT pid, tid, end_ns, end_ns - start_ns, 'driver_sync', 2, name
FROM syncs WHERE domain = 'driver' AND (pid, tid) IN (SELECT (pid, tid) FROM issuers);

-- Recurring calls, only where nothing above marks an iteration: every call but launches and syncs,
-- by (name, bytes, copy kind) on its thread (a CUPTI call's bytes and kind are its copy's).
SET VARIABLE detect_period = getvariable('marked_source') IS NULL AND NOT EXISTS (SELECT 1 FROM step_ends);
INSERT INTO step_ends
SELECT a.pid, a.tid, a.start_ns, 0, 'period', 3,
       concat_ws(':', a.name, coalesce(a.bytes, c.bytes), coalesce(a.copy_kind, c.copy_kind))
FROM calls a SEMI JOIN (SELECT name FROM call_names WHERE NOT launch AND NOT sync) USING (name)
LEFT JOIN copies c ON c.pid = a.pid AND c.correlation_id = a.correlation_id AND a.correlation_id > 0
WHERE getvariable('detect_period');

-- Host<->device crossings in time order, each with its rank (k): how many started by start_ns. A
-- GPU copy, else (host-probe-only traces) the copy call. A step of the program's loop moves data
-- (inputs in, results out); the intervals of a burst of syncs at start-up (compilation, autotuning)
-- or of several marks per step (piecewise CUDA graphs: one replay per piece) mostly move none.
--   start_ns, k
CREATE OR REPLACE TEMP TABLE crossing_seq AS
SELECT start_ns, row_number() OVER (ORDER BY start_ns) AS k FROM (
    SELECT start_ns FROM copies WHERE copy_kind IN ('HtoD', 'DtoH')
    UNION ALL
    SELECT start_ns FROM api_calls
    WHERE copy_kind IN ('HtoD', 'DtoH') AND NOT EXISTS (SELECT 1 FROM copies WHERE copy_kind IN ('HtoD', 'DtoH'))
) WHERE getvariable('marked_source') IS NULL;

-- Candidate groups: one signature on one thread, and (for a thread whose readbacks mix several places
-- in the step, as HF generate's .item() calls do, or that replays several graph pieces per step) one
-- signature in one context: the number of calls the thread made since the signature's previous
-- candidate (since its first call, for the first), in powers of 4. A group marks steps (ok) when it
-- has min_steps members, is regular (80% of its gaps within 0.5-1.5x the median gap), is not sparse
-- (a quarter of the members of its rank's largest group, so that a swap every 25 steps does not stand
-- for the step) and moves data (more than half as many of its intervals hold a crossing as those of
-- the candidate whose intervals hold one most often among its rivals, those that run on past its
-- middle; all do where none holds one: a start-up burst of syncs that moves nothing is not the loop
-- after it, and a loop that keeps its data on the device is still the loop after a burst of loads). The steps are the
-- ok group of the first rank with the most members; without one, the largest group of the first rank
-- among those that move data.
--   pid, tid, rank, kind; grp: signature[/context]; n: members; wait_ns: its calls' total time
--   regular: the share of regular gaps; moves: the share of its intervals in which a crossing started
--   first_ns, last_ns: its first and last end
CREATE OR REPLACE TEMP TABLE step_groups AS
WITH e AS (
    SELECT s.*, t - lag(t) OVER w AS gap, coalesce(x.k, 0) - lag(coalesce(x.k, 0)) OVER w AS crossed
    FROM step_ends s ASOF LEFT JOIN crossing_seq x ON s.t >= x.start_ns
    WINDOW w AS (PARTITION BY s.pid, s.tid, s.rank, s.sig ORDER BY s.t)
), g AS (
    SELECT pid, tid, rank, sig AS grp, any_value(kind) AS kind, count(*) AS n, sum(wait_ns) AS wait_ns,
           count(*) FILTER (WHERE gap BETWEEN 0.5 * med_gap AND 1.5 * med_gap) / greatest(count(gap), 1) AS regular,
           count(*) FILTER (WHERE crossed > 0) / greatest(count(gap), 1) AS moves, min(t) AS first_ns, max(t) AS last_ns
    FROM (SELECT *, median(gap) OVER (PARTITION BY pid, tid, rank, sig) AS med_gap FROM e)
    GROUP BY ALL
)
SELECT pid, tid, rank, grp, kind, n, wait_ns, regular, moves, first_ns, last_ns FROM g;

--   step_groups' columns; moving: the group moves data; ok: the group marks steps
CREATE OR REPLACE TEMP VIEW step_groups_ok AS
WITH g AS (
    SELECT * FROM step_groups WHERE getvariable('steps_from') IN ('auto', kind)
), b AS (  -- the groups that may be rivals: enough members, some moving (one that moves nothing outranks none)
    SELECT n, moves, first_ns, last_ns FROM g WHERE n >= getvariable('min_steps') AND moves > 0
), by_end AS (  -- per last end: the most moving group that ends then or later
    SELECT last_ns, max(max(moves)) OVER (ORDER BY last_ns DESC) AS moves FROM b GROUP BY last_ns
), r AS (  -- rival_moves: the most often moving rival's share (a rival runs on past its middle: a burst
    -- before the loop is none of the loop's); a group short of min_steps is never picked over one that has them
    SELECT a.*, CASE WHEN a.n >= getvariable('min_steps') THEN coalesce(f.moves, 0) ELSE 0 END AS rival_moves
    FROM g a ASOF LEFT JOIN by_end f ON f.last_ns >= (a.first_ns + a.last_ns) / 2
), m AS (
    SELECT * EXCLUDE (rival_moves), 2 * moves > rival_moves OR rival_moves = 0 AS moving FROM r
)
SELECT *, n >= getvariable('min_steps') AND regular >= 0.8 AND 4 * n >= max(n) OVER (PARTITION BY rank) AND moving AS ok
FROM m;

-- The first two ranks' ends again, by signature and context (the groups added to step_groups).
--   pid, tid, t, wait_ns, kind, rank; grp: signature/context; gap: since the group's previous end;
--   crossed: the crossings started since then
CREATE OR REPLACE TEMP TABLE step_ends_ctx AS
WITH c AS (
    SELECT pid, tid, start_ns, row_number() OVER (PARTITION BY pid, tid ORDER BY start_ns) AS i
    FROM calls WHERE (pid, tid) IN (SELECT pid, tid FROM step_ends WHERE rank < 3)
), e AS (
    SELECT s.*, c.i FROM step_ends s ASOF JOIN c ON s.pid = c.pid AND s.tid = c.tid AND s.t >= c.start_ns
    WHERE s.rank < 3
), k AS (
    SELECT *, i - lag(i, 1, 0) OVER (PARTITION BY pid, tid, rank, sig ORDER BY t) AS since FROM e
), x AS (
    SELECT k.*, k.sig || '/' || floor(log(4, 1 + k.since))::INT AS grp, coalesce(x.k, 0) AS crossings
    FROM k ASOF LEFT JOIN crossing_seq x ON k.t >= x.start_ns
)
SELECT pid, tid, t, wait_ns, kind, rank, grp, t - lag(t) OVER w AS gap, crossings - lag(crossings) OVER w AS crossed
FROM x WINDOW w AS (PARTITION BY pid, tid, rank, grp ORDER BY t);

INSERT INTO step_groups
SELECT pid, tid, rank, grp, any_value(kind), count(*), sum(wait_ns),
       count(*) FILTER (WHERE gap BETWEEN 0.5 * med_gap AND 1.5 * med_gap) / greatest(count(gap), 1),
       count(*) FILTER (WHERE crossed > 0) / greatest(count(gap), 1), min(t), max(t)
FROM (SELECT *, median(gap) OVER (PARTITION BY pid, tid, rank, grp) AS med_gap FROM step_ends_ctx)
GROUP BY pid, tid, rank, grp;

-- (groups within 5% of the most members are as good: of those, the one whose calls waited longest,
-- the end of the step's GPU work rather than a check early in it)
CREATE OR REPLACE TEMP TABLE step_pick AS
SELECT * EXCLUDE (ok, moving) FROM step_groups_ok
ORDER BY n >= getvariable('min_steps') DESC, ok DESC, moving DESC, rank,
         n >= 0.95 * max(n) OVER (PARTITION BY ok, moving, rank) DESC, wait_ns DESC, n DESC, grp
LIMIT 1;

-- The steps: marked ranges, else the intervals between consecutive ends of the picked group, each
-- inside one traced span (an interval across time that was not traced, a detach, is no step) and, where
-- its process has tracing windows, inside one of them (its own detach is no step while another process
-- was traced).
--   step: 1-based, in time order; name: the range's name or the detector's kind; pid, tid: its thread
--   start_ns, end_ns: the step; step_source: nvtx | step_function | readback | graph_replay |
--   driver_sync | worker_sync | period
CREATE OR REPLACE TEMP TABLE steps AS
WITH ends AS (
    SELECT e.pid, e.tid, e.t, p.kind FROM step_ends e JOIN step_pick p
        ON e.pid = p.pid AND e.tid = p.tid AND e.rank = p.rank AND e.sig = p.grp
    UNION ALL
    SELECT e.pid, e.tid, e.t, p.kind FROM step_ends_ctx e JOIN step_pick p
        ON e.pid = p.pid AND e.tid = p.tid AND e.rank = p.rank AND e.grp = p.grp
), detected AS (
    SELECT kind AS name, pid, tid, lag(t) OVER (ORDER BY t) AS start_ns, t AS end_ns, kind AS step_source FROM ends
)
SELECT row_number() OVER (ORDER BY start_ns) AS step, * FROM (
    SELECT name, pid, tid, start_ns, end_ns, step_source FROM marked_steps
    WHERE step_source = getvariable('marked_source')
    UNION ALL
    SELECT * FROM detected WHERE start_ns IS NOT NULL AND getvariable('marked_source') IS NULL
) s
WHERE EXISTS (SELECT 1 FROM traced t WHERE s.start_ns >= t.start_ns AND s.end_ns <= t.end_ns)
  AND (NOT EXISTS (SELECT 1 FROM process_windows w WHERE w.pid = s.pid)
       OR EXISTS (SELECT 1 FROM process_windows w WHERE w.pid = s.pid AND s.start_ns >= w.start_ns
                  AND s.end_ns <= w.end_ns));

-- The analysed window: first step start to last step end, else everything recorded, within the
-- traced time (an event outside it does not widen the window).
--   start_ns, end_ns: the window; steps: how many; nvtx: steps are NVTX ranges; step_source: how
--   steps were found (none without); step_median_ns, step_p10_ns, step_p90_ns: how regular they are
--   traced_ns: the traced time inside the window (its length, less what lay between tracing windows)
CREATE OR REPLACE TEMP TABLE win AS
WITH ev AS (
    SELECT start_ns, end_ns FROM copies UNION ALL SELECT start_ns, end_ns FROM api_calls
    UNION ALL SELECT start_ns, end_ns FROM kernels
), w AS (
    SELECT greatest(coalesce((SELECT min(start_ns) FROM steps), (SELECT min(start_ns) FROM ev)),
                    (SELECT min(start_ns) FROM traced)) AS start_ns,
           least(coalesce((SELECT max(end_ns) FROM steps), (SELECT max(end_ns) FROM ev)),
                 (SELECT max(end_ns) FROM traced)) AS end_ns
)
SELECT w.start_ns, w.end_ns,
       (SELECT count(*) FROM steps) AS steps,
       coalesce((SELECT any_value(step_source) FROM steps), 'none') = 'nvtx' AS nvtx,
       coalesce((SELECT any_value(step_source) FROM steps), 'none') AS step_source,
       (SELECT median(end_ns - start_ns) FROM steps) AS step_median_ns,
       (SELECT quantile_cont(end_ns - start_ns, 0.1) FROM steps) AS step_p10_ns,
       (SELECT quantile_cont(end_ns - start_ns, 0.9) FROM steps) AS step_p90_ns,
       (SELECT sum(greatest(least(t.end_ns, w.end_ns) - greatest(t.start_ns, w.start_ns), 0)) FROM traced t)::BIGINT
           AS traced_ns
FROM w;
