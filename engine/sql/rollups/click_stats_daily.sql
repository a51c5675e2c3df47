-- click_stats_daily: one row per event_date x category x item_type x source.
-- A visitor is the user_id, or the anonymous id when signed out; a human click is not a bot's.
-- Distinct counts are grouped first and counted after (fast in DataFusion, exact per day);
-- the HLL sketches (visitors, sessions, items) let ranges of days be merged
-- (docs/rollups-and-panels.md).
-- {dates} is the set of event_dates to recompute (TRUE on a rebuild).
WITH per_visitor AS (
    SELECT event_date,
           coalesce(category, '(none)') AS category,
           item_type,
           source,
           coalesce(user_id, 'anon:' || anonymous_id) AS visitor,
           count(*) AS clicks,
           sum(CASE WHEN coalesce(is_bot, false) THEN 0 ELSE 1 END) AS human_clicks
    FROM link_clicks
    WHERE {dates}
    GROUP BY 1, 2, 3, 4, 5
),
per_session AS (
    SELECT event_date, coalesce(category, '(none)') AS category, item_type, source, session_id
    FROM link_clicks
    WHERE {dates} AND session_id IS NOT NULL
    GROUP BY 1, 2, 3, 4, 5
),
per_item AS (
    SELECT event_date, coalesce(category, '(none)') AS category, item_type, source, item_id
    FROM link_clicks
    WHERE {dates}
    GROUP BY 1, 2, 3, 4, 5
),
i AS (
    SELECT event_date, category, item_type, source, hll_sketch(item_id) AS items_sketch
    FROM per_item
    GROUP BY 1, 2, 3, 4
),
v AS (
    SELECT event_date, category, item_type, source,
           sum(clicks) AS clicks,
           sum(human_clicks) AS human_clicks,
           count(visitor) AS unique_users,
           hll_sketch(visitor) AS users_sketch
    FROM per_visitor
    GROUP BY 1, 2, 3, 4
),
s AS (
    SELECT event_date, category, item_type, source,
           count(*) AS unique_sessions,
           hll_sketch(session_id) AS sessions_sketch
    FROM per_session
    GROUP BY 1, 2, 3, 4
)
SELECT v.event_date, v.category, v.item_type, v.source,
       v.clicks, v.human_clicks, v.unique_users,
       coalesce(s.unique_sessions, 0) AS unique_sessions,
       v.users_sketch, s.sessions_sketch, i.items_sketch
FROM v
LEFT JOIN s
  ON v.event_date = s.event_date AND v.category = s.category
 AND v.item_type = s.item_type AND v.source = s.source
LEFT JOIN i
  ON v.event_date = i.event_date AND v.category = i.category
 AND v.item_type = i.item_type AND v.source = i.source
