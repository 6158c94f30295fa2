-- The new schema: one account row, its statistics merged in, its addresses as a JSON array.
CREATE TABLE accounts (
  id         int PRIMARY KEY,
  email      text NOT NULL,
  name       text,
  state      text NOT NULL,
  logins     int,
  last_login timestamptz,
  addresses  jsonb NOT NULL DEFAULT '[]'
);
CREATE INDEX ON accounts USING gin (addresses jsonb_path_ops) WITH (fastupdate = off);
