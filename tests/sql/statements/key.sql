
SELECT secret_hash, name, tenant_id, user_id, created_at, revoked_at, expires_at, sign_outs,
       coalesce(expires_at <= now(), false) AS expired
FROM "s".convostore_api_keys WHERE id = $1
