
INSERT INTO "s".convostore_state AS t (tenant_id, agent_name, user_id, state) VALUES ($1, $2, $3, $4::jsonb)
ON CONFLICT (tenant_id, agent_name, user_id) DO UPDATE SET state = t.state || $4::jsonb, updated_at = now()
RETURNING state
