-- pgbench: people chat, edit characters and personas, and tag characters.
\set uid random(1, 40)
\set cid random(1, 80)
\set chat random(1, 130)
\set tid random(1, 12)
\set pid random(1, 60)
BEGIN;
INSERT INTO chats (user_id, character_id, title)
SELECT :uid, :cid, 'chat of ' || :uid WHERE random() < 0.05 AND EXISTS (SELECT 1 FROM characters WHERE id = :cid);
-- (FOR KEY SHARE: a chat another client deletes meanwhile gets no message)
INSERT INTO messages (chat_id, role, body)
SELECT id, 'user', 'hello ' || :uid FROM chats WHERE id = :chat FOR KEY SHARE;
INSERT INTO messages (chat_id, role, body)
SELECT id, 'character', 'reply to ' || :uid FROM chats WHERE id = :chat FOR KEY SHARE;
UPDATE messages SET body = body || ' (edited)' WHERE id = (SELECT min(id) FROM messages WHERE chat_id = :chat);
END;
BEGIN;
UPDATE characters SET rating = (:tid % 10) / 2.5, traits = traits || jsonb_build_object('seen', :uid),
  description = CASE WHEN :uid % 5 = 0 THEN repeat('long lore ', 400) ELSE description END
WHERE id = :cid;
INSERT INTO character_tags (character_id, tag_id) VALUES (:cid, :tid) ON CONFLICT DO NOTHING;
DELETE FROM character_tags WHERE character_id = :cid AND tag_id = 1 + (:tid + 5) % 12;
UPDATE personas SET deleted_at = CASE WHEN deleted_at IS NULL THEN now() END, bio = bio || '.' WHERE id = :pid;
UPDATE users SET name = 'user ' || :uid || ' v' || :tid WHERE id = :uid;
END;
