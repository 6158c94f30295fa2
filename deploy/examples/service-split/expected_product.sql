SELECT id::text, name FROM categories ORDER BY id;
SELECT id::text, category_id::text, name, round(price * 100)::bigint::text, stock::text FROM products ORDER BY id;
