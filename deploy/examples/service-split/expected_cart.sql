SELECT id::text, user_id::text, created_at::text FROM carts ORDER BY id;
SELECT cart_id::text, product_id::text, quantity::text FROM cart_items ORDER BY cart_id, product_id;
SELECT user_id::text, product_id::text, added_at::text FROM wishlists ORDER BY user_id, product_id;
