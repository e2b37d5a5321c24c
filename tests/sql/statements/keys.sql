
SELECT id, name, tenant_id, user_id, created_at, revoked_at, expires_at, sign_outs FROM "s".convostore_api_keys
WHERE ($1::text IS NULL OR tenant_id = $1) ORDER BY created_at, id
