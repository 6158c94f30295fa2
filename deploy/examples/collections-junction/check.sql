SELECT collection_id::text, project_id::text, title, linked_at::text FROM project_collections ORDER BY collection_id;
SELECT project_id::text, name FROM projects ORDER BY project_id;
