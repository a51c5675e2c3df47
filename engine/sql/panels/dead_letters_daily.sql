-- title: Job health: dead letters per day
-- description: Rejected messages per day and topic.
-- params: from, to
-- reads: dead_letters
SELECT received_date, topic, count(*) AS dead_letters
FROM dead_letters
WHERE received_date BETWEEN {from} AND {to}
GROUP BY received_date, topic
ORDER BY received_date, topic
