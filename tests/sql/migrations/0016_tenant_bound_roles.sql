
-- Runtime roles bound to one tenant (and optionally one user) by `convostore roles create
-- --bind`. What binds them are restrictive policies naming the role, with the tenant as a
-- constant (convostore.roles): nothing the role can set or call widens them. This table
-- only says which roles are bound, so that a store on such a role refuses at once a call
-- for another tenant instead of finding nothing; the roles read it and cannot write it.
CREATE TABLE IF NOT EXISTS "s".convostore_bound_roles (
    role_name name PRIMARY KEY,
    tenant_id varchar(255) NOT NULL,
    user_id varchar(255),
    bound_at timestamptz NOT NULL DEFAULT now()
);
-- Each role reads its own binding, and no other role's.
ALTER TABLE "s".convostore_bound_roles ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS convostore_own ON "s".convostore_bound_roles;
CREATE POLICY convostore_own ON "s".convostore_bound_roles FOR SELECT USING (role_name = current_user);
GRANT SELECT ON "s".convostore_bound_roles TO PUBLIC;
-- The audit trail and the API keys carry tenants too: row-level security on them, open to
-- every role (a permissive policy that holds for every row), so that a bound role's
-- restrictive policies can narrow them.
ALTER TABLE "s".convostore_audit ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS convostore_open ON "s".convostore_audit;
CREATE POLICY convostore_open ON "s".convostore_audit USING (true) WITH CHECK (true);
ALTER TABLE "s".convostore_api_keys ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS convostore_open ON "s".convostore_api_keys;
CREATE POLICY convostore_open ON "s".convostore_api_keys USING (true) WITH CHECK (true);
