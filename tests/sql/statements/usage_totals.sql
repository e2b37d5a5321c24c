
SELECT tenant_id,
       CASE $6::text WHEN 'session' THEN session_id::text WHEN 'user' THEN user_id::text
                     WHEN 'agent' THEN agent_name::text
                     ELSE to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD') END AS key,
       count(*) AS turns, sum(requests)::bigint AS requests, sum(input_tokens)::bigint AS input_tokens,
       sum(output_tokens)::bigint AS output_tokens, sum(reasoning_tokens)::bigint AS reasoning_tokens,
       sum(cached_tokens)::bigint AS cached_tokens, coalesce(sum(duration_seconds), 0)::float8 AS duration
FROM "s".conversation_usage
WHERE ($1::text IS NULL OR tenant_id = $1) AND ($2::text IS NULL OR user_id = $2)
  AND ($3::text IS NULL OR session_id = $3) AND ($4::text IS NULL OR agent_name = $4)
  AND ($5::timestamptz IS NULL OR created_at >= $5) AND ($7::timestamptz IS NULL OR created_at < $7)
GROUP BY 1, 2
ORDER BY 1, 2
