-- pgbench: new posts are generated and existing ones edited.
\set pid random(1, 600)
\set aid random(1, 100)
BEGIN;
INSERT INTO generated_social_posts (article_id, category, platform, post_text, hashtags)
VALUES (:aid, CASE WHEN :aid % 2 = 0 THEN 'news' ELSE 'tech' END, 'x', 'fresh ' || :pid, ARRAY['#new']);
UPDATE generated_social_posts SET post_text = post_text || '!' WHERE id = :pid AND length(post_text) < 80;
END;
