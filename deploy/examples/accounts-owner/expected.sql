-- Expected content of the new schema, computed over the legacy tables: an account per user
-- that is neither deleted nor spam, with its statistics and its addresses.
SELECT u.id::text, u.email, u.name, u.state, s.logins::text, s.last_login::text,
       coalesce((SELECT jsonb_agg(jsonb_build_object('id', a.id, 'street', a.street, 'city', a.city, 'kind', a.kind)
                                  ORDER BY a.id)
                 FROM addresses a WHERE a.user_id = u.id), '[]')::text
FROM users u LEFT JOIN user_stats s ON s.user_id = u.id
WHERE u.deleted_at IS NULL AND u.state <> 'spam' ORDER BY u.id;
