-- The legacy schema: what the application writes today.
CREATE TYPE order_status AS ENUM ('new', 'paid', 'shipped', 'cancelled');

CREATE TABLE customers (
  id         serial PRIMARY KEY,
  email      text NOT NULL,
  full_name  text,
  created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE orders (
  id          bigserial PRIMARY KEY,
  customer_id int NOT NULL,
  amount      numeric(12,2) NOT NULL,
  status      order_status NOT NULL DEFAULT 'new',
  note        text,
  created_at  timestamptz NOT NULL DEFAULT now()
);
