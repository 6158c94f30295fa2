-- The legacy schema: one generated social post per platform, per article and category.
CREATE TABLE articles (
  id    serial PRIMARY KEY,
  title text NOT NULL
);

CREATE TABLE generated_social_posts (
  id         serial PRIMARY KEY,
  article_id int NOT NULL,
  category   text NOT NULL,
  platform   text NOT NULL,
  post_text  text NOT NULL,
  hashtags   text[] NOT NULL DEFAULT '{}',
  created_at timestamptz NOT NULL DEFAULT now()
);
-- migration_log.modern_key reads article_id and category together; category is TOAST-able
-- (text), so updates must carry the old row: see README.md.
ALTER TABLE generated_social_posts REPLICA IDENTITY FULL;
