-- The legacy schema: one shared e-commerce database.
CREATE TABLE users (id serial PRIMARY KEY, email text NOT NULL, password_hash text NOT NULL,
                    display_name text, created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE categories (id serial PRIMARY KEY, name text NOT NULL);
CREATE TABLE products (id serial PRIMARY KEY, category_id int NOT NULL REFERENCES categories,
                       name text NOT NULL, price numeric(10,2) NOT NULL, stock int NOT NULL DEFAULT 0);
CREATE TABLE carts (id serial PRIMARY KEY, user_id int NOT NULL REFERENCES users,
                    created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE cart_items (cart_id int NOT NULL REFERENCES carts ON DELETE CASCADE,
                         product_id int NOT NULL REFERENCES products, quantity int NOT NULL,
                         PRIMARY KEY (cart_id, product_id));
CREATE TABLE wishlists (user_id int NOT NULL REFERENCES users, product_id int NOT NULL REFERENCES products,
                        added_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (user_id, product_id));
