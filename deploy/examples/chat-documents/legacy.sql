-- The legacy relational schema of a character chat application.
CREATE TABLE users (
  id bigserial PRIMARY KEY,
  name text NOT NULL,
  email text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE characters (
  id bigserial PRIMARY KEY,
  user_id bigint NOT NULL REFERENCES users (id),
  name text NOT NULL,
  description text,
  traits jsonb NOT NULL DEFAULT '{}',
  rating numeric(4, 2),
  is_public boolean NOT NULL DEFAULT false,
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE personas (
  id bigserial PRIMARY KEY,
  user_id bigint NOT NULL REFERENCES users (id),
  name text NOT NULL,
  bio text,
  deleted_at timestamptz  -- soft delete: a deleted persona has no document
);
CREATE TABLE tags (
  id serial PRIMARY KEY,
  name text NOT NULL UNIQUE
);
-- Many-to-many: folded into both sides (characters.tags and tags.characters).
CREATE TABLE character_tags (
  character_id bigint NOT NULL REFERENCES characters (id) ON DELETE CASCADE,
  tag_id int NOT NULL REFERENCES tags (id) ON DELETE CASCADE,
  added_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (character_id, tag_id)
);
CREATE TABLE chats (
  id bigserial PRIMARY KEY,
  user_id bigint NOT NULL REFERENCES users (id),
  character_id bigint NOT NULL REFERENCES characters (id) ON DELETE CASCADE,
  title text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now()
);
-- Embedded in the chat document.
CREATE TABLE messages (
  id bigserial PRIMARY KEY,
  chat_id bigint NOT NULL REFERENCES chats (id) ON DELETE CASCADE,
  role text NOT NULL CHECK (role IN ('user', 'character')),
  body text NOT NULL,
  sent_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ON messages (chat_id);
CREATE INDEX ON character_tags (tag_id);

-- Rows that exist before walshift starts: the initial copy exports them.
INSERT INTO users (name, email, created_at)
SELECT 'user ' || g, 'user' || g || '@example.com', timestamptz '2024-01-01 00:00:00+00' + g * interval '1 hour'
FROM generate_series(1, 40) g;
INSERT INTO tags (name) SELECT 'tag-' || g FROM generate_series(1, 12) g;
INSERT INTO characters (user_id, name, description, traits, rating, is_public)
SELECT 1 + g % 40, 'character ' || g, CASE WHEN g % 3 = 0 THEN NULL ELSE repeat('lore ', g) END,
       jsonb_build_object('mood', CASE WHEN g % 2 = 0 THEN 'calm' ELSE 'bold' END, 'level', g),
       (g % 50) / 10.0, g % 2 = 0
FROM generate_series(1, 80) g;
INSERT INTO personas (user_id, name, bio, deleted_at)
SELECT 1 + g % 40, 'persona ' || g, 'about ' || g, CASE WHEN g % 7 = 0 THEN now() END FROM generate_series(1, 60) g;
INSERT INTO character_tags (character_id, tag_id)
SELECT c, t FROM generate_series(1, 80) c, generate_series(1, 12) t WHERE (c + t) % 4 = 0;
INSERT INTO chats (user_id, character_id, title)
SELECT 1 + g % 40, 1 + g % 80, 'chat ' || g FROM generate_series(1, 100) g;
INSERT INTO messages (chat_id, role, body)
SELECT 1 + g % 100, CASE WHEN g % 2 = 0 THEN 'user' ELSE 'character' END, 'message ' || g || ' ' || repeat('x', g % 40)
FROM generate_series(1, 1500) g;
