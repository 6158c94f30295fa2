SELECT category_id::text, name FROM categories ORDER BY category_id;
SELECT product_id::text, category_id::text, name, price_cents::text, in_stock::text FROM products ORDER BY product_id;
