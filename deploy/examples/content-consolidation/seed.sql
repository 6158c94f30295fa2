INSERT INTO content_metadata SELECT g, 'topic ' || g % 40, CASE WHEN g % 3 = 0 THEN 'witty' END FROM generate_series(1, 500) g;
INSERT INTO content_generation_metadata_comprehensive SELECT g, 'model-' || g % 3, 100 + g, 'text ' || g FROM generate_series(1, 500, 2) g;
INSERT INTO posted_decisions (decision_id) SELECT g FROM generate_series(1, 400) g;
INSERT INTO tweets SELECT g, 1000000 + g, 'tweet ' || g FROM generate_series(1, 400, 3) g;
INSERT INTO posts SELECT g, (ARRAY['x', 'bluesky'])[1 + g % 2], 'https://example.invalid/' || g FROM generate_series(2, 400, 3) g;
INSERT INTO outcomes SELECT g, CASE WHEN g % 5 = 0 THEN 'viral' ELSE 'ok' END FROM generate_series(1, 300) g;
INSERT INTO real_tweet_metrics SELECT g, g % 50, g % 7 FROM generate_series(1, 300, 2) g;
INSERT INTO tweet_analytics SELECT g, g * 10, (g % 100) / 1000.0 FROM generate_series(1, 300, 4) g;
