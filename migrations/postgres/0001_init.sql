-- service-mgr PostgreSQL job store, schema version 1.
--
-- service-mgrd applies the files of migrations/postgres/ in order at start
-- (they are compiled into the binary), each once, in one transaction under an
-- advisory lock so that managers starting together do not race; the versions
-- applied are in service_mgr.schema_version. Do not edit a released file:
-- add the next one (0002_....sql).
--
-- Everything lives in the schema service_mgr. Times are unix milliseconds
-- (bigint) as the manager keeps them; the views add timestamptz columns.

CREATE SCHEMA IF NOT EXISTS service_mgr;

-- One row per job (a request the manager dispatched).
CREATE TABLE service_mgr.jobs (
    uuid        text COLLATE "C" PRIMARY KEY,
    created_ms  bigint NOT NULL,
    -- The request as dispatched: cmd, service, topic, nodes, glob, dry_run
    -- (the signature itself is not kept). NULL: a stub made by a result that
    -- arrived before its job, completed when the job's row comes.
    request     jsonb,
    -- The nodes the request reached (a JSON array of names).
    expected    jsonb NOT NULL DEFAULT '[]',
    -- Who signed it: the client's public key line "smgr1 client NAME KEYID";
    -- NULL: an unsigned (0.1) request, or a stub.
    client      text,
    -- Host name of the manager that dispatched it.
    manager     text,
    -- When the manager stopped waiting for answers (NULL: not yet).
    finished_ms bigint,
    -- Results dropped because their node had already answered differently.
    conflicts   bigint NOT NULL DEFAULT 0
);
CREATE INDEX jobs_by_time ON service_mgr.jobs (created_ms DESC, uuid DESC);

-- One row per node and job: the node's first answer, or status
-- 'no_response' (result 'null') while it did not answer. Its job's row
-- always exists (the manager writes a stub first when a result comes before
-- its job); no foreign key says so, as checking it per inserted result cost a
-- third of the writer's time: expiry deletes a job's results with it.
CREATE TABLE service_mgr.results (
    uuid        text COLLATE "C" NOT NULL,
    node        text COLLATE "C" NOT NULL,
    status      text NOT NULL,
    received_ms bigint NOT NULL,
    -- The agent's result message byte for byte as received (JSON text, so
    -- that a signed result still verifies; cast it: result::jsonb).
    result      text NOT NULL,
    PRIMARY KEY (uuid, node)
);

-- Who asked what, where, when, and what happened: one row per node answer.
CREATE VIEW service_mgr.history AS
SELECT j.uuid                                   AS job,
       to_timestamp(j.created_ms / 1000.0)      AS requested_at,
       split_part(j.client, ' ', 3)             AS client_name,
       j.client                                 AS client_key,
       j.request ->> 'cmd'                      AS cmd,
       j.request ->> 'service'                  AS service,
       j.request ->> 'topic'                    AS topic,
       j.request -> 'nodes'                     AS nodes,
       j.request ->> 'glob'                     AS glob,
       j.manager                                AS manager,
       r.node                                   AS node,
       r.status                                 AS status,
       to_timestamp(r.received_ms / 1000.0)     AS answered_at,
       r.result::jsonb                          AS result
FROM service_mgr.jobs j
JOIN service_mgr.results r USING (uuid);

-- One row per job, with its answers counted by status.
CREATE VIEW service_mgr.job_summary AS
SELECT j.uuid                                   AS job,
       to_timestamp(j.created_ms / 1000.0)      AS requested_at,
       split_part(j.client, ' ', 3)             AS client_name,
       j.request ->> 'cmd'                      AS cmd,
       j.request ->> 'service'                  AS service,
       j.request ->> 'topic'                    AS topic,
       j.manager                                AS manager,
       jsonb_array_length(j.expected)           AS expected,
       count(r.node) FILTER (WHERE r.status <> 'no_response') AS answered,
       count(r.node) FILTER (WHERE r.status = 'ok')            AS ok,
       count(r.node) FILTER (WHERE r.status NOT IN ('ok', 'no_response')) AS not_ok,
       count(r.node) FILTER (WHERE r.status = 'no_response')   AS no_response,
       to_timestamp(j.finished_ms / 1000.0)     AS finished_at
FROM service_mgr.jobs j
LEFT JOIN service_mgr.results r USING (uuid)
GROUP BY j.uuid;
