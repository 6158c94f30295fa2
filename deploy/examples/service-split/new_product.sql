-- The product service's database (prices in cents).
CREATE TABLE categories (category_id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE products (product_id int PRIMARY KEY, category_id int NOT NULL REFERENCES categories,
                       name text NOT NULL, price_cents bigint NOT NULL, in_stock int NOT NULL);
