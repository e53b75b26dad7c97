-- module: concurrency
-- needs: transfers
-- answers: Lost stream concurrency: how long copies waited for the bridge while another stream's held it.

-- How many streams carried H2D/D2H copies in the window (with one, no copy waits for another's).
--   n: streams
CREATE OR REPLACE TEMP TABLE copy_streams AS
SELECT count(DISTINCT stream_id) AS n FROM xfer_dir WHERE copy_kind IN ('HtoD', 'DtoH');

-- Per (delayed copy, copy of another stream that held the bridge): the part of the delayed copy's
-- ready-to-start wait that the other copy covered.
--   pid, stream_id: the delayed copy's; blocked_by_stream: the other copy's stream
--   copy_start_ns: when the delayed copy started; wait_ns: the wait the other copy covered
--   correlation_id, bytes, source: the delayed copy's call (and who recorded it) and size
CREATE OR REPLACE TEMP TABLE bridge_waits AS
WITH c AS MATERIALIZED (
    SELECT x.pid, x.stream_id, x.start_ns, greatest(x.api_start_ns, coalesce(x.stream_free_ns, 0)) AS ready_ns,
           x.correlation_id, x.bytes, x.api_source AS source
    FROM xfer_dir x
    WHERE x.timing = 'gpu' AND x.copy_kind IN ('HtoD', 'DtoH') AND x.api_start_ns IS NOT NULL
      -- with copies on one stream only no copy can wait for another stream's: skip all of this
      AND (SELECT n FROM copy_streams) > 1
), o AS MATERIALIZED (
    SELECT pid, stream_id, start_ns, end_ns FROM xfer_dir WHERE copy_kind IN ('HtoD', 'DtoH')
),
-- Overlaps found through 1 ms buckets of time (an equality join on pid and bucket, then the exact test):
-- a range join of every copy against every other took seconds per 100k copies. Each interval lists the
-- buckets it touches; a pair is kept in the first bucket both touch, so once. An interval over 1,000
-- buckets (a second: rare, or a damaged timestamp) is joined by range instead, so no list grows with it.
cs AS (
    SELECT *, (c.start_ns - 1) // 1000000 - c.ready_ns // 1000000 > 1000 AS long
    FROM c WHERE c.start_ns > c.ready_ns
), os AS (
    SELECT *, greatest(o.start_ns, o.end_ns - 1) // 1000000 - o.start_ns // 1000000 > 1000 AS long FROM o
), cb AS (
    SELECT cs.*, b.bucket FROM cs, unnest(range(cs.ready_ns // 1000000, (cs.start_ns - 1) // 1000000 + 1)) AS b(bucket)
    WHERE NOT cs.long
), ob AS (
    SELECT os.*, b.bucket FROM os,
        unnest(range(os.start_ns // 1000000, greatest(os.start_ns, os.end_ns - 1) // 1000000 + 1)) AS b(bucket)
    WHERE NOT os.long
), pairs AS (
    SELECT c.pid, c.stream_id, c.start_ns, c.ready_ns, c.correlation_id, c.bytes, c.source,
           o.stream_id AS o_stream, o.start_ns AS o_start, o.end_ns AS o_end
    FROM cb c JOIN ob o ON o.pid = c.pid AND o.bucket = c.bucket
    WHERE o.start_ns < c.start_ns AND o.end_ns > c.ready_ns AND o.stream_id <> c.stream_id
      AND c.bucket = greatest(o.start_ns // 1000000, c.ready_ns // 1000000)
    UNION ALL  -- a long wait: by range against every copy (few rows on one side)
    SELECT c.pid, c.stream_id, c.start_ns, c.ready_ns, c.correlation_id, c.bytes, c.source,
           o.stream_id, o.start_ns, o.end_ns
    FROM (SELECT * FROM cs WHERE long) c JOIN os o ON o.start_ns < c.start_ns AND o.end_ns > c.ready_ns
    WHERE o.pid = c.pid AND o.stream_id <> c.stream_id
    UNION ALL  -- a short wait against a long copy: by range against the long ones
    SELECT c.pid, c.stream_id, c.start_ns, c.ready_ns, c.correlation_id, c.bytes, c.source,
           o.stream_id, o.start_ns, o.end_ns
    FROM (SELECT * FROM cs WHERE NOT long) c JOIN (SELECT * FROM os WHERE long) o
         ON o.start_ns < c.start_ns AND o.end_ns > c.ready_ns
    WHERE o.pid = c.pid AND o.stream_id <> c.stream_id
)
SELECT pid, stream_id, o_stream AS blocked_by_stream, start_ns AS copy_start_ns,
       least(o_end, start_ns) - greatest(o_start, ready_ns) AS wait_ns, correlation_id, bytes, source
FROM pairs;
