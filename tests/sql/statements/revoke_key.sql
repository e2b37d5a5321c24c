
UPDATE "s".convostore_api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL
  AND ($2::text IS NULL OR tenant_id = $2)
RETURNING id
