-- The cart service's database: carts reference accounts and products by id only (other services).
CREATE TABLE carts (cart_id int PRIMARY KEY, account_id int NOT NULL, created_at timestamptz NOT NULL);
CREATE TABLE cart_items (cart_id int NOT NULL REFERENCES carts ON DELETE CASCADE, product_id int NOT NULL,
                         quantity int NOT NULL CHECK (quantity > 0), PRIMARY KEY (cart_id, product_id));
CREATE TABLE wishlist_items (account_id int NOT NULL, product_id int NOT NULL, added_at timestamptz NOT NULL,
                             PRIMARY KEY (account_id, product_id));
