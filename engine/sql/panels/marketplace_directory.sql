-- title: Marketplace and directory KPIs
-- description: Per item type (marketplace listings, directory sites): items clicked, clicks, clicks per listing or site, unique users.
-- params: from, to, source
-- reads: click_stats_daily
-- items_clicked is a distinct count over the period, merged from the daily item sketches.
SELECT item_type,
       hll_count(hll_merge(items_sketch)) AS items_clicked,
       sum(clicks) AS clicks,
       sum(human_clicks) AS human_clicks,
       hll_count(hll_merge(users_sketch)) AS unique_users,
       round(CAST(sum(clicks) AS DOUBLE) / nullif(hll_count(hll_merge(items_sketch)), 0), 2) AS clicks_per_item
FROM click_stats_daily
WHERE event_date BETWEEN {from} AND {to}
  AND item_type IN ('marketplace_listing', 'directory_site')
  AND ({source} IS NULL OR source = {source})
GROUP BY item_type
ORDER BY item_type
