-- The expected content of the new schema, computed by SQL over the legacy tables (not by
-- walshift). Each query returns rows in the same shape and order as check.sql on the target.
SELECT id::text, customer_id::text, round(amount * 100)::bigint::text, status::text, 'legacy', created_at::text
FROM orders ORDER BY id;
SELECT id::text, lower(email), full_name, created_at::text FROM customers ORDER BY id;
