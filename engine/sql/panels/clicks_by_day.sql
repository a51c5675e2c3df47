-- title: Clicks by day
-- description: The trend: clicks, human clicks and unique users per day.
-- params: from, to, category, item_type, source
-- reads: click_stats_daily
SELECT event_date,
       sum(clicks) AS clicks,
       sum(human_clicks) AS human_clicks,
       hll_count(hll_merge(users_sketch)) AS unique_users
FROM click_stats_daily
WHERE event_date BETWEEN {from} AND {to}
  AND ({category} IS NULL OR category = {category})
  AND ({item_type} IS NULL OR item_type = {item_type})
  AND ({source} IS NULL OR source = {source})
GROUP BY event_date
ORDER BY event_date
