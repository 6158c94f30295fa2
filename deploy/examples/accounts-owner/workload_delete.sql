-- pgbench: hard deletes of each kind of row.
\set uid random(1, 220)
\set aid random(1, 450)
BEGIN;
DELETE FROM addresses WHERE id = :aid;
DELETE FROM user_stats WHERE user_id = :uid AND :aid % 4 = 0;
DELETE FROM users WHERE id = :uid AND :aid % 6 = 0;
END;
