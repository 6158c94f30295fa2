-- The new schema: what the application will read and write after the cutover.
CREATE SCHEMA app;

CREATE TABLE app.customers (
  customer_id  int PRIMARY KEY,
  email        text NOT NULL,
  name         text,
  signed_up_at timestamptz NOT NULL
);

CREATE TABLE app.orders_v2 (
  order_id    bigint PRIMARY KEY,
  customer_id int NOT NULL,
  total_cents bigint NOT NULL CHECK (total_cents >= 0),
  state       text NOT NULL,
  origin      text NOT NULL,
  placed_at   timestamptz NOT NULL
);
