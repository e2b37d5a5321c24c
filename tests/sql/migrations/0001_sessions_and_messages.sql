
CREATE TABLE IF NOT EXISTS "s".agent_sessions (
    id varchar(255) PRIMARY KEY CHECK (id <> ''),
    user_id varchar(255) NOT NULL CHECK (user_id <> ''),
    agent_name varchar(255) NOT NULL CHECK (agent_name <> ''),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    metadata jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    last_seq bigint NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS "s".conversation_messages (
    session_id varchar(255) NOT NULL
        REFERENCES "s".agent_sessions (id) ON DELETE CASCADE,
    seq bigint NOT NULL,
    id varchar(255) NOT NULL CHECK (id <> ''),
    role varchar(50) NOT NULL
        CHECK (role IN ('system', 'developer', 'user', 'assistant', 'tool')),
    content text NOT NULL,
    tool_calls jsonb,
    tool_call_id varchar(255),
    raw jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (session_id, seq)
);

-- A user's sessions by recency (listing, keyset pagination).
CREATE INDEX IF NOT EXISTS idx_sessions_user_id
    ON "s".agent_sessions (user_id, updated_at DESC, id DESC);
-- Idle-session cleanup.
CREATE INDEX IF NOT EXISTS idx_sessions_updated_at ON "s".agent_sessions (updated_at);
-- Message ids are unique per session: the idempotency key of appends.
CREATE UNIQUE INDEX IF NOT EXISTS idx_messages_session_id
    ON "s".conversation_messages (session_id, id);
-- Time-range scans over messages; BRIN costs almost nothing on append-only rows.
CREATE INDEX IF NOT EXISTS idx_messages_created_at
    ON "s".conversation_messages USING brin (created_at);
