-- pgbench script: cancelled orders are deleted by a nightly job in the legacy application.
\set oid random(1, 5000)
DELETE FROM orders WHERE id = :oid AND status = 'cancelled';
UPDATE orders SET status = 'cancelled' WHERE id = :oid + 1;
