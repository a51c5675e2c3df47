-- title: Traffic sources
-- description: Where clicks come from: clicks, human clicks and unique users per source, with its share.
-- params: from, to, category, item_type
-- reads: click_stats_daily
WITH s AS (
    SELECT source,
           sum(clicks) AS clicks,
           sum(human_clicks) AS human_clicks,
           hll_count(hll_merge(users_sketch)) AS unique_users
    FROM click_stats_daily
    WHERE event_date BETWEEN {from} AND {to}
      AND ({category} IS NULL OR category = {category})
      AND ({item_type} IS NULL OR item_type = {item_type})
    GROUP BY source
)
SELECT source, clicks, human_clicks, unique_users,
       round(100.0 * clicks / sum(clicks) OVER (), 2) AS share_pct
FROM s
ORDER BY clicks DESC, source
