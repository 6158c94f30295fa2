SELECT order_id::text, customer_id::text, total_cents::text, state, origin, placed_at::text
FROM app.orders_v2 ORDER BY order_id;
SELECT customer_id::text, email, name, signed_up_at::text FROM app.customers ORDER BY customer_id;
