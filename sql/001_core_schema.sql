-- 001_core_schema.sql: the CODITECT MEMORY-CONTEXT store.
--
-- Rationale, in brief:
-- * PostgreSQL is the record; Chroma only holds embeddings that can always be rebuilt from these rows.
--   So every embeddable row carries `content_sha256` (what the text is now) and `embedded_sha256` (what text
--   Chroma holds vectors for). They differ or the latter is NULL => "not yet embedded"; a later migrate or
--   `ctx validate --repair` embeds it. No flag can drift out of step with the content it describes.
--   `embedded_chunks` says how many vectors (chunks) the row has in Chroma, whose ids are `<row id>:<chunk no>`,
--   so health can compare both stores with two cheap counts.
-- * `identity` is the natural key a record keeps across formats and machines (see coditect_ctx/ingest/records.py):
--   the same session met as Markdown, JSON export and transcript is one row, and re-running migrate is an upsert
--   on it. UUID `id`s (core gen_random_uuid(): the embedded PostgreSQL ships neither uuid-ossp nor pgcrypto) are
--   what other tables and Chroma ids point at.
-- * timestamptz everywhere: sources mix local time with a false `Z`; we store UTC instants and never naive times.
-- * Full text: a stored generated tsvector per table (title weighted A, summary B, body C), GIN indexed; pg_trgm
--   GIN indexes on titles for typo-tolerant matching. Bodies are cut at 200k characters for the tsvector, which
--   PostgreSQL caps at 1 MB; the full text stays in `content`.
-- * JSONB `metadata` keeps whatever a source had beyond the columns, GIN indexed (jsonb_path_ops) for @> queries.
-- * ON DELETE: a source (submodule_registry row) owns its records (CASCADE); a session outlives its checkpoint
--   and a message its session (SET NULL: the link is lost, not the memory); link tables follow both ends (CASCADE);
--   audit rows have no foreign key on purpose: an audit trail must survive the record it describes.

CREATE EXTENSION IF NOT EXISTS pg_trgm;

-- Keeps updated_at honest without trusting every writer to set it.
CREATE OR REPLACE FUNCTION ctx_set_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;

-- One row: what this database is, and the data generation that search caches are keyed on
-- (bumped by every migrate and restore, so a cached answer is never stale).
CREATE TABLE db_metadata (
    id              smallint PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    framework       text        NOT NULL DEFAULT 'CODITECT MEMORY-CONTEXT' CHECK (framework = 'CODITECT MEMORY-CONTEXT'),
    data_generation bigint      NOT NULL DEFAULT 0 CHECK (data_generation >= 0),
    embedding_model text        NOT NULL DEFAULT 'all-MiniLM-L6-v2',
    embedding_dim   integer     NOT NULL DEFAULT 384 CHECK (embedding_dim > 0),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
INSERT INTO db_metadata (id) VALUES (1);

-- Where records come from: the master repo and each submodule that keeps a MEMORY-CONTEXT folder.
CREATE TABLE submodule_registry (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name                text        NOT NULL UNIQUE CHECK (name <> ''),
    repo_path           text,
    memory_context_path text,
    last_migrated_at    timestamptz,
    metadata            jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE checkpoints (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    identity        text        NOT NULL UNIQUE,
    ref             text        NOT NULL,            -- what sessions' **Checkpoint:** field names
    submodule_id    uuid        NOT NULL REFERENCES submodule_registry (id) ON DELETE CASCADE,
    title           text        NOT NULL,
    summary         text        NOT NULL DEFAULT '',
    content         text        NOT NULL DEFAULT '',
    checkpoint_at   timestamptz,
    sprint          text,
    status          text        NOT NULL DEFAULT 'completed'
                    CHECK (status IN ('active', 'in_progress', 'completed', 'blocked', 'archived')),
    git_branch      text,
    git_commit      text        CHECK (git_commit IS NULL OR git_commit ~ '^[0-9a-f]{7,40}$'),
    privacy_level   text        NOT NULL DEFAULT 'TEAM' CHECK (privacy_level IN ('PUBLIC', 'TEAM', 'PRIVATE', 'EPHEMERAL')),
    metadata        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    source_path     text,
    source_sha256   text        CHECK (source_sha256 IS NULL OR source_sha256 ~ '^[0-9a-f]{64}$'),
    content_sha256  text        NOT NULL,
    embedded_sha256 text,
    embedded_chunks integer     NOT NULL DEFAULT 0 CHECK (embedded_chunks >= 0),  -- vectors in Chroma for it
    search_vector   tsvector GENERATED ALWAYS AS (
        setweight(to_tsvector('english', coalesce(title, '')), 'A') ||
        setweight(to_tsvector('english', left(coalesce(summary, ''), 20000)), 'B') ||
        setweight(to_tsvector('english', left(coalesce(content, ''), 200000)), 'C')
    ) STORED,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX checkpoints_ref_idx ON checkpoints (ref);
CREATE INDEX checkpoints_submodule_idx ON checkpoints (submodule_id);
CREATE INDEX checkpoints_at_idx ON checkpoints (checkpoint_at DESC);
CREATE INDEX checkpoints_search_idx ON checkpoints USING gin (search_vector);
CREATE INDEX checkpoints_title_trgm_idx ON checkpoints USING gin (title gin_trgm_ops);
CREATE INDEX checkpoints_metadata_idx ON checkpoints USING gin (metadata jsonb_path_ops);

CREATE TABLE sessions (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    identity        text        NOT NULL UNIQUE,
    submodule_id    uuid        NOT NULL REFERENCES submodule_registry (id) ON DELETE CASCADE,
    checkpoint_id   uuid        REFERENCES checkpoints (id) ON DELETE SET NULL,
    checkpoint_ref  text,                            -- kept even when the checkpoint is not (yet) in the store
    title           text        NOT NULL,
    summary         text        NOT NULL DEFAULT '',
    content         text        NOT NULL DEFAULT '',
    started_at      timestamptz,
    ended_at        timestamptz CHECK (ended_at IS NULL OR started_at IS NULL OR ended_at >= started_at),
    repository      text,
    participants    jsonb       NOT NULL DEFAULT '[]'::jsonb CHECK (jsonb_typeof(participants) = 'array'),
    objectives      jsonb       NOT NULL DEFAULT '[]'::jsonb CHECK (jsonb_typeof(objectives) = 'array'),
    status          text        NOT NULL DEFAULT 'completed'
                    CHECK (status IN ('active', 'completed', 'archived')),
    privacy_level   text        NOT NULL DEFAULT 'TEAM' CHECK (privacy_level IN ('PUBLIC', 'TEAM', 'PRIVATE', 'EPHEMERAL')),
    source_formats  text[]      NOT NULL DEFAULT '{}',   -- every format this session was met in
    metadata        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    source_path     text,
    source_sha256   text        CHECK (source_sha256 IS NULL OR source_sha256 ~ '^[0-9a-f]{64}$'),
    content_sha256  text        NOT NULL,
    embedded_sha256 text,
    embedded_chunks integer     NOT NULL DEFAULT 0 CHECK (embedded_chunks >= 0),  -- vectors in Chroma for it
    search_vector   tsvector GENERATED ALWAYS AS (
        setweight(to_tsvector('english', coalesce(title, '')), 'A') ||
        setweight(to_tsvector('english', left(coalesce(summary, ''), 20000)), 'B') ||
        setweight(to_tsvector('english', left(coalesce(content, ''), 200000)), 'C')
    ) STORED,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sessions_submodule_idx ON sessions (submodule_id);
CREATE INDEX sessions_checkpoint_idx ON sessions (checkpoint_id);
CREATE INDEX sessions_started_idx ON sessions (started_at DESC);
CREATE INDEX sessions_search_idx ON sessions USING gin (search_vector);
CREATE INDEX sessions_title_trgm_idx ON sessions USING gin (title gin_trgm_ops);
CREATE INDEX sessions_metadata_idx ON sessions USING gin (metadata jsonb_path_ops);

-- Learned patterns (the NESTED LEARNING processor's output; the legacy SQLite store held them).
CREATE TABLE patterns (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    identity        text        NOT NULL UNIQUE,
    submodule_id    uuid        REFERENCES submodule_registry (id) ON DELETE CASCADE,
    name            text        NOT NULL,
    pattern_type    text        NOT NULL DEFAULT 'general',
    description     text        NOT NULL DEFAULT '',
    content         text        NOT NULL DEFAULT '',
    usage_count     integer     NOT NULL DEFAULT 0 CHECK (usage_count >= 0),
    confidence      real        CHECK (confidence IS NULL OR confidence BETWEEN 0 AND 1),
    last_used_at    timestamptz,
    privacy_level   text        NOT NULL DEFAULT 'TEAM' CHECK (privacy_level IN ('PUBLIC', 'TEAM', 'PRIVATE', 'EPHEMERAL')),
    metadata        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    source_path     text,
    source_sha256   text        CHECK (source_sha256 IS NULL OR source_sha256 ~ '^[0-9a-f]{64}$'),
    content_sha256  text        NOT NULL,
    embedded_sha256 text,
    embedded_chunks integer     NOT NULL DEFAULT 0 CHECK (embedded_chunks >= 0),  -- vectors in Chroma for it
    search_vector   tsvector GENERATED ALWAYS AS (
        setweight(to_tsvector('english', coalesce(name, '')), 'A') ||
        setweight(to_tsvector('english', left(coalesce(description, ''), 20000)), 'B') ||
        setweight(to_tsvector('english', left(coalesce(content, ''), 200000)), 'C')
    ) STORED,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX patterns_usage_idx ON patterns (usage_count DESC);
CREATE INDEX patterns_search_idx ON patterns USING gin (search_vector);
CREATE INDEX patterns_name_trgm_idx ON patterns USING gin (name gin_trgm_ops);
CREATE INDEX patterns_metadata_idx ON patterns USING gin (metadata jsonb_path_ops);

-- Conversation turns. identity = CODITECT's own message hash (sha256 of {"role","content"}), so a message
-- repeated across checkpoints and transcripts is stored once; `occurrences` counts how often it was met.
CREATE TABLE messages (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    identity        text        NOT NULL UNIQUE,
    submodule_id    uuid        NOT NULL REFERENCES submodule_registry (id) ON DELETE CASCADE,
    session_id      uuid        REFERENCES sessions (id) ON DELETE SET NULL,
    checkpoint_id   uuid        REFERENCES checkpoints (id) ON DELETE SET NULL,
    checkpoint_ref  text,
    role            text        NOT NULL CHECK (role IN ('user', 'assistant', 'tool', 'system')),
    kind            text        NOT NULL DEFAULT 'text' CHECK (kind IN ('text', 'tool_call', 'tool_result')),
    position        integer     CHECK (position IS NULL OR position >= 0),
    content         text        NOT NULL,
    first_seen      timestamptz,
    occurrences     integer     NOT NULL DEFAULT 1 CHECK (occurrences >= 1),
    privacy_level   text        NOT NULL DEFAULT 'TEAM' CHECK (privacy_level IN ('PUBLIC', 'TEAM', 'PRIVATE', 'EPHEMERAL')),
    metadata        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    source_path     text,
    source_sha256   text        CHECK (source_sha256 IS NULL OR source_sha256 ~ '^[0-9a-f]{64}$'),
    content_sha256  text        NOT NULL,
    embedded_sha256 text,
    embedded_chunks integer     NOT NULL DEFAULT 0 CHECK (embedded_chunks >= 0),  -- vectors in Chroma for it
    search_vector   tsvector GENERATED ALWAYS AS (to_tsvector('english', left(content, 200000))) STORED,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX messages_session_idx ON messages (session_id, position);
CREATE INDEX messages_checkpoint_idx ON messages (checkpoint_id);
CREATE INDEX messages_submodule_idx ON messages (submodule_id);
CREATE INDEX messages_first_seen_idx ON messages (first_seen DESC);
CREATE INDEX messages_search_idx ON messages USING gin (search_vector);
CREATE INDEX messages_metadata_idx ON messages USING gin (metadata jsonb_path_ops);

-- Tags are shared vocabulary: stored once, lower-cased, linked many-to-many.
CREATE TABLE tags (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name       text        NOT NULL UNIQUE CHECK (name <> '' AND name = lower(name)),
    category   text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX tags_name_trgm_idx ON tags USING gin (name gin_trgm_ops);

CREATE TABLE session_tags (
    session_id uuid NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    tag_id     uuid NOT NULL REFERENCES tags (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (session_id, tag_id)
);
CREATE INDEX session_tags_tag_idx ON session_tags (tag_id);

CREATE TABLE pattern_tags (
    pattern_id uuid NOT NULL REFERENCES patterns (id) ON DELETE CASCADE,
    tag_id     uuid NOT NULL REFERENCES tags (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pattern_id, tag_id)
);
CREATE INDEX pattern_tags_tag_idx ON pattern_tags (tag_id);

-- One row per record whose text was changed on the way in (PII redaction) or whose privacy was decided.
-- `detections` counts what was found by kind ({"email": 2, "api_key": 1}); never the values themselves.
CREATE TABLE privacy_audit (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    record_type     text        NOT NULL CHECK (record_type IN ('session', 'checkpoint', 'pattern', 'message')),
    record_identity text        NOT NULL,
    record_id       uuid,
    action          text        NOT NULL CHECK (action IN ('redacted', 'classified', 'exported', 'deleted')),
    privacy_level   text        NOT NULL DEFAULT 'TEAM' CHECK (privacy_level IN ('PUBLIC', 'TEAM', 'PRIVATE', 'EPHEMERAL')),
    detections      jsonb       NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(detections) = 'object'),
    source_path     text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (record_type, record_identity, action)
);
CREATE INDEX privacy_audit_created_idx ON privacy_audit (created_at DESC);

-- Which memory was loaded into which session's context, for usage statistics.
CREATE TABLE context_loads (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    session_id   uuid        REFERENCES sessions (id) ON DELETE SET NULL,
    record_type  text        NOT NULL CHECK (record_type IN ('session', 'checkpoint', 'pattern', 'message')),
    record_id    uuid        NOT NULL,
    loaded_at    timestamptz NOT NULL DEFAULT now(),
    token_count  integer     CHECK (token_count IS NULL OR token_count >= 0),
    relevance    real,
    metadata     jsonb       NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX context_loads_loaded_idx ON context_loads (loaded_at DESC);
CREATE INDEX context_loads_record_idx ON context_loads (record_type, record_id);

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['db_metadata', 'submodule_registry', 'checkpoints', 'sessions', 'patterns', 'messages', 'tags']
    LOOP
        EXECUTE format('CREATE TRIGGER %I BEFORE UPDATE ON %I FOR EACH ROW EXECUTE FUNCTION ctx_set_updated_at()',
                       t || '_set_updated_at', t);
    END LOOP;
END;
$$;

-- The four views of the original design.
CREATE VIEW v_active_sessions AS
SELECT s.id, s.title, r.name AS submodule, s.started_at, s.checkpoint_ref, s.privacy_level,
       COALESCE(array_agg(t.name ORDER BY t.name) FILTER (WHERE t.name IS NOT NULL), '{}') AS tags,
       s.updated_at
FROM sessions s
JOIN submodule_registry r ON r.id = s.submodule_id
LEFT JOIN session_tags st ON st.session_id = s.id
LEFT JOIN tags t ON t.id = st.tag_id
WHERE s.status = 'active'
GROUP BY s.id, r.name;

CREATE VIEW v_patterns_by_usage AS
SELECT p.id, p.name, p.pattern_type, p.usage_count, p.confidence, p.last_used_at,
       COALESCE(array_agg(t.name ORDER BY t.name) FILTER (WHERE t.name IS NOT NULL), '{}') AS tags
FROM patterns p
LEFT JOIN pattern_tags pt ON pt.pattern_id = p.id
LEFT JOIN tags t ON t.id = pt.tag_id
GROUP BY p.id
ORDER BY p.usage_count DESC, p.name;

CREATE VIEW v_privacy_audit_summary AS
SELECT record_type, action, privacy_level, count(*) AS records,
       max(created_at) AS last_at
FROM privacy_audit
GROUP BY record_type, action, privacy_level
ORDER BY record_type, action, privacy_level;

CREATE VIEW v_recent_checkpoints AS
SELECT c.id, c.title, r.name AS submodule, c.checkpoint_at, c.sprint, c.status, c.git_branch, c.git_commit,
       (SELECT count(*) FROM sessions s WHERE s.checkpoint_id = c.id) AS sessions
FROM checkpoints c
JOIN submodule_registry r ON r.id = c.submodule_id
ORDER BY c.checkpoint_at DESC NULLS LAST
LIMIT 50;
