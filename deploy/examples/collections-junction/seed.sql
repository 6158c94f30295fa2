INSERT INTO projects (name) SELECT 'project ' || g FROM generate_series(1, 50) g;
INSERT INTO collections (project_id, title, is_active)
SELECT 1 + g % 50, 'collection ' || g, g % 10 <> 0 FROM generate_series(1, 1000) g;
