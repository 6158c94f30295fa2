-- pgbench script: what the application keeps doing during the migration.
\set cid random(1, 1000)
\set oid random(1, 5000)
\set amt random(100, 100000)
BEGIN;
INSERT INTO orders (customer_id, amount, status) VALUES (:cid, :amt / 100.0, 'new');
UPDATE orders SET status = 'paid', amount = amount + 1 WHERE id = :oid AND status = 'new';
UPDATE customers SET full_name = full_name || '.' WHERE id = :cid AND length(full_name) < 40;
END;
