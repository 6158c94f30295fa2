-- Rows the application writes while walshiftd streams (the initial copy of rows that exist
-- before the pipeline starts is a separate step).
INSERT INTO customers (email, full_name)
SELECT 'User' || g || '@Example.com', 'Customer ' || g FROM generate_series(1, 1000) g;
INSERT INTO orders (customer_id, amount, status, note)
SELECT 1 + g % 1000, (g % 997) + 0.99, (ARRAY['new','paid','shipped']::order_status[])[1 + g % 3],
       CASE WHEN g % 50 = 0 THEN repeat('gift wrap; ', 400) END
FROM generate_series(1, 5000) g;
