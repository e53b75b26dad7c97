-- module: traced
-- needs:
-- answers: When did the recording trace? (record --delay/--duration/--toggle-signal and attach trace
-- windows; between them nothing was recorded, so no idle GPU, no step and no lost time can be seen there)

-- Every recorded event's span, for a trace without windows (traced throughout) and for a window the
-- process never closed (killed inside it).
--   start_ns, end_ns
CREATE OR REPLACE TEMP TABLE recorded_span AS
SELECT min(start_ns) AS start_ns, max(end_ns) AS end_ns FROM (
    SELECT start_ns, end_ns FROM copies UNION ALL SELECT start_ns, end_ns FROM api_calls
    UNION ALL SELECT start_ns, end_ns FROM kernels UNION ALL SELECT start_ns, end_ns FROM markers
);

-- Each process's tracing windows (the loaded table traced_windows; none: traced throughout), a window
-- the process never closed ending at the last recorded event.
--   pid, start_ns, end_ns: a window
CREATE OR REPLACE TEMP TABLE process_windows AS
SELECT pid, start_ns, coalesce(end_ns, greatest((SELECT end_ns FROM recorded_span), start_ns)) AS end_ns
FROM traced_windows;

-- The traced time as disjoint spans in time order: the processes' windows merged, else one span over
-- every recorded event.
--   start_ns, end_ns: a span
CREATE OR REPLACE TEMP TABLE traced AS
WITH w AS (
    SELECT start_ns, end_ns FROM process_windows
), e AS (  -- a window that starts after every earlier one ended begins a new span
    SELECT *, max(end_ns) OVER (ORDER BY start_ns, end_ns ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS before
    FROM w
), s AS (
    SELECT *, sum(CASE WHEN before >= start_ns THEN 0 ELSE 1 END) OVER (ORDER BY start_ns, end_ns ROWS UNBOUNDED PRECEDING) AS span
    FROM e
)
SELECT min(start_ns) AS start_ns, max(end_ns) AS end_ns FROM s GROUP BY span
UNION ALL
SELECT start_ns, end_ns FROM recorded_span
WHERE NOT EXISTS (SELECT 1 FROM traced_windows) AND start_ns IS NOT NULL
ORDER BY start_ns;

-- What was traced, in one row.
--   windows: traced spans (NULL: the recording had no windows, the whole run was traced)
--   traced_ns: their time
CREATE OR REPLACE TEMP TABLE traced_summary AS
SELECT CASE WHEN EXISTS (SELECT 1 FROM traced_windows) THEN count(*) END AS windows,
       coalesce(sum(end_ns - start_ns), 0)::BIGINT AS traced_ns
FROM traced;
