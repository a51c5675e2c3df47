-- title: Click-through share by source
-- description: For marketplace listings and directory sites, each source's share of the item type's clicks.
-- params: from, to, category
-- reads: click_stats_daily
WITH s AS (
    SELECT item_type, source, sum(clicks) AS clicks
    FROM click_stats_daily
    WHERE event_date BETWEEN {from} AND {to}
      AND item_type IN ('marketplace_listing', 'directory_site')
      AND ({category} IS NULL OR category = {category})
    GROUP BY item_type, source
)
SELECT item_type, source, clicks,
       round(100.0 * clicks / sum(clicks) OVER (PARTITION BY item_type), 2) AS share_pct
FROM s
ORDER BY item_type, clicks DESC, source
