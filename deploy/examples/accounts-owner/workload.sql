-- pgbench: users come and go (soft delete, undelete, spam and back), their statistics change
-- while their account is absent too, addresses are added, edited, moved and removed.
\set uid random(1, 220)
\set aid random(1, 450)
\set other random(1, 220)
BEGIN;
UPDATE users SET deleted_at = CASE WHEN deleted_at IS NULL THEN now() END WHERE id = :uid AND :aid % 3 = 0;
UPDATE users SET state = CASE WHEN state = 'spam' THEN 'active' ELSE 'spam' END WHERE id = :uid AND :aid % 5 = 1;
UPDATE users SET name = name || '.' WHERE id = :uid AND :aid % 5 = 2 AND length(name) < 40;
INSERT INTO users (id, email, name) VALUES (:uid, 'new' || :uid || '@example.com', 'late ' || :uid)
  ON CONFLICT (id) DO NOTHING;
INSERT INTO user_stats (user_id, logins, last_login) VALUES (:other, 1, now())
  ON CONFLICT (user_id) DO UPDATE SET logins = user_stats.logins + 1, last_login = now();
INSERT INTO addresses (id, user_id, street, city) VALUES (:aid, :other, :aid || ' New St', 'Newtown')
  ON CONFLICT (id) DO UPDATE SET street = addresses.street || '*';
UPDATE addresses SET user_id = :uid WHERE id = :aid + 1;
END;
