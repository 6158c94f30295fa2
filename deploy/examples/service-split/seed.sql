INSERT INTO users (email, password_hash, display_name)
SELECT 'user' || g || '@shop.example', md5(g::text), 'User ' || g FROM generate_series(1, 300) g;
INSERT INTO categories (name) SELECT 'category ' || g FROM generate_series(1, 10) g;
INSERT INTO products (category_id, name, price, stock)
SELECT 1 + g % 10, 'product ' || g, (g % 200) + 0.99, g % 50 FROM generate_series(1, 500) g;
INSERT INTO carts (user_id) SELECT 1 + g % 300 FROM generate_series(1, 200) g;
INSERT INTO cart_items (cart_id, product_id, quantity)
SELECT 1 + g % 200, 1 + (g * 7) % 500, 1 + g % 3 FROM generate_series(1, 600) g ON CONFLICT DO NOTHING;
INSERT INTO wishlists (user_id, product_id)
SELECT 1 + g % 300, 1 + (g * 11) % 500 FROM generate_series(1, 400) g ON CONFLICT DO NOTHING;
