-- title: Top items
-- description: The most clicked items, with their unique users over the whole period.
-- params: from, to, category, item_type, limit
-- reads: click_stats_daily_items
WITH f AS (
    SELECT * FROM click_stats_daily_items
    WHERE event_date BETWEEN {from} AND {to}
      AND ({category} IS NULL OR category = {category})
      AND ({item_type} IS NULL OR item_type = {item_type})
),
top AS (
    SELECT item_id, sum(clicks) AS clicks
    FROM f
    GROUP BY item_id
    ORDER BY clicks DESC, item_id
    LIMIT {limit}
)
SELECT f.item_id, f.item_type, f.category,
       sum(f.clicks) AS clicks,
       sum(f.human_clicks) AS human_clicks,
       hll_count(hll_merge(f.users_sketch)) AS unique_users
FROM f JOIN top ON f.item_id = top.item_id
GROUP BY f.item_id, f.item_type, f.category
ORDER BY clicks DESC, f.item_id
