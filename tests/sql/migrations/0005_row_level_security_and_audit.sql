
-- Row-level security: a role that neither owns the tables nor bypasses RLS sees and
-- changes only the rows of the scope its transaction set (SET LOCAL convostore.tenant_id and
-- convostore.user_id; '*' for every user of the tenant). Nothing set: nothing visible. The
-- policies hold no subquery: tenant and owner are on every row.
ALTER TABLE "s".agent_sessions ENABLE ROW LEVEL SECURITY;
ALTER TABLE "s".conversation_messages ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS convostore_scope ON "s".agent_sessions;
CREATE POLICY convostore_scope ON "s".agent_sessions
    USING (tenant_id = current_setting('convostore.tenant_id', true)
           AND (current_setting('convostore.user_id', true) = '*'
                OR user_id = current_setting('convostore.user_id', true)));
DROP POLICY IF EXISTS convostore_scope ON "s".conversation_messages;
CREATE POLICY convostore_scope ON "s".conversation_messages
    USING (tenant_id = current_setting('convostore.tenant_id', true)
           AND (current_setting('convostore.user_id', true) = '*'
                OR user_id = current_setting('convostore.user_id', true)));

-- The audit trail: deletions, erasures, exports and imports, written in the same statement
-- or transaction as what they record. The runtime role may only insert into it.
CREATE TABLE IF NOT EXISTS "s".convostore_audit (
    at timestamptz NOT NULL DEFAULT now(),
    db_role text NOT NULL DEFAULT current_user,
    actor text,
    action text NOT NULL,
    tenant_id varchar(255),
    user_id varchar(255),
    session_id varchar(255),
    rows bigint NOT NULL DEFAULT 0,
    details jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS idx_audit_at ON "s".convostore_audit USING brin (at);
