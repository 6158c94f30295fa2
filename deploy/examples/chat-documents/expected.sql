-- The documents walshift must leave, computed from the legacy tables alone: one row per
-- document, its path in the store and its JSON. Empty arrays count as absent.
SELECT 'users/' || id || '.json', jsonb_build_object('id', id, 'name', name, 'email', email, 'created_at', created_at)::text
FROM users ORDER BY 1;
SELECT 'characters/' || c.id || '.json',
       (jsonb_build_object('id', c.id, 'owner_id', c.user_id, 'name', c.name, 'description', c.description,
                           'traits', c.traits, 'rating', c.rating, 'public', c.is_public, 'created_at', c.created_at)
        || coalesce((SELECT jsonb_build_object('tags', jsonb_agg(jsonb_build_object('character_id', t.character_id,
                                  'tag_id', t.tag_id, 'added_at', t.added_at) ORDER BY t.tag_id))
                     FROM character_tags t WHERE t.character_id = c.id HAVING count(*) > 0), '{}'))::text
FROM characters c ORDER BY 1;
SELECT 'personas/' || id || '.json', jsonb_build_object('id', id, 'user_id', user_id, 'name', name, 'bio', bio)::text
FROM personas WHERE deleted_at IS NULL ORDER BY 1;
SELECT 'tags/' || g.id || '.json',
       (jsonb_build_object('id', g.id, 'name', g.name)
        || coalesce((SELECT jsonb_build_object('characters', jsonb_agg(jsonb_build_object('character_id', t.character_id,
                                  'tag_id', t.tag_id) ORDER BY t.character_id))
                     FROM character_tags t WHERE t.tag_id = g.id HAVING count(*) > 0), '{}'))::text
FROM tags g ORDER BY 1;
SELECT 'chats/' || c.id || '.json',
       (jsonb_build_object('id', c.id, 'user_id', c.user_id, 'character_id', c.character_id, 'title', c.title,
                           'created_at', c.created_at)
        || coalesce((SELECT jsonb_build_object('messages', jsonb_agg(jsonb_build_object('id', m.id, 'role', m.role,
                                  'body', m.body, 'sent_at', m.sent_at) ORDER BY m.id))
                     FROM messages m WHERE m.chat_id = c.id HAVING count(*) > 0), '{}'))::text
FROM chats c ORDER BY 1;
