-- name: ground_truth
-- answers: What the bridge emulator injected inside the window against what each category explains (traces recorded with --emulate-bridge; empty before bridge_injections existed).
-- needs: categories, truth
-- columns: category, injected_kinds, injections, injected_ms, explained_ms, explained_share
SELECT i.category, array_to_string(i.kinds, '+') AS injected_kinds, i.injections, round(i.ns / 1e6, 3) AS injected_ms,
       round(t.lost_ns / 1e6, 3) AS explained_ms,
       CASE WHEN i.category IS NOT NULL AND i.ns > 0 THEN round(t.lost_ns / i.ns, 4) END AS explained_share
FROM injected_by_category i LEFT JOIN category_totals t USING (category)
ORDER BY injected_ms DESC;
