-- title: Per category
-- description: Clicks, human clicks and unique users per category, with each category's share of clicks.
-- params: from, to, item_type, source
-- reads: click_stats_daily
WITH c AS (
    SELECT category, item_type,
           sum(clicks) AS clicks,
           sum(human_clicks) AS human_clicks,
           hll_count(hll_merge(users_sketch)) AS unique_users
    FROM click_stats_daily
    WHERE event_date BETWEEN {from} AND {to}
      AND ({item_type} IS NULL OR item_type = {item_type})
      AND ({source} IS NULL OR source = {source})
    GROUP BY category, item_type
)
SELECT category, item_type, clicks, human_clicks, unique_users,
       round(100.0 * clicks / sum(clicks) OVER (), 2) AS share_pct
FROM c
ORDER BY clicks DESC, category
