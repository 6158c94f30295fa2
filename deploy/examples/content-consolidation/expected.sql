-- Expected content of the new schema: full outer joins of the legacy tables by decision_id.
SELECT decision_id::text, m.topic, m.tone, g.model, g.prompt_tokens::text, g.generated_text, m.created_at::text
FROM content_metadata m FULL JOIN content_generation_metadata_comprehensive g USING (decision_id) ORDER BY decision_id;
SELECT decision_id::text, d.posted_at::text, t.tweet_id::text, t.tweet_text, p.platform, p.url
FROM posted_decisions d FULL JOIN tweets t USING (decision_id) FULL JOIN posts p USING (decision_id) ORDER BY decision_id;
SELECT decision_id::text, o.outcome, r.likes::text, r.retweets::text, a.impressions::text, a.engagement_rate::text
FROM outcomes o FULL JOIN real_tweet_metrics r USING (decision_id) FULL JOIN tweet_analytics a USING (decision_id)
ORDER BY decision_id;
