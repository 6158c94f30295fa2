-- pgbench: checkouts empty a cart; a user changes e-mail; a wish is dropped.
\set uid random(1, 300)
\set cid random(1, 200)
\set pid random(1, 500)
BEGIN;
DELETE FROM cart_items WHERE cart_id = :cid;
UPDATE users SET email = 'u' || :uid || '.' || floor(random() * 1000000)::int || '@shop.example' WHERE id = :uid;
DELETE FROM wishlists WHERE user_id = :uid AND product_id = :pid;
END;
