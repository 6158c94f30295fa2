SELECT id::text, lower(email), password_hash, created_at::text FROM users ORDER BY id;
