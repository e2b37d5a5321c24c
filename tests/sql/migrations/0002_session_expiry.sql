
ALTER TABLE "s".agent_sessions ADD COLUMN IF NOT EXISTS expires_at timestamptz;
ALTER TABLE "s".agent_sessions ADD COLUMN IF NOT EXISTS ttl interval;
CREATE INDEX IF NOT EXISTS idx_sessions_expires_at
    ON "s".agent_sessions (expires_at) WHERE expires_at IS NOT NULL;
