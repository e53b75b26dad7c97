-- module: truth
-- needs: steps
-- answers: What did the bridge emulator inject inside the analysed window (its ground truth), per kind
-- and per category? Empty for traces recorded without --emulate-bridge or before bridge_injections.

-- Injections whose wait began inside the window, per kind.
--   kind: toll | bandwidth | serialize | async_block; injections: how many; ns: their time
CREATE OR REPLACE TEMP TABLE injected_in_window AS
SELECT b.kind, count(*) AS injections, sum(b.ns)::BIGINT AS ns
FROM bridge_injections b, win
WHERE b.ts_ns >= win.start_ns AND b.ts_ns <= win.end_ns
GROUP BY ALL;

-- The same by the category whose time each kind is (categories.injected_kinds); kinds no category
-- explains appear with category NULL.
--   category (NULL: no category); kinds: the kinds summed; injections; ns
CREATE OR REPLACE TEMP TABLE injected_by_category AS
SELECT k.category, list(i.kind ORDER BY i.kind) AS kinds, sum(i.injections)::BIGINT AS injections,
       sum(i.ns)::BIGINT AS ns
FROM injected_in_window i LEFT JOIN (SELECT category, unnest(injected_kinds) AS kind FROM categories) k USING (kind)
GROUP BY k.category;
