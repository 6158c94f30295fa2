-- The new schema: a junction table of the collections that are live; gone means gone.
CREATE TABLE projects (
  project_id int PRIMARY KEY,
  name       text NOT NULL
);

CREATE TABLE project_collections (
  collection_id int PRIMARY KEY,
  project_id    int NOT NULL REFERENCES projects,
  title         text NOT NULL,
  linked_at     timestamptz NOT NULL
);
