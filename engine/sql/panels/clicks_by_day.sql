-- title: Clicks by day
-- description: The trend: clicks, human clicks and unique users per day.
-- params: from, to, category, item_type, source
-- reads: click_stats_daily, click_stats_daily_totals
-- current: click_stats_daily_totals
-- Without filters the per-day totals answer (one sketch a day); with any filter, or while the
-- totals are a run behind click_stats_daily, the detailed rollup. The parameters are literals,
-- so the planner drops the branch that cannot match.
WITH days AS (
    SELECT event_date, clicks, human_clicks, users_sketch
    FROM click_stats_daily_totals
    WHERE {category} IS NULL AND {item_type} IS NULL AND {source} IS NULL AND {current}
      AND event_date BETWEEN {from} AND {to}
    UNION ALL
    SELECT event_date, clicks, human_clicks, users_sketch
    FROM click_stats_daily
    WHERE NOT ({category} IS NULL AND {item_type} IS NULL AND {source} IS NULL AND {current})
      AND event_date BETWEEN {from} AND {to}
      AND ({category} IS NULL OR category = {category})
      AND ({item_type} IS NULL OR item_type = {item_type})
      AND ({source} IS NULL OR source = {source})
)
SELECT event_date,
       sum(clicks) AS clicks,
       sum(human_clicks) AS human_clicks,
       hll_count(hll_merge(users_sketch)) AS unique_users
FROM days
GROUP BY event_date
ORDER BY event_date
