-- pgbench: posts are withdrawn, or re-filed under the other category.
\set pid random(1, 600)
DELETE FROM generated_social_posts WHERE id = :pid;
UPDATE generated_social_posts SET category = CASE category WHEN 'news' THEN 'tech' ELSE 'news' END WHERE id = :pid + 1;
