-- The new schema: one generic generated_content row per article and category, the posts as a
-- JSON array; and a log that maps every legacy id to its modern home.
CREATE TABLE generated_content (
  article_id   int NOT NULL,
  category     text NOT NULL,
  content_type text NOT NULL DEFAULT 'social',
  content_data jsonb NOT NULL DEFAULT '[]',
  PRIMARY KEY (article_id, category)
);
CREATE INDEX ON generated_content USING gin (content_data jsonb_path_ops) WITH (fastupdate = off);

CREATE TABLE migration_log (
  legacy_table text NOT NULL,
  legacy_id    int NOT NULL,
  modern_table text NOT NULL,
  modern_key   text NOT NULL,
  PRIMARY KEY (legacy_table, legacy_id)
);
