-- pgbench: chats are deleted (their messages go with them), a message is retracted, and a
-- character changes owner.
\set chat random(1, 130)
\set cid random(1, 80)
\set uid random(1, 40)
BEGIN;
DELETE FROM messages WHERE id = (SELECT max(id) FROM messages WHERE chat_id = :chat) AND random() < 0.5;
DELETE FROM chats WHERE id = :chat AND random() < 0.1;
UPDATE characters SET user_id = :uid WHERE id = :cid AND random() < 0.2;
END;
