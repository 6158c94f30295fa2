SELECT id::text, email, name, state, logins::text, last_login::text, addresses::text FROM accounts a ORDER BY a.id;
