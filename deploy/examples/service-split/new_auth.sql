-- The auth service's database.
CREATE TABLE accounts (account_id int PRIMARY KEY, email text NOT NULL UNIQUE, password_hash text NOT NULL,
                       created_at timestamptz NOT NULL);
