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
)
SELECT c.pid, c.stream_id, o.stream_id AS blocked_by_stream, c.start_ns AS copy_start_ns,
       least(o.end_ns, c.start_ns) - greatest(o.start_ns, c.ready_ns) AS wait_ns, c.correlation_id, c.bytes,
       c.source
FROM (SELECT * FROM c WHERE c.start_ns > c.ready_ns) c
-- only the two range conditions in the join, so DuckDB uses its inequality join (IEJoin)
JOIN o ON o.start_ns < c.start_ns AND o.end_ns > c.ready_ns
WHERE o.pid = c.pid AND o.stream_id <> c.stream_id;
