-- pgbench: decisions are created and re-toned, metrics keep arriving.
\set d random(1, 700)
BEGIN;
INSERT INTO content_metadata VALUES (:d, 'topic ' || :d % 40, 'neutral')
  ON CONFLICT (decision_id) DO UPDATE SET tone = 'updated';
INSERT INTO real_tweet_metrics VALUES (:d, 1, 0)
  ON CONFLICT (decision_id) DO UPDATE SET likes = real_tweet_metrics.likes + 1;
INSERT INTO tweet_analytics VALUES (:d, 100, 0.0100)
  ON CONFLICT (decision_id) DO UPDATE SET impressions = tweet_analytics.impressions + 100;
END;
