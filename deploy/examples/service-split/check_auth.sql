SELECT account_id::text, email, password_hash, created_at::text FROM accounts ORDER BY account_id;
