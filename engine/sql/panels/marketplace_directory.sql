-- title: Marketplace and directory KPIs
-- description: Per item type (marketplace listings, directory sites): items clicked, clicks, clicks per listing or site, unique users.
-- params: from, to, source
-- reads: click_stats_daily, click_stats_daily_items
WITH items AS (
    SELECT item_type, count(DISTINCT item_id) AS items_clicked
    FROM click_stats_daily_items
    WHERE event_date BETWEEN {from} AND {to}
      AND item_type IN ('marketplace_listing', 'directory_site')
    GROUP BY item_type
),
clicks AS (
    SELECT item_type,
           sum(clicks) AS clicks,
           sum(human_clicks) AS human_clicks,
           hll_count(hll_merge(users_sketch)) AS unique_users
    FROM click_stats_daily
    WHERE event_date BETWEEN {from} AND {to}
      AND item_type IN ('marketplace_listing', 'directory_site')
      AND ({source} IS NULL OR source = {source})
    GROUP BY item_type
)
SELECT c.item_type, i.items_clicked, c.clicks, c.human_clicks, c.unique_users,
       round(CAST(c.clicks AS DOUBLE) / nullif(i.items_clicked, 0), 2) AS clicks_per_item
FROM clicks c JOIN items i ON c.item_type = i.item_type
ORDER BY c.item_type
