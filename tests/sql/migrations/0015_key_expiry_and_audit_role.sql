
-- Who wrote an audit row is the database's word, not the application's: db_role is the
-- session's login role (SET ROLE cannot change it, only a superuser can), and the roles the
-- owner let insert (the runtime role) may name only the application's columns, never db_role
-- or at. Roles set up before this migration had INSERT on every column: narrowed here.
ALTER TABLE "s".convostore_audit ALTER COLUMN db_role SET DEFAULT session_user;

-- API keys may expire; a browser's sign-ins of a key end when one of them signs out (the
-- sign-in token carries the count it was issued under).
ALTER TABLE "s".convostore_api_keys ADD COLUMN IF NOT EXISTS expires_at timestamptz;
ALTER TABLE "s".convostore_api_keys ADD COLUMN IF NOT EXISTS sign_outs integer NOT NULL DEFAULT 0;

DO $$
DECLARE
    grantee_role text;
BEGIN
    FOR grantee_role IN
        SELECT DISTINCT a.grantee::regrole::text
        FROM pg_class c, aclexplode(c.relacl) a
        WHERE c.oid = '"s".convostore_audit'::regclass AND a.privilege_type = 'INSERT'
          AND a.grantee <> c.relowner AND a.grantee <> 0
    LOOP
        EXECUTE format('REVOKE INSERT ON "s".convostore_audit FROM %s', grantee_role);
        EXECUTE format('GRANT INSERT (%s) ON "s".convostore_audit TO %s',
                       'actor, action, tenant_id, user_id, session_id, rows, details', grantee_role);
        EXECUTE format('GRANT UPDATE (sign_outs) ON "s".convostore_api_keys TO %s', grantee_role);
    END LOOP;
END
$$;
