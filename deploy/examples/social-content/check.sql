SELECT article_id::text, category, content_data::text FROM generated_content
WHERE content_data <> '[]' ORDER BY article_id, category;
SELECT legacy_id::text, modern_table, modern_key FROM migration_log ORDER BY legacy_id;
