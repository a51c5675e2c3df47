-- title: Top items
-- description: The most clicked items (an item is its id, type and category), with their unique users over the whole period.
-- params: from, to, category, item_type, limit
-- reads: click_stats_daily_top_items, click_stats_daily_items
-- current: click_stats_daily_top_items
-- fallback: when the daily top lists cannot prove the answer, the statement after `-- fallback` reads every item
--
-- From the daily top lists (click_stats_daily_top_items), proven exact or not used.
-- Per item: `lo` = its listed clicks; `hi` = lo plus, for every day it is not listed, the most
-- clicks an unlisted item of its group had that day (`unlisted_max`). An item never listed has
-- at most `open`, the sum of those daily bounds over its group. With `nth` the limit-th
-- largest lo:
--   * an item whose hi is below nth cannot be in the answer (limit items have at least nth);
--   * the answer is proven when every unlisted item is below nth (max open < nth, or nothing
--     is unlisted) and every item with hi >= nth is complete (hi = lo: listed on every day
--     that left anything out). Then the listed rows are all of its rows, sketches included.
-- Otherwise `proven` is false (or no row is listed) and the fallback answers. One grouping
-- gives every item's lo and every group's open (the rows with item_id NULL), the windows run
-- over those few thousand rows, and one more scan reads the sketches of the chosen items.
WITH t AS (
    SELECT * FROM click_stats_daily_top_items
    -- Lists a run behind the items table give no row: the fallback answers.
    WHERE {current}
      AND event_date BETWEEN {from} AND {to}
      AND ({category} IS NULL OR category = {category})
      AND ({item_type} IS NULL OR item_type = {item_type})
),
agg AS (
    SELECT item_id, item_type, category, sum(clicks) AS lo, sum(unlisted_max) AS covered
    FROM t
    GROUP BY item_id, item_type, category
),
keys AS (
    SELECT item_id, item_type, category, lo, lo + open - covered AS hi, max_open
    FROM (
        SELECT *,
               max(CASE WHEN item_id IS NULL THEN lo END)
                   OVER (PARTITION BY category, item_type) AS open,
               coalesce(max(CASE WHEN item_id IS NULL THEN lo END) OVER (), 0) AS max_open
        FROM agg
    )
    WHERE item_id IS NOT NULL
),
ranked AS (
    SELECT *,
           row_number() OVER (ORDER BY lo DESC, item_id, item_type, category) AS rank
    FROM keys
),
judged AS (
    SELECT *,
           coalesce(max(CASE WHEN rank = {limit} THEN lo END) OVER (), 0) AS nth
    FROM ranked
),
top AS (
    SELECT item_id, item_type, category, rank <= {limit} AS chosen,
           (max_open = 0 OR max_open < nth)
           -- (Written so that a NULL anywhere counts against the proof.)
           AND sum(CASE WHEN hi < nth OR hi = lo THEN 0 ELSE 1 END) OVER () = 0 AS proven
    FROM judged
)
SELECT t.item_id, t.item_type, t.category,
       sum(t.clicks) AS clicks,
       sum(t.human_clicks) AS human_clicks,
       hll_count(hll_merge(t.users_sketch)) AS unique_users,
       bool_and(top.proven) AS proven
FROM t JOIN top
  ON t.item_id = top.item_id
 AND (t.item_type IS NOT DISTINCT FROM top.item_type)
 AND (t.category IS NOT DISTINCT FROM top.category)
WHERE top.chosen
GROUP BY t.item_id, t.item_type, t.category
ORDER BY clicks DESC, t.item_id, t.item_type, t.category
-- fallback
WITH f AS (
    SELECT * FROM click_stats_daily_items
    WHERE event_date BETWEEN {from} AND {to}
      AND ({category} IS NULL OR category = {category})
      AND ({item_type} IS NULL OR item_type = {item_type})
),
top AS (
    SELECT item_id, item_type, category, sum(clicks) AS clicks
    FROM f
    GROUP BY item_id, item_type, category
    ORDER BY clicks DESC, item_id, item_type, category
    LIMIT {limit}
)
SELECT f.item_id, f.item_type, f.category,
       sum(f.clicks) AS clicks,
       sum(f.human_clicks) AS human_clicks,
       hll_count(hll_merge(f.users_sketch)) AS unique_users
FROM f JOIN top
  ON f.item_id = top.item_id
 AND (f.item_type IS NOT DISTINCT FROM top.item_type)
 AND (f.category IS NOT DISTINCT FROM top.category)
GROUP BY f.item_id, f.item_type, f.category
ORDER BY clicks DESC, f.item_id, f.item_type, f.category
