-- Expected content of the new schema, computed over the legacy tables.
SELECT article_id::text, category,
       jsonb_agg(jsonb_build_object('legacy_id', id, 'platform', platform, 'text', post_text, 'hashtags', hashtags)
                 ORDER BY platform, id)::text
FROM generated_social_posts GROUP BY article_id, category ORDER BY article_id, category;
SELECT id::text, 'generated_content', article_id || '/' || category FROM generated_social_posts ORDER BY id;
