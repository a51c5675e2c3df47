-- click_stats_daily_top_items: the most clicked items of each event_date x category x
-- item_type, and a bound on every item left out. A rollup of click_stats_daily_items (its
-- source), from which the top_items panel proves its answer exact without reading the
-- long tail (see docs/rollups-and-panels.md).
--
-- Listed: every item whose clicks are at least the group's cut-off, where the cut-off is the
-- lowest click count that still lists at most 50 items (ties are listed together or not at
-- all, so a list can hold fewer than 50). `unlisted_max`, on every row, is the most clicks
-- any unlisted item of the row's day and group had (0: none is left out). One more row per
-- day and group has item_id NULL and that bound as its `clicks`, so that a group whose list
-- is empty is still there.
-- {dates} is the set of event_dates to recompute (TRUE on a rebuild).
WITH items AS (
    SELECT event_date, category, item_type, item_id, clicks, human_clicks, unique_users,
           users_sketch
    FROM click_stats_daily_items
    WHERE {dates}
),
counts AS (
    SELECT event_date, category, item_type, clicks, count(*) AS n
    FROM items
    GROUP BY 1, 2, 3, 4
),
cut AS (
    SELECT event_date, category, item_type,
           min(clicks) FILTER (WHERE at_least <= 50) AS listed_from,
           coalesce(max(clicks) FILTER (WHERE at_least > 50), 0) AS unlisted_max
    FROM (
        -- at_least: how many items of the group have at least this many clicks.
        SELECT *, sum(n) OVER (PARTITION BY event_date, category, item_type
                               ORDER BY clicks DESC) AS at_least
        FROM counts
    )
    GROUP BY 1, 2, 3
)
SELECT i.event_date, i.category, i.item_type, i.item_id,
       i.clicks, i.human_clicks, i.unique_users, i.users_sketch, c.unlisted_max
FROM items i
JOIN cut c
  ON (i.event_date IS NOT DISTINCT FROM c.event_date)
 AND (i.category IS NOT DISTINCT FROM c.category)
 AND (i.item_type IS NOT DISTINCT FROM c.item_type)
WHERE i.clicks >= c.listed_from
  -- The lowest cut-off of all groups first: most of the long tail never reaches the join.
  AND i.clicks >= (SELECT min(listed_from) FROM cut)
UNION ALL
SELECT event_date, category, item_type, CAST(NULL AS VARCHAR),
       unlisted_max AS clicks, CAST(NULL AS BIGINT), CAST(NULL AS BIGINT), NULL, unlisted_max
FROM cut
