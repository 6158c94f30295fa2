SELECT cart_id::text, account_id::text, created_at::text FROM carts ORDER BY cart_id;
SELECT cart_id::text, product_id::text, quantity::text FROM cart_items ORDER BY cart_id, product_id;
SELECT account_id::text, product_id::text, added_at::text FROM wishlist_items ORDER BY account_id, product_id;
