SELECT decision_id::text, topic, tone, model, prompt_tokens::text, body, queued_at::text FROM content_queue ORDER BY decision_id;
SELECT decision_id::text, posted_at::text, tweet_id::text, text, platform, url FROM posted_content ORDER BY decision_id;
SELECT decision_id::text, outcome, likes::text, retweets::text, impressions::text, engagement_rate::text
FROM engagement_metrics ORDER BY decision_id;
