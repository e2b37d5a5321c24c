-- On distributed tables, the functions that calls are delegated with (append, read, compact)
-- plan each statement with the call's values (custom plans), as Citus plans a distributed
-- statement from them. On the node holding the shard, Citus 12.1.12, 13.2.1, 13.2.2, 14.0.0
-- and 14.0.1 add a fresh copy of a reused generic plan's local plan to it on every run
-- (upstream pull request 8824 fixes that): the backend of a pooled connection grew by about
-- 144 KB per append and 44 KB per read until it closed, and the statements were planned
-- again all the same. (Where Citus is fixed, reused plans would make a lone append on the
-- worker about 1.45x faster: measured with the fix applied to 13.2.2; see the README.)
-- And convostore_append_sharded (distributed by its session argument too) is delegated to
-- the node holding that session. Run after distributing and after the function registry
-- installs any function (CREATE OR REPLACE resets a function's settings); a schema that is
-- not distributed is left as it is. Idempotent.
DO $fit$
DECLARE
    f regprocedure;
BEGIN
    IF to_regclass('pg_catalog.pg_dist_partition') IS NULL THEN
        RETURN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition
                    WHERE logicalrelid = to_regclass('"s".agent_sessions')) THEN
        RETURN;
    END IF;
    FOR f IN
        SELECT p.oid::regprocedure FROM pg_catalog.pg_proc p
         WHERE p.pronamespace = to_regnamespace('"s"')
           AND p.proname IN ('convostore_append', 'convostore_read', 'convostore_compact')
           AND NOT coalesce('plan_cache_mode=force_custom_plan' = ANY (p.proconfig), false)
         ORDER BY p.proname
    LOOP
        EXECUTE format('ALTER FUNCTION %s SET plan_cache_mode = force_custom_plan', f);
    END LOOP;
    FOR f IN
        SELECT p.oid::regprocedure FROM pg_catalog.pg_proc p
         WHERE p.pronamespace = to_regnamespace('"s"') AND p.proname = 'convostore_append_sharded'
           AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_object o
                            WHERE o.classid = 'pg_catalog.pg_proc'::regclass AND o.objid = p.oid
                              AND o.distribution_argument_index IS NOT NULL)
    LOOP
        PERFORM create_distributed_function(f::text, 'p_route', colocate_with => '"s".agent_sessions');
    END LOOP;
END
$fit$;
