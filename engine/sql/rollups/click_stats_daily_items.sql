-- click_stats_daily_items: one row per event_date x item (with its type and category).
-- Grouping by (day, item, visitor) first, then counting, is the plan that is fast: DataFusion
-- 55 plans count(*) + count(DISTINCT string) over a high-cardinality key with a slow per-group
-- set. {dates} is the set of event_dates to recompute (TRUE on a rebuild).
WITH per_visitor AS (
    SELECT event_date,
           item_id,
           item_type,
           coalesce(category, '(none)') AS category,
           coalesce(user_id, 'anon:' || anonymous_id) AS visitor,
           count(*) AS clicks,
           sum(CASE WHEN coalesce(is_bot, false) THEN 0 ELSE 1 END) AS human_clicks
    FROM link_clicks
    WHERE {dates}
    GROUP BY 1, 2, 3, 4, 5
)
SELECT event_date, item_id, item_type, category,
       sum(clicks) AS clicks,
       sum(human_clicks) AS human_clicks,
       count(visitor) AS unique_users,
       hll_sketch(visitor) AS users_sketch
FROM per_visitor
GROUP BY 1, 2, 3, 4
