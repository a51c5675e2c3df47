-- title: Overview
-- description: Clicks, human clicks, unique users and sessions in the period, and the change against the previous period of the same length.
-- params: from, to, category, item_type, source
-- reads: click_stats_daily, click_stats_daily_totals
-- current: click_stats_daily_totals
-- Without filters the per-day totals answer (one sketch a day); with any filter, or while the
-- totals are a run behind click_stats_daily, the detailed rollup. The parameters are literals,
-- so the planner drops the branch that cannot match.
WITH f AS (
    SELECT event_date, clicks, human_clicks, users_sketch, sessions_sketch
    FROM click_stats_daily_totals
    WHERE {category} IS NULL AND {item_type} IS NULL AND {source} IS NULL AND {current}
      AND event_date BETWEEN {prev_from} AND {to}
    UNION ALL
    SELECT event_date, clicks, human_clicks, users_sketch, sessions_sketch
    FROM click_stats_daily
    WHERE NOT ({category} IS NULL AND {item_type} IS NULL AND {source} IS NULL AND {current})
      AND event_date BETWEEN {prev_from} AND {to}
      AND ({category} IS NULL OR category = {category})
      AND ({item_type} IS NULL OR item_type = {item_type})
      AND ({source} IS NULL OR source = {source})
),
cur AS (
    SELECT coalesce(sum(clicks), 0) AS clicks,
           coalesce(sum(human_clicks), 0) AS human_clicks,
           hll_count(hll_merge(users_sketch)) AS unique_users,
           hll_count(hll_merge(sessions_sketch)) AS sessions
    FROM f WHERE event_date >= {from}
),
prev AS (
    SELECT coalesce(sum(clicks), 0) AS clicks,
           coalesce(sum(human_clicks), 0) AS human_clicks,
           hll_count(hll_merge(users_sketch)) AS unique_users,
           hll_count(hll_merge(sessions_sketch)) AS sessions
    FROM f WHERE event_date < {from}
)
SELECT cur.clicks, cur.human_clicks, cur.unique_users, cur.sessions,
       prev.clicks AS prev_clicks,
       prev.unique_users AS prev_unique_users,
       round(100.0 * (cur.clicks - prev.clicks) / nullif(prev.clicks, 0), 1) AS clicks_change_pct,
       round(100.0 * (cur.human_clicks - prev.human_clicks) / nullif(prev.human_clicks, 0), 1) AS human_clicks_change_pct,
       round(100.0 * (cur.unique_users - prev.unique_users) / nullif(prev.unique_users, 0), 1) AS unique_users_change_pct,
       round(100.0 * (cur.sessions - prev.sessions) / nullif(prev.sessions, 0), 1) AS sessions_change_pct
FROM cur CROSS JOIN prev
