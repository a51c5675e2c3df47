-- title: AI usage
-- description: Spend, tokens, error rate and p95 latency by feature and model.
-- params: from, to, feature, model
-- reads: ai_usage_daily
SELECT feature, provider, model,
       sum(calls) AS calls,
       sum(errors) AS errors,
       round(100.0 * sum(errors) / sum(calls), 2) AS error_rate_pct,
       sum(input_tokens) AS input_tokens,
       sum(output_tokens) AS output_tokens,
       sum(cost_usd) AS cost_usd,
       round(latency_quantile(latency_merge(latency_sketch), 0.95), 0) AS p95_latency_ms
FROM ai_usage_daily
WHERE event_date BETWEEN {from} AND {to}
  AND ({feature} IS NULL OR feature = {feature})
  AND ({model} IS NULL OR model = {model})
GROUP BY feature, provider, model
ORDER BY cost_usd DESC, feature, model
