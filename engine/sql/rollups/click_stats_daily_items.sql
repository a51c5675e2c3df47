-- click_stats_daily_items: one row per event_date x item (with its type and category).
-- One grouping: distinct_sketch keeps the visitors' hashes per (day, item), giving the exact
-- daily unique_users and the HLL sketch for ranges. (DataFusion 55 plans count(*) plus
-- count(DISTINCT string) over this high-cardinality key with a slow per-group set of strings.)
-- {dates} is the set of event_dates to recompute (TRUE on a rebuild).
SELECT event_date, item_id, item_type, category,
       clicks, human_clicks,
       users['count'] AS unique_users,
       users['sketch'] AS users_sketch
FROM (
    SELECT event_date,
           item_id,
           item_type,
           coalesce(category, '(none)') AS category,
           count(*) AS clicks,
           sum(CASE WHEN coalesce(is_bot, false) THEN 0 ELSE 1 END) AS human_clicks,
           distinct_sketch(coalesce(user_id, 'anon:' || anonymous_id)) AS users
    FROM link_clicks
    WHERE {dates}
    GROUP BY 1, 2, 3, 4
)
