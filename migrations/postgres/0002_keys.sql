-- service-mgr PostgreSQL job store, schema version 2: the shared key store.
--
-- Managers sharing a job store share their key decisions too (issue 14,
-- "keys accepted once"): `service-mgr mgmt keys accept` on one manager's host
-- admits the key on all of them. Each manager keeps its key directory
-- (state_dir/keys/{pending,accepted,rejected}/) as the truth its gate reads;
-- a sync thread (src/manager/keysync.rs) pushes the directory's changes here
-- and applies the rows other managers changed to it, about once a second.
--
-- The last change wins, by changed_ms (the clock of the manager that saw the
-- change); a pending row never replaces an accepted or rejected one (filing
-- is no decision). A deleted key stays as a row in state 'deleted', so that
-- the managers that still hold it forget it too; such rows go after 30 days.

CREATE TABLE service_mgr.keys (
    -- The key's id (base64url of its 64 key bytes), as in signed envelopes.
    key_id     text COLLATE "C" PRIMARY KEY,
    -- The public key line, "smgr1 ROLE NAME KEY", as in the key files.
    key        text NOT NULL,
    role       text NOT NULL,
    name       text NOT NULL,
    -- The 16 hex digits `mgmt keys` shows and names the key files by.
    fingerprint text NOT NULL,
    state      text NOT NULL
        CHECK (state IN ('pending', 'accepted', 'rejected', 'deleted')),
    -- When a manager saw the change (unix ms), and which (its host name).
    changed_ms bigint NOT NULL,
    changed_by text NOT NULL,
    -- Bumped on every change from service_mgr.keys_seq: the managers read
    -- the rows changed since the last they saw in this order.
    seq        bigint NOT NULL
);
CREATE SEQUENCE service_mgr.keys_seq OWNED BY service_mgr.keys.seq;
ALTER TABLE service_mgr.keys ALTER COLUMN seq SET DEFAULT nextval('service_mgr.keys_seq');
CREATE INDEX keys_by_seq ON service_mgr.keys (seq);

-- Who decided what about which key, when.
CREATE VIEW service_mgr.key_decisions AS
SELECT fingerprint,
       role,
       name,
       state,
       to_timestamp(changed_ms / 1000.0)        AS changed_at,
       changed_by,
       key
FROM service_mgr.keys;
