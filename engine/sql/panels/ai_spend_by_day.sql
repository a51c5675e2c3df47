-- title: AI spend by day
-- description: Cost, calls and tokens per day.
-- params: from, to, feature, model
-- reads: ai_usage_daily
SELECT event_date,
       sum(cost_usd) AS cost_usd,
       sum(calls) AS calls,
       sum(errors) AS errors,
       sum(input_tokens) + sum(output_tokens) AS tokens
FROM ai_usage_daily
WHERE event_date BETWEEN {from} AND {to}
  AND ({feature} IS NULL OR feature = {feature})
  AND ({model} IS NULL OR model = {model})
GROUP BY event_date
ORDER BY event_date
