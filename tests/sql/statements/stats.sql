
WITH s AS (SELECT * FROM "s".agent_sessions
           WHERE ($1::text IS NULL OR tenant_id = $1) AND ($2::text IS NULL OR user_id = $2))
SELECT (SELECT count(*) FROM s) AS sessions,
       (SELECT count(*) FROM "s".conversation_messages
         WHERE ($1::text IS NULL OR tenant_id = $1) AND ($2::text IS NULL OR user_id = $2)) AS messages,
       (SELECT count(DISTINCT (tenant_id, user_id)) FROM s) AS users,
       (SELECT min(created_at) FROM s) AS oldest_session,
       (SELECT max(updated_at) FROM s) AS newest_activity,
       (SELECT count(*) FROM s WHERE expires_at IS NOT NULL OR ttl IS NOT NULL) AS with_expiry
