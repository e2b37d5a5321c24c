
INSERT INTO "s".convostore_audit (action, actor, tenant_id, user_id, session_id, rows, details)
VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)
