-- module: transfers
-- needs: steps
-- answers: Every host<->device transfer in the window, with its issuing call and its crossing time.
-- Parameters: launch_gap_us, normal_call_us.

-- Every transfer with its issuing call: CUPTI copies; else the interposer's copies (host call times:
-- their GPU time is unknown and approximated by the call's duration; the crossings a graph launch
-- replays carry the launch's times, and get their share of it below, as CUPTI's do); else
-- (host-probe-only traces) the probed copy calls, timed the same way.
--   copy_row: the copy's row (CUPTI); copy_kind, src_kind, dst_kind, bytes, start_ns, end_ns, stream_id
--   correlation_id, api_name, api_tid, api_start_ns, api_end_ns: the issuing call
--   timing: gpu (CUPTI copy times) | host (the call's); on_cpu_ns, off_cpu_ns, ioctl_ns: host probes
--   (on the interposer's calls too, joined at decode)
--   api_source: who recorded the call
CREATE OR REPLACE TEMP VIEW xfers AS
SELECT c.copy_row, c.pid, c.copy_kind, c.src_kind, c.dst_kind, c.bytes, c.start_ns, c.end_ns, c.stream_id,
       c.correlation_id, c.api_name, c.api_tid, c.api_start_ns, c.api_end_ns,
       CASE WHEN c.source = 'interposer' THEN 'host' ELSE 'gpu' END AS timing,
       c.api_on_cpu_ns AS on_cpu_ns, c.api_off_cpu_ns AS off_cpu_ns, c.api_ioctl_ns AS ioctl_ns, c.source AS api_source
FROM copies_with_api c WHERE c.op IN ('memcpy', 'p2p')
  AND (c.source <> 'interposer' OR NOT (SELECT copies FROM cupti_present))
UNION ALL
SELECT NULL::BIGINT, a.pid, a.copy_kind, 'unknown', 'unknown', a.bytes, a.start_ns, a.end_ns, a.stream::BIGINT,
       a.correlation_id, a.name, a.tid, a.start_ns, a.end_ns, 'host', a.on_cpu_ns, a.off_cpu_ns, a.ioctl_ns, a.source
FROM api_calls a
WHERE a.source = 'ebpf' AND a.bytes IS NOT NULL AND a.copy_kind IS NOT NULL
  AND NOT (SELECT copies OR interposed FROM cupti_present);

-- Each transfer in the window with its crossing time: the GPU copy plus the host work of its call
-- right before it (staging/encrypting before the copy could start, not waiting for the stream) and
-- right after it (copying out/decrypting after it landed). Host-probe-only transfers have only the
-- call's duration. One window pass over each stream's work, keyed by the copy's row.
--   xfers' columns (but copy_row, src_kind, dst_kind), and
--   host_kind: the host side's memory kind (device for DtoD/PtoP); dur_ns: the copy's time
--   stream_free_ns: when its stream became free (latest end of the copies and kernels before it)
--   pre_ns, post_ns: the call's host work before and after the copy; cross_ns: dur + pre + post
-- Copies a graph replay made (its memcpy nodes), per launch: the launch's host time beyond a normal
-- call is theirs (the bridge tolls each node in the launch), shared equally, and no async stall. The
-- interposer's replayed crossings have no time of their own (they carry the launch's): that share is all.
--   pid, correlation_id, source: the launch (and who recorded it); copies: its memcpy nodes in the trace
CREATE OR REPLACE TEMP TABLE graph_copies AS
SELECT pid, correlation_id, api_source AS source, count(*) AS copies FROM xfers
WHERE api_name IN (SELECT name FROM call_names WHERE graph_launch)
GROUP BY ALL;

CREATE OR REPLACE TEMP TABLE xfer_dir AS
WITH ops AS (
    SELECT pid, stream_id, start_ns, end_ns, rowid AS copy_row FROM copies WHERE op IN ('memcpy', 'p2p')
    UNION ALL
    SELECT pid, stream_id, start_ns, end_ns, NULL FROM kernels
), stream_free AS (
    SELECT copy_row, max(end_ns) OVER (PARTITION BY pid, stream_id ORDER BY start_ns, end_ns
                                       ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS stream_free_ns
    FROM ops QUALIFY copy_row IS NOT NULL
), d AS (
    SELECT x.* EXCLUDE (copy_row, src_kind, dst_kind),
           CASE x.copy_kind WHEN 'HtoD' THEN x.src_kind WHEN 'DtoH' THEN x.dst_kind ELSE 'device' END AS host_kind,
           CASE WHEN g.copies IS NOT NULL AND x.timing = 'host' THEN 0 ELSE x.end_ns - x.start_ns END AS dur_ns,
           f.stream_free_ns,
           -- a copy that started well after its call returned was held by something else, not by the call
           CASE WHEN g.copies IS NOT NULL
                THEN greatest(x.api_end_ns - x.api_start_ns - getvariable('normal_call_us') * 1000, 0) // g.copies
                WHEN x.timing = 'gpu' AND x.api_start_ns IS NOT NULL
                     AND x.start_ns <= x.api_end_ns + getvariable('launch_gap_us') * 1000
                THEN greatest(least(x.start_ns, x.api_end_ns) - greatest(x.api_start_ns, coalesce(f.stream_free_ns, 0)), 0)
                ELSE 0 END AS pre_ns,
           CASE WHEN x.timing = 'gpu' AND x.api_end_ns IS NOT NULL AND g.copies IS NULL
                THEN greatest(x.api_end_ns - greatest(x.end_ns, x.api_start_ns), 0)
                ELSE 0 END AS post_ns
    FROM xfers x LEFT JOIN stream_free f USING (copy_row)
    LEFT JOIN graph_copies g ON g.pid = x.pid AND g.correlation_id = x.correlation_id AND g.source = x.api_source, win
    WHERE x.copy_kind IN ('HtoD', 'DtoH', 'DtoD', 'PtoP') AND x.start_ns >= win.start_ns AND x.start_ns <= win.end_ns
)
SELECT *, dur_ns + pre_ns + post_ns AS cross_ns FROM d;
