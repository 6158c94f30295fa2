-- pgbench: shoppers fill and change carts, shop keepers change prices and stock.
\set uid random(1, 300)
\set pid random(1, 500)
\set cid random(1, 200)
BEGIN;
INSERT INTO cart_items (cart_id, product_id, quantity) VALUES (:cid, :pid, 1)
  ON CONFLICT (cart_id, product_id) DO UPDATE SET quantity = cart_items.quantity + 1;
UPDATE products SET stock = greatest(stock - 1, 0), price = price + 0.01 WHERE id = :pid;
INSERT INTO wishlists (user_id, product_id) VALUES (:uid, :pid) ON CONFLICT DO NOTHING;
END;
