-- click_stats_daily: one row per event_date x category x item_type x source.
-- A visitor is the user_id, or the anonymous id when signed out; a human click is not a bot's.
-- distinct_sketch gives, from one grouping, the exact distinct count of the day (unique_users,
-- unique_sessions) and the HLL sketch of the same values, which ranges of days merge
-- (docs/rollups-and-panels.md); items_sketch is the HLL of the items clicked.
-- {dates} is the set of event_dates to recompute (TRUE on a rebuild).
SELECT event_date, category, item_type, source,
       clicks, human_clicks,
       users['count'] AS unique_users,
       sessions['count'] AS unique_sessions,
       users['sketch'] AS users_sketch,
       sessions['sketch'] AS sessions_sketch,
       items_sketch
FROM (
    SELECT event_date,
           coalesce(category, '(none)') AS category,
           item_type,
           source,
           count(*) AS clicks,
           sum(CASE WHEN coalesce(is_bot, false) THEN 0 ELSE 1 END) AS human_clicks,
           distinct_sketch(coalesce(user_id, 'anon:' || anonymous_id)) AS users,
           distinct_sketch(session_id) AS sessions,
           hll_sketch(item_id) AS items_sketch
    FROM link_clicks
    WHERE {dates}
    GROUP BY 1, 2, 3, 4
)
