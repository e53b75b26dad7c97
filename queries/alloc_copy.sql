-- name: alloc_copy
-- answers: Where is memory allocated and immediately copied into (the tensor-from-Python-list pattern)?
-- needs: calls
-- columns: alloc_call, copy_call, tid, pairs, alloc_ms, copy_ms, total_ms, pairs_per_step
SELECT alloc_call, copy_call, tid, count(*) AS pairs, round(sum(alloc_call_ns) / 1e6, 3) AS alloc_ms,
       round(sum(copy_call_ns) / 1e6, 3) AS copy_ms, round(sum(alloc_call_ns + copy_call_ns) / 1e6, 3) AS total_ms,
       round(count(*) / greatest((SELECT steps FROM win), 1), 2) AS pairs_per_step
FROM alloc_copy_pairs GROUP BY ALL ORDER BY total_ms DESC;
