
INSERT INTO "s".conversation_usage
    (session_id, tenant_id, id, user_id, agent_name, branch, model, requests, input_tokens, output_tokens,
     reasoning_tokens, cached_tokens, duration_seconds)
SELECT s.id, s.tenant_id, $4, s.user_id, s.agent_name, $5, $6, $7, $8, $9, $10, $11, $12
FROM "s".agent_sessions s
WHERE s.tenant_id = $1 AND s.id = $2 AND ($3::text IS NULL OR s.user_id = $3)
ON CONFLICT (session_id, tenant_id, id) DO NOTHING
RETURNING 1
