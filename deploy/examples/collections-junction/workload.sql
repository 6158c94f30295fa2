-- pgbench: collections are archived and restored, renamed, and created.
\set cid random(1, 1000)
\set pid random(1, 50)
BEGIN;
UPDATE collections SET is_active = NOT is_active, updated_at = now() WHERE id = :cid;
UPDATE collections SET title = title || '.' WHERE id = :cid + 1 AND length(title) < 60;
INSERT INTO collections (project_id, title) VALUES (:pid, 'new ' || :cid);
END;
