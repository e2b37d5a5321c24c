
-- Every row carries its tenant (the application), and messages their owner too, so that
-- every statement and every row-level security policy can scope by them without a join or
-- a subquery (which distributed tables cannot hold). A session id is unique per tenant.
ALTER TABLE "s".agent_sessions ADD COLUMN IF NOT EXISTS tenant_id varchar(255) NOT NULL DEFAULT 'default';
ALTER TABLE "s".conversation_messages ADD COLUMN IF NOT EXISTS tenant_id varchar(255) NOT NULL DEFAULT 'default';
ALTER TABLE "s".conversation_messages ADD COLUMN IF NOT EXISTS user_id varchar(255);
UPDATE "s".conversation_messages m SET user_id = s.user_id
  FROM "s".agent_sessions s WHERE s.id = m.session_id AND m.user_id IS NULL;
ALTER TABLE "s".conversation_messages ALTER COLUMN user_id SET NOT NULL;
-- No defaults: a statement that forgets the tenant fails instead of writing into 'default'.
ALTER TABLE "s".agent_sessions ALTER COLUMN tenant_id DROP DEFAULT;
ALTER TABLE "s".conversation_messages ALTER COLUMN tenant_id DROP DEFAULT;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'agent_sessions_tenant_id_check'
                   AND conrelid = '"s".agent_sessions'::regclass) THEN
        ALTER TABLE "s".agent_sessions ADD CONSTRAINT agent_sessions_tenant_id_check CHECK (tenant_id <> '');
    END IF;
    -- Keys: (id, tenant_id) for sessions, (session_id, tenant_id, seq) and (session_id,
    -- tenant_id, id) for messages; the foreign key follows. The session id leads: it is the
    -- selective column (and a distributed table's key); a tenant may hold millions of rows.
    IF EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'conversation_messages_session_id_fkey'
               AND conrelid = '"s".conversation_messages'::regclass) THEN
        ALTER TABLE "s".conversation_messages DROP CONSTRAINT conversation_messages_session_id_fkey;
        ALTER TABLE "s".conversation_messages DROP CONSTRAINT conversation_messages_pkey;
        ALTER TABLE "s".agent_sessions DROP CONSTRAINT agent_sessions_pkey;
        ALTER TABLE "s".agent_sessions ADD CONSTRAINT agent_sessions_pkey PRIMARY KEY (id, tenant_id);
        ALTER TABLE "s".conversation_messages
            ADD CONSTRAINT conversation_messages_pkey PRIMARY KEY (session_id, tenant_id, seq);
        ALTER TABLE "s".conversation_messages ADD CONSTRAINT conversation_messages_session_fkey
            FOREIGN KEY (session_id, tenant_id) REFERENCES "s".agent_sessions (id, tenant_id) ON DELETE CASCADE;
        DROP INDEX "s".idx_messages_session_id;
        DROP INDEX "s".idx_sessions_user_id;
    END IF;
    -- Times that Python's datetime could not read back are refused by the table too.
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'agent_sessions_readable_times'
                   AND conrelid = '"s".agent_sessions'::regclass) THEN
        ALTER TABLE "s".agent_sessions ADD CONSTRAINT agent_sessions_readable_times
            CHECK (ttl IS NULL OR ttl <= interval '36525 days') NOT VALID;
        ALTER TABLE "s".agent_sessions ADD CONSTRAINT agent_sessions_readable_expiry
            CHECK (expires_at IS NULL OR expires_at < '9999-01-01') NOT VALID;
    END IF;
END $$;
CREATE UNIQUE INDEX IF NOT EXISTS idx_messages_session_id
    ON "s".conversation_messages (session_id, tenant_id, id);
-- 'item': a framework's item that is no message (kept verbatim in raw).
ALTER TABLE "s".conversation_messages DROP CONSTRAINT IF EXISTS conversation_messages_role_check;
ALTER TABLE "s".conversation_messages ADD CONSTRAINT conversation_messages_role_check
    CHECK (role IN ('system', 'developer', 'user', 'assistant', 'tool', 'item')) NOT VALID;
-- A sliding expiry (ttl) is now derived from the last activity (updated_at + ttl) instead of
-- being rewritten by every append; expires_at keeps only fixed expiries.
UPDATE "s".agent_sessions SET expires_at = NULL WHERE ttl IS NOT NULL AND expires_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_sessions_sliding ON "s".agent_sessions (updated_at) WHERE ttl IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_sessions_user_id
    ON "s".agent_sessions (tenant_id, user_id, updated_at DESC, id DESC);
-- Encryption at rest (optional): a sealed message keeps its content, tool calls and raw
-- item in `sealed` (AES-GCM), with the id of the master key that sealed it.
ALTER TABLE "s".conversation_messages ADD COLUMN IF NOT EXISTS key_id varchar(64);
ALTER TABLE "s".conversation_messages ADD COLUMN IF NOT EXISTS sealed bytea;
