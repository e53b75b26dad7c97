-- name: attribution
-- answers: Where did the serving time go? Lost time per boundary effect, in total, per step and as a share of the window.
-- needs: categories
-- columns: category, events, lost_ms, per_step_us, pct_of_window, gpu_idle_overlap_ms
SELECT t.category, t.events, round(t.lost_ns / 1e6, 3) AS lost_ms,
       round(t.lost_ns / 1e3 / greatest(win.steps, 1), 3) AS per_step_us,
       round(100 * t.lost_ns / greatest(win.traced_ns, 1), 2) AS pct_of_window,
       round(t.idle_ns / 1e6, 3) AS gpu_idle_overlap_ms
FROM category_totals t CROSS JOIN win
ORDER BY lost_ms DESC, t.c;
