
INSERT INTO "s".convostore_api_keys (id, secret_hash, name, tenant_id, user_id, expires_at)
VALUES ($1, $2, $3, $4, $5, now() + $6::interval)
RETURNING id, name, tenant_id, user_id, created_at, revoked_at, expires_at, sign_outs
