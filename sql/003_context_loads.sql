-- 003_context_loads.sql: `ctx context` records each pack it hands out, and pattern usage counts include them.
--
-- Rationale, in brief:
-- * A pack is several rows of context_loads (one per record it holds) sharing pack_id; the task it was made for
--   and the client that asked (`--client NAME`, the MCP client's name) are columns, so loads per day and per client
--   are plain GROUP BYs.
-- * v_patterns_by_usage counts what the legacy store counted (patterns.usage_count, rewritten by every migrate)
--   plus the packs that loaded the pattern since; last_used_at is the later of both. One definition, no writes to
--   the pattern rows (their date is what search's --since and Chroma's `ts` compare).

ALTER TABLE context_loads
    ADD COLUMN pack_id uuid,
    ADD COLUMN task    text,
    ADD COLUMN client  text;
CREATE INDEX context_loads_pack_idx ON context_loads (pack_id);

DROP VIEW v_patterns_by_usage;
CREATE VIEW v_patterns_by_usage AS
SELECT p.id, p.name, p.pattern_type,
       p.usage_count + COALESCE(l.packs, 0) AS usage_count, p.confidence,
       GREATEST(p.last_used_at, l.last_loaded_at) AS last_used_at,
       COALESCE((SELECT array_agg(t.name ORDER BY t.name) FROM pattern_tags pt JOIN tags t ON t.id = pt.tag_id
                 WHERE pt.pattern_id = p.id), '{}') AS tags
FROM patterns p
LEFT JOIN (SELECT record_id, count(DISTINCT COALESCE(pack_id, id)) AS packs, max(loaded_at) AS last_loaded_at
           FROM context_loads WHERE record_type = 'pattern' GROUP BY record_id) l ON l.record_id = p.id
ORDER BY 4 DESC, p.name;
