INSERT INTO articles (title) SELECT 'article ' || g FROM generate_series(1, 100) g;
INSERT INTO generated_social_posts (article_id, category, platform, post_text, hashtags)
SELECT 1 + g % 100, CASE WHEN g % 3 = 0 THEN 'news' ELSE 'tech' END,
       (ARRAY['x', 'linkedin', 'bluesky', 'threads'])[1 + g % 4], 'post ' || g, ARRAY['#t' || g % 7, '#ai']
FROM generate_series(1, 600) g;
