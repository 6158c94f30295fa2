-- Expected content of the new schema, computed over the legacy tables.
SELECT id::text, project_id::text, title, updated_at::text FROM collections WHERE is_active ORDER BY id;
SELECT id::text, name FROM projects ORDER BY id;
