-- The legacy schema: collections belong to a project and are "deleted" by clearing is_active.
CREATE TABLE projects (
  id   serial PRIMARY KEY,
  name text NOT NULL
);

CREATE TABLE collections (
  id         serial PRIMARY KEY,
  project_id int NOT NULL REFERENCES projects,
  title      text NOT NULL,
  is_active  boolean NOT NULL DEFAULT true,
  updated_at timestamptz NOT NULL DEFAULT now()
);
