-- click_stats_daily_totals: one row per event_date, all categories, item types and sources
-- together. A rollup of click_stats_daily (its source): the day's sketches are the union of
-- the day's detailed sketches, so a panel without filters merges 30 sketches for 30 days
-- instead of ~4,400. unique_users / unique_sessions here are the sketch estimates (the exact
-- daily counts exist per category x item type x source only).
-- {dates} is the set of event_dates to recompute (TRUE on a rebuild).
SELECT event_date,
       sum(clicks) AS clicks,
       sum(human_clicks) AS human_clicks,
       hll_count(hll_merge(users_sketch)) AS unique_users,
       hll_count(hll_merge(sessions_sketch)) AS unique_sessions,
       hll_merge(users_sketch) AS users_sketch,
       hll_merge(sessions_sketch) AS sessions_sketch,
       hll_merge(items_sketch) AS items_sketch
FROM click_stats_daily
WHERE {dates}
GROUP BY event_date
