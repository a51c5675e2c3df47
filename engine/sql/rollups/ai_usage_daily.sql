-- ai_usage_daily: one row per event_date x feature x provider x model.
-- An error is any status but 'ok'. p95 latency is read from the latency sketch, which ranges
-- of days merge (latency_merge) for a p95 over any period. {dates}: event_dates to recompute.
-- No users sketch: no panel reads one, and reading and hashing the user and session ids was
-- half of this rollup's time. AI users over any period are one query over ai_usage.
SELECT event_date, feature, provider, model,
       calls, errors, input_tokens, output_tokens, cost_usd,
       latency_quantile(latency_sketch, 0.95) AS p95_latency_ms,
       latency_sketch
FROM (
    SELECT event_date,
           feature,
           provider,
           model,
           count(*) AS calls,
           count(*) FILTER (WHERE status IS DISTINCT FROM 'ok') AS errors,
           sum(input_tokens) AS input_tokens,
           sum(output_tokens) AS output_tokens,
           sum(cost_usd) AS cost_usd,
           latency_sketch(latency_ms) AS latency_sketch
    FROM ai_usage
    WHERE {dates}
    GROUP BY 1, 2, 3, 4
)
