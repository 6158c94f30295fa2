-- The legacy schema: users with a soft delete and a state, their login statistics in another
-- table, and their addresses as child rows. Some rows exist before walshiftd starts (copied).
CREATE TABLE users (
  id         int PRIMARY KEY,
  email      text NOT NULL,
  name       text,
  state      text NOT NULL DEFAULT 'active',
  bio        text,
  deleted_at timestamptz
);
ALTER TABLE users ALTER COLUMN bio SET STORAGE EXTERNAL;
CREATE TABLE user_stats (
  user_id    int PRIMARY KEY,
  logins     int NOT NULL DEFAULT 0,
  last_login timestamptz
);
CREATE TABLE addresses (
  id      int PRIMARY KEY,
  user_id int NOT NULL,
  street  text,
  city    text,
  kind    text NOT NULL DEFAULT 'home'
);
CREATE INDEX ON addresses (user_id);

INSERT INTO users (id, email, name, state, bio, deleted_at)
SELECT g, 'u' || g || '@example.com', 'user ' || g, CASE WHEN g % 9 = 0 THEN 'spam' ELSE 'active' END,
       CASE WHEN g % 4 = 0 THEN (SELECT string_agg(md5(g::text || i), '') FROM generate_series(1, 200) i) END,
       CASE WHEN g % 7 = 0 THEN now() END
FROM generate_series(1, 100) g;
INSERT INTO user_stats SELECT g, g * 3, now() - g * interval '1 hour' FROM generate_series(1, 120) g;
INSERT INTO addresses SELECT g, 1 + g % 130, g || ' Main St', 'City ' || g % 5, 'home' FROM generate_series(1, 250) g;
