//! Schema name validation and versioned migrations, applied under an advisory lock.

use reel_core::ReelError;
use tokio_postgres::Client;

/// Migrations in order; `{s}` is the schema name. Migration `i` brings the schema to version `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: streams, events and the head row. Appends lock the head row (`FOR UPDATE`) for their
    // whole transaction, so positions are assigned in commit order: gap-free, and a reader never
    // finds an event below a position it has passed (a bigserial alone cannot promise that).
    "CREATE TABLE {s}.streams (
        stream_id bigserial PRIMARY KEY,
        name      text NOT NULL UNIQUE,
        category  text NOT NULL,
        version   bigint NOT NULL
     );
     CREATE INDEX streams_by_category ON {s}.streams (category, name);
     CREATE TABLE {s}.events (
        position       bigint PRIMARY KEY,
        stream_id      bigint NOT NULL,
        stream_version bigint NOT NULL,
        event_id       uuid NOT NULL,
        event_type     text NOT NULL,
        data           bytea NOT NULL,
        metadata       jsonb,
        recorded_at    bigint NOT NULL,
        UNIQUE (stream_id, stream_version)
     );
     CREATE TABLE {s}.head (
        singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
        position  bigint NOT NULL
     );
     INSERT INTO {s}.head (singleton, position) VALUES (true, 0);",
    // 2: subscriptions (leases and compare-and-swap revisions) and parked events.
    "CREATE TABLE {s}.subscriptions (
        id                    text PRIMARY KEY,
        group_name            text NOT NULL,
        run_mode              text NOT NULL,
        status                text NOT NULL,
        position              bigint NOT NULL,
        retry_attempt         integer NOT NULL,
        error_message         text,
        error_previous_status text,
        paused_from           text,
        last_saved_at         bigint NOT NULL,
        error_position        bigint,
        lease_owner           text,
        lease_expires_at      bigint,
        revision              bigint NOT NULL DEFAULT 0
     );
     CREATE TABLE {s}.parked_events (
        subscription_id text NOT NULL,
        position        bigint NOT NULL,
        event_id        uuid NOT NULL,
        event_type      text NOT NULL,
        error           text NOT NULL,
        parked_at       bigint NOT NULL,
        PRIMARY KEY (subscription_id, position)
     );",
    // 3: the latest aggregate snapshot per stream.
    "CREATE TABLE {s}.snapshots (
        stream         text PRIMARY KEY,
        version        bigint NOT NULL,
        schema_version integer NOT NULL,
        data           bytea NOT NULL,
        taken_at       bigint NOT NULL
     );",
    // 4: when a lease holder last renewed (shown to operators beside the owner).
    "ALTER TABLE {s}.subscriptions ADD COLUMN lease_renewed_at bigint;",
    // 5: a whole group of appends in one call (see fast_append.rs): lock the head, check that the
    // group's streams are still as the writer read them, write, move the head, notify. Each
    // statement of a volatile PL/pgSQL function takes a fresh snapshot, so the checks after the
    // lock see every append committed before it. NULL: something changed, nothing was written.
    "CREATE FUNCTION {s}.append_group(
        p_checked_ids bigint[], p_checked_versions bigint[],
        p_new_names text[], p_new_categories text[], p_new_versions bigint[],
        p_final_ids bigint[], p_final_versions bigint[],
        p_offsets bigint[], p_names text[], p_versions bigint[], p_ids uuid[], p_types text[],
        p_data bytea[], p_metadata jsonb[], p_recorded_at bigint, p_channel text
     ) RETURNS bigint LANGUAGE plpgsql AS $fn$
     DECLARE
        v_head bigint;
        v_written bigint;
     BEGIN
        SELECT h.position INTO v_head FROM {s}.head h FOR UPDATE;
        IF EXISTS (
            SELECT 1 FROM unnest(p_checked_ids, p_checked_versions) AS c(stream_id, version)
            LEFT JOIN {s}.streams s ON s.stream_id = c.stream_id
            WHERE s.version IS DISTINCT FROM c.version
        ) OR EXISTS (SELECT 1 FROM {s}.streams s WHERE s.name = ANY(p_new_names)) THEN
            RETURN NULL;
        END IF;
        UPDATE {s}.streams s SET version = f.version
        FROM unnest(p_final_ids, p_final_versions) AS f(stream_id, version)
        WHERE s.stream_id = f.stream_id;
        WITH created AS (
            INSERT INTO {s}.streams (name, category, version)
            SELECT * FROM unnest(p_new_names, p_new_categories, p_new_versions)
            RETURNING stream_id, name
        ), touched AS (
            SELECT c.stream_id, c.name FROM created c
            UNION ALL
            SELECT s.stream_id, s.name FROM {s}.streams s WHERE s.stream_id = ANY(p_final_ids)
        )
        INSERT INTO {s}.events (position, stream_id, stream_version, event_id, event_type, data, metadata, recorded_at)
        SELECT v_head + x.o, t.stream_id, x.v, x.i, x.t, x.d, x.m, p_recorded_at
        FROM unnest(p_offsets, p_names, p_versions, p_ids, p_types, p_data, p_metadata) AS x(o, n, v, i, t, d, m)
        JOIN touched t ON t.name = x.n
        ORDER BY x.o;
        GET DIAGNOSTICS v_written = ROW_COUNT;
        IF v_written <> cardinality(p_offsets) THEN
            RAISE EXCEPTION 'append_group wrote % of % events', v_written, cardinality(p_offsets);
        END IF;
        UPDATE {s}.head SET position = v_head + v_written;
        PERFORM pg_notify(p_channel, (v_head + v_written)::text);
        RETURN v_head;
     END
     $fn$;",
    // 6: appends that had to queue for the head release it before their flush (see durable.rs).
    // `durable_head` holds one row per writer connection; the highest position is the durable
    // head, which readers do not pass. The existing log was written with durable commits, so it
    // starts as the head. `append_group_v2` is `append_group` without NOTIFY (announced by the
    // listener after the flush): when it gets the head at once it commits durably and records
    // its new head itself (`confirmed`); when it had to wait, another process is appending, and it
    // commits without waiting for the flush, for the caller's barrier to confirm. The old
    // function stays for processes of the previous version still running.
    "CREATE TABLE {s}.durable_head (
        connection_pid integer PRIMARY KEY,
        position       bigint NOT NULL
     );
     INSERT INTO {s}.durable_head (connection_pid, position) SELECT 0, position FROM {s}.head;
     CREATE FUNCTION {s}.append_group_v2(
        p_checked_ids bigint[], p_checked_versions bigint[],
        p_new_names text[], p_new_categories text[], p_new_versions bigint[],
        p_final_ids bigint[], p_final_versions bigint[],
        p_offsets bigint[], p_names text[], p_versions bigint[], p_ids uuid[], p_types text[],
        p_data bytea[], p_metadata jsonb[], p_recorded_at bigint,
        OUT o_head bigint, OUT o_confirmed boolean
     ) LANGUAGE plpgsql AS $fn$
     DECLARE
        v_head bigint;
        v_written bigint;
     BEGIN
        -- Queued in the lock manager first (see writer.rs), then the row lock as before.
        o_confirmed := pg_try_advisory_xact_lock(hashtext('reel-head:{s}'));
        IF NOT o_confirmed THEN
            PERFORM set_config('synchronous_commit', 'off', true);
            PERFORM pg_advisory_xact_lock(hashtext('reel-head:{s}'));
        END IF;
        SELECT h.position INTO v_head FROM {s}.head h FOR UPDATE;
        IF EXISTS (
            SELECT 1 FROM unnest(p_checked_ids, p_checked_versions) AS c(stream_id, version)
            LEFT JOIN {s}.streams s ON s.stream_id = c.stream_id
            WHERE s.version IS DISTINCT FROM c.version
        ) OR EXISTS (SELECT 1 FROM {s}.streams s WHERE s.name = ANY(p_new_names)) THEN
            o_head := NULL;
            o_confirmed := false;
            RETURN;
        END IF;
        UPDATE {s}.streams s SET version = f.version
        FROM unnest(p_final_ids, p_final_versions) AS f(stream_id, version)
        WHERE s.stream_id = f.stream_id;
        WITH created AS (
            INSERT INTO {s}.streams (name, category, version)
            SELECT * FROM unnest(p_new_names, p_new_categories, p_new_versions)
            RETURNING stream_id, name
        ), touched AS (
            SELECT c.stream_id, c.name FROM created c
            UNION ALL
            SELECT s.stream_id, s.name FROM {s}.streams s WHERE s.stream_id = ANY(p_final_ids)
        )
        INSERT INTO {s}.events (position, stream_id, stream_version, event_id, event_type, data, metadata, recorded_at)
        SELECT v_head + x.o, t.stream_id, x.v, x.i, x.t, x.d, x.m, p_recorded_at
        FROM unnest(p_offsets, p_names, p_versions, p_ids, p_types, p_data, p_metadata) AS x(o, n, v, i, t, d, m)
        JOIN touched t ON t.name = x.n
        ORDER BY x.o;
        GET DIAGNOSTICS v_written = ROW_COUNT;
        IF v_written <> cardinality(p_offsets) THEN
            RAISE EXCEPTION 'append_group wrote % of % events', v_written, cardinality(p_offsets);
        END IF;
        UPDATE {s}.head SET position = v_head + v_written;
        IF o_confirmed THEN
            -- A durable commit: its own barrier.
            INSERT INTO {s}.durable_head AS d (connection_pid, position) VALUES (pg_backend_pid(), v_head + v_written)
            ON CONFLICT (connection_pid) DO UPDATE SET position = greatest(d.position, excluded.position);
        END IF;
        o_head := v_head;
     END
     $fn$;",
    // 7: the head is held for the events' insert only. Every appender locks the rows of the
    // group's existing streams first, in stream id order, and checks them there, so stream work
    // no longer serialises writers of other streams; then it takes the head with the row lock
    // alone (an advisory lock in front of it cut throughput across 16 connections to a third,
    // docs/BENCHMARKS.md). Lock order is always streams (by id), then the head, in this function
    // and in the careful path (writer.rs), so appenders never deadlock. New streams are created
    // under the head, which makes creators of one name take turns; a name created meanwhile
    // fails the insert, which rolls the whole call back. While other processes append, the
    // commit does not wait for its flush: the caller pipelines a barrier behind the call
    // (durable.rs), so one round trip carries both and the head is never held across a flush.
    // A process that has appended alone for a while passes `p_durable`: the call then commits
    // durably and records its own durable head, one transaction instead of two. NULL: nothing
    // written, decide again.
    // `append_group_v2` of processes of the previous version still running takes the head
    // first; see docs/OPERATIONS.md on upgrades.
    "CREATE FUNCTION {s}.append_group_v3(
        p_checked_ids bigint[], p_checked_versions bigint[],
        p_new_names text[], p_new_categories text[], p_new_versions bigint[],
        p_final_ids bigint[], p_final_versions bigint[],
        p_offsets bigint[], p_names text[], p_versions bigint[], p_ids uuid[], p_types text[],
        p_data bytea[], p_metadata jsonb[], p_recorded_at bigint, p_durable boolean
     ) RETURNS bigint LANGUAGE plpgsql AS $fn$
     DECLARE
        v_matching bigint;
        v_count bigint := cardinality(p_offsets);
        v_head bigint;
        v_written bigint;
     BEGIN
        IF cardinality(p_checked_ids) > 0 THEN
            -- A row whose version moved no longer joins (rechecked after waiting for its lock).
            SELECT count(*) INTO v_matching FROM (
                SELECT 1 FROM {s}.streams s
                JOIN unnest(p_checked_ids, p_checked_versions) AS c(stream_id, version)
                  ON s.stream_id = c.stream_id AND s.version = c.version
                ORDER BY s.stream_id
                FOR UPDATE OF s
            ) AS locked;
            IF v_matching <> cardinality(p_checked_ids) THEN
                RETURN NULL;
            END IF;
        END IF;
        -- Checked again by the insert under the head: a name created in between fails it.
        IF cardinality(p_new_names) > 0 AND EXISTS (SELECT 1 FROM {s}.streams s WHERE s.name = ANY(p_new_names)) THEN
            RETURN NULL;
        END IF;
        -- Nothing is written before every check has passed: a NULL answer commits nothing.
        UPDATE {s}.streams s SET version = f.version
        FROM unnest(p_final_ids, p_final_versions) AS f(stream_id, version)
        WHERE s.stream_id = f.stream_id;
        IF NOT p_durable THEN
            PERFORM set_config('synchronous_commit', 'off', true);
        END IF;
        UPDATE {s}.head SET position = position + v_count RETURNING position - v_count INTO v_head;
        WITH created AS (
            INSERT INTO {s}.streams (name, category, version)
            SELECT * FROM unnest(p_new_names, p_new_categories, p_new_versions)
            RETURNING stream_id, name
        ), touched AS (
            SELECT c.stream_id, c.name FROM created c
            UNION ALL
            SELECT s.stream_id, s.name FROM {s}.streams s WHERE s.stream_id = ANY(p_checked_ids)
        )
        INSERT INTO {s}.events (position, stream_id, stream_version, event_id, event_type, data, metadata, recorded_at)
        SELECT v_head + x.o, t.stream_id, x.v, x.i, x.t, x.d, x.m, p_recorded_at
        FROM unnest(p_offsets, p_names, p_versions, p_ids, p_types, p_data, p_metadata) AS x(o, n, v, i, t, d, m)
        JOIN touched t ON t.name = x.n
        ORDER BY x.o;
        GET DIAGNOSTICS v_written = ROW_COUNT;
        IF v_written <> v_count THEN
            RAISE EXCEPTION 'append_group wrote % of % events', v_written, v_count;
        END IF;
        IF p_durable THEN
            INSERT INTO {s}.durable_head AS d (connection_pid, position) VALUES (pg_backend_pid(), v_head + v_count)
            ON CONFLICT (connection_pid) DO UPDATE SET position = greatest(d.position, excluded.position);
        END IF;
        RETURN v_head;
     END
     $fn$;",
    // 8: the latest warning a subscriber reported while it kept running, and when.
    "ALTER TABLE {s}.subscriptions ADD COLUMN warning_message text, ADD COLUMN warning_at bigint;",
    // 9: device presence (a row per device, updated by heartbeats) and the leases that split
    // presence work between worker processes. Units without the agent are registered with the
    // endpoint the platform pings and pushes configuration to, or fetches events from.
    "CREATE TABLE {s}.devices (
        device          text PRIMARY KEY,
        display_name    text,
        interval_ms     bigint NOT NULL,
        rtt_ms          integer,
        last_heard_at   bigint NOT NULL,
        clock_skew_ms   bigint NOT NULL,
        config_version  bigint,
        config_acked_at bigint,
        online          boolean NOT NULL DEFAULT false,
        session         bigint NOT NULL DEFAULT 0,
        changes         bigint NOT NULL DEFAULT 0,
        since           bigint,
        endpoint        text,
        link            text,
        fetch_position  bigint NOT NULL DEFAULT 0,
        link_error      text
     );
     CREATE TABLE {s}.work_leases (
        name       text PRIMARY KEY,
        owner      text NOT NULL,
        expires_at bigint NOT NULL
     );",
    // 10: tags. Each event's tags are kept with it (a JSON array, NULL when none) and indexed by
    // tag then position, which serves queries and append conditions (tag_index.rs). Existing
    // events have no tags, so the index starts empty. `append_group_v4` is `append_group_v3`
    // that also writes tags and decides conditions holding the head (one element per query item;
    // NULL when one fails, and the careful path gives the exact answer). `condition_matches` is
    // the one definition of a condition's first match, used by both paths: each query item is
    // one ordered range read of the tag index (or of the log from `after`, for a type-only item). Lock order stays streams,
    // then the head.
    "ALTER TABLE {s}.events ADD COLUMN tags jsonb;
     CREATE TABLE {s}.event_tags (
        tag      text NOT NULL,
        position bigint NOT NULL,
        PRIMARY KEY (tag, position)
     );
     CREATE FUNCTION {s}.condition_matches(
        p_tags text[], p_others jsonb[], p_types jsonb[], p_after bigint[]
     ) RETURNS TABLE (item bigint, match_position bigint) LANGUAGE sql STABLE AS $fn$
        SELECT c.item, m.position
        FROM unnest(p_tags, p_others, p_types, p_after) WITH ORDINALITY AS c(tag, others, types, after, item)
        CROSS JOIN LATERAL (
            (SELECT t0.position FROM {s}.event_tags t0 JOIN {s}.events e ON e.position = t0.position
             WHERE c.tag IS NOT NULL AND t0.tag = c.tag AND t0.position > c.after
               AND (jsonb_array_length(c.others) = 0 OR e.tags @> c.others)
               AND (jsonb_array_length(c.types) = 0 OR c.types ? e.event_type)
             ORDER BY t0.position LIMIT 1)
            UNION ALL
            (SELECT e.position FROM {s}.events e
             WHERE c.tag IS NULL AND e.position > c.after AND c.types ? e.event_type
             ORDER BY e.position LIMIT 1)
        ) AS m(position)
     $fn$;
     CREATE FUNCTION {s}.append_group_v4(
        p_checked_ids bigint[], p_checked_versions bigint[],
        p_new_names text[], p_new_categories text[], p_new_versions bigint[],
        p_final_ids bigint[], p_final_versions bigint[],
        p_offsets bigint[], p_names text[], p_versions bigint[], p_ids uuid[], p_types text[],
        p_data bytea[], p_metadata jsonb[], p_tags jsonb[], p_recorded_at bigint, p_durable boolean,
        p_cond_tags text[], p_cond_others jsonb[], p_cond_types jsonb[], p_cond_after bigint[]
     ) RETURNS bigint LANGUAGE plpgsql AS $fn$
     DECLARE
        v_locked bigint;
        v_matching bigint;
        v_count bigint := cardinality(p_offsets);
        v_head bigint;
        v_written bigint;
     BEGIN
        IF cardinality(p_checked_ids) > 0 THEN
            -- A row whose version moved no longer joins (rechecked after waiting for its lock).
            SELECT count(*) INTO v_matching FROM (
                SELECT 1 FROM {s}.streams s
                JOIN unnest(p_checked_ids, p_checked_versions) AS c(stream_id, version)
                  ON s.stream_id = c.stream_id AND s.version = c.version
                ORDER BY s.stream_id
                FOR UPDATE OF s
            ) AS locked;
            IF v_matching <> cardinality(p_checked_ids) THEN
                RETURN NULL;
            END IF;
        END IF;
        -- Checked again by the insert under the head: a name created in between fails it.
        IF cardinality(p_new_names) > 0 AND EXISTS (SELECT 1 FROM {s}.streams s WHERE s.name = ANY(p_new_names)) THEN
            RETURN NULL;
        END IF;
        -- Conditions (one element per query item) are decided holding the head: every earlier
        -- append is visible to the next statement, and no later one commits before this one.
        IF cardinality(p_cond_after) > 0 THEN
            SELECT h.position INTO v_locked FROM {s}.head h FOR UPDATE;
            IF EXISTS (SELECT 1 FROM unnest(p_cond_after) AS a(after) WHERE a.after > v_locked) THEN
                RETURN NULL;
            END IF;
            IF EXISTS (SELECT 1 FROM {s}.condition_matches(p_cond_tags, p_cond_others, p_cond_types, p_cond_after)) THEN
                RETURN NULL;
            END IF;
        END IF;
        -- Nothing is written before every check has passed: a NULL answer commits nothing.
        UPDATE {s}.streams s SET version = f.version
        FROM unnest(p_final_ids, p_final_versions) AS f(stream_id, version)
        WHERE s.stream_id = f.stream_id;
        IF NOT p_durable THEN
            PERFORM set_config('synchronous_commit', 'off', true);
        END IF;
        UPDATE {s}.head SET position = position + v_count RETURNING position - v_count INTO v_head;
        WITH created AS (
            INSERT INTO {s}.streams (name, category, version)
            SELECT * FROM unnest(p_new_names, p_new_categories, p_new_versions)
            RETURNING stream_id, name
        ), touched AS (
            SELECT c.stream_id, c.name FROM created c
            UNION ALL
            SELECT s.stream_id, s.name FROM {s}.streams s WHERE s.stream_id = ANY(p_checked_ids)
        )
        INSERT INTO {s}.events
            (position, stream_id, stream_version, event_id, event_type, data, metadata, recorded_at, tags)
        SELECT v_head + x.o, t.stream_id, x.v, x.i, x.t, x.d, x.m, p_recorded_at, x.g
        FROM unnest(p_offsets, p_names, p_versions, p_ids, p_types, p_data, p_metadata, p_tags)
            AS x(o, n, v, i, t, d, m, g)
        JOIN touched t ON t.name = x.n
        ORDER BY x.o;
        GET DIAGNOSTICS v_written = ROW_COUNT;
        IF v_written <> v_count THEN
            RAISE EXCEPTION 'append_group wrote % of % events', v_written, v_count;
        END IF;
        INSERT INTO {s}.event_tags (tag, position)
        SELECT DISTINCT g.tag, v_head + x.o
        FROM unnest(p_offsets, p_tags) AS x(o, tags), jsonb_array_elements_text(x.tags) AS g(tag)
        WHERE x.tags IS NOT NULL;
        IF p_durable THEN
            INSERT INTO {s}.durable_head AS d (connection_pid, position) VALUES (pg_backend_pid(), v_head + v_count)
            ON CONFLICT (connection_pid) DO UPDATE SET position = greatest(d.position, excluded.position);
        END IF;
        RETURN v_head;
     END
     $fn$;",
    // 11: the single append made cheaper, from 6 statements to 3 (pgbench, one client, durable
    // commits: 1,730–1,900 calls/s of `append_group_v4` against 2,990–3,250 of this, with Message
    // DB's `write_message` at 2,800–2,920 and a bare INSERT at 4,000–4,250; docs/BENCHMARKS.md).
    // `append_group_v5` is `append_group_v4` where one existing stream without a condition is
    // locked, checked and moved by one UPDATE, its events are inserted without looking streams
    // up by name, the tag index is skipped when `p_tags` is NULL, and a durable commit records its
    // durable head in the head row (`head.durable`) instead of a row of `durable_head`: the durable
    // head is the greater of the two (durable.rs). Lock order stays streams, then the head.
    // `append_group_v4` stays for processes of the previous version still running.
    "ALTER TABLE {s}.head ADD COLUMN durable bigint NOT NULL DEFAULT 0;
     CREATE FUNCTION {s}.append_group_v5(
        p_checked_ids bigint[], p_checked_versions bigint[],
        p_new_names text[], p_new_categories text[], p_new_versions bigint[],
        p_final_ids bigint[], p_final_versions bigint[],
        p_offsets bigint[], p_names text[], p_versions bigint[], p_ids uuid[], p_types text[],
        p_data bytea[], p_metadata jsonb[], p_tags jsonb[], p_recorded_at bigint, p_durable boolean,
        p_cond_tags text[], p_cond_others jsonb[], p_cond_types jsonb[], p_cond_after bigint[]
     ) RETURNS bigint LANGUAGE plpgsql AS $fn$
     DECLARE
        v_locked bigint;
        v_matching bigint;
        v_count bigint := cardinality(p_offsets);
        v_head bigint;
        v_written bigint;
        v_one_stream boolean := false;
     BEGIN
        IF cardinality(p_checked_ids) = 1 AND cardinality(p_final_ids) = 1 AND p_final_ids[1] = p_checked_ids[1]
           AND cardinality(p_new_names) = 0 AND cardinality(p_cond_after) = 0 THEN
            -- One existing stream, nothing created and no condition (the usual append): its lock,
            -- check and move are one statement, and every other check is skipped, so a mismatch
            -- returns with nothing written.
            UPDATE {s}.streams SET version = p_final_versions[1]
            WHERE stream_id = p_checked_ids[1] AND version = p_checked_versions[1];
            IF NOT FOUND THEN
                RETURN NULL;
            END IF;
            v_one_stream := true;
        ELSIF cardinality(p_checked_ids) > 0 THEN
            -- A row whose version moved no longer joins (rechecked after waiting for its lock).
            SELECT count(*) INTO v_matching FROM (
                SELECT 1 FROM {s}.streams s
                JOIN unnest(p_checked_ids, p_checked_versions) AS c(stream_id, version)
                  ON s.stream_id = c.stream_id AND s.version = c.version
                ORDER BY s.stream_id
                FOR UPDATE OF s
            ) AS locked;
            IF v_matching <> cardinality(p_checked_ids) THEN
                RETURN NULL;
            END IF;
        END IF;
        -- Checked again by the insert under the head: a name created in between fails it.
        IF cardinality(p_new_names) > 0 AND EXISTS (SELECT 1 FROM {s}.streams s WHERE s.name = ANY(p_new_names)) THEN
            RETURN NULL;
        END IF;
        -- Conditions (one element per query item) are decided holding the head: every earlier
        -- append is visible to the next statement, and no later one commits before this one.
        IF cardinality(p_cond_after) > 0 THEN
            SELECT h.position INTO v_locked FROM {s}.head h FOR UPDATE;
            IF EXISTS (SELECT 1 FROM unnest(p_cond_after) AS a(after) WHERE a.after > v_locked) THEN
                RETURN NULL;
            END IF;
            IF EXISTS (SELECT 1 FROM {s}.condition_matches(p_cond_tags, p_cond_others, p_cond_types, p_cond_after)) THEN
                RETURN NULL;
            END IF;
        END IF;
        -- Nothing is written before every check has passed: a NULL answer commits nothing.
        IF NOT v_one_stream THEN
            UPDATE {s}.streams s SET version = f.version
            FROM unnest(p_final_ids, p_final_versions) AS f(stream_id, version)
            WHERE s.stream_id = f.stream_id;
        END IF;
        IF NOT p_durable THEN
            PERFORM set_config('synchronous_commit', 'off', true);
        END IF;
        -- A durable commit records its own durable head in the head row it moves anyway.
        UPDATE {s}.head SET position = position + v_count,
                            durable = CASE WHEN p_durable THEN position + v_count ELSE durable END
        RETURNING position - v_count INTO v_head;
        IF v_one_stream THEN
            INSERT INTO {s}.events
                (position, stream_id, stream_version, event_id, event_type, data, metadata, recorded_at, tags)
            SELECT v_head + x.o, p_checked_ids[1], x.v, x.i, x.t, x.d, x.m, p_recorded_at, x.g
            FROM unnest(p_offsets, p_versions, p_ids, p_types, p_data, p_metadata, p_tags)
                AS x(o, v, i, t, d, m, g)
            ORDER BY x.o;
        ELSE
            WITH created AS (
                INSERT INTO {s}.streams (name, category, version)
                SELECT * FROM unnest(p_new_names, p_new_categories, p_new_versions)
                RETURNING stream_id, name
            ), touched AS (
                SELECT c.stream_id, c.name FROM created c
                UNION ALL
                SELECT s.stream_id, s.name FROM {s}.streams s WHERE s.stream_id = ANY(p_checked_ids)
            )
            INSERT INTO {s}.events
                (position, stream_id, stream_version, event_id, event_type, data, metadata, recorded_at, tags)
            SELECT v_head + x.o, t.stream_id, x.v, x.i, x.t, x.d, x.m, p_recorded_at, x.g
            FROM unnest(p_offsets, p_names, p_versions, p_ids, p_types, p_data, p_metadata, p_tags)
                AS x(o, n, v, i, t, d, m, g)
            JOIN touched t ON t.name = x.n
            ORDER BY x.o;
        END IF;
        GET DIAGNOSTICS v_written = ROW_COUNT;
        IF v_written <> v_count THEN
            RAISE EXCEPTION 'append_group wrote % of % events', v_written, v_count;
        END IF;
        -- NULL when no event of the group has tags.
        IF p_tags IS NOT NULL THEN
            INSERT INTO {s}.event_tags (tag, position)
            SELECT DISTINCT g.tag, v_head + x.o
            FROM unnest(p_offsets, p_tags) AS x(o, tags), jsonb_array_elements_text(x.tags) AS g(tag)
            WHERE x.tags IS NOT NULL;
        END IF;
        RETURN v_head;
     END
     $fn$;",
    // 12: groups handed to one leading writer when several processes append (forwarding.rs).
    // A follower inserts its group into `append_queue` and waits in `await_append` for the
    // leader's answer; the leader takes rows, appends them with its own group in one commit and
    // writes the answers. The queue is UNLOGGED: it holds nothing acknowledged (a crash of the
    // database that empties it only fails unanswered appends, as a lost connection does).
    // Advisory locks keyed by this table's oid: the key itself is the leader's; key + 1 + r is
    // held by the leader from before round r - 1 begins until round r's answers are written, and
    // `append_rounds` publishes the round in progress, so a follower whose row is committed
    // before it reads round c is answered by the end of round c + 1 and can wait for exactly that.
    "CREATE UNLOGGED TABLE {s}.append_queue (
        id uuid PRIMARY KEY,
        taken boolean NOT NULL DEFAULT false,
        request bytea NOT NULL,
        answer bytea
     );
     CREATE SEQUENCE {s}.append_rounds MINVALUE 0 START 0;
     CREATE FUNCTION {s}.append_lock(p_round bigint) RETURNS bigint LANGUAGE sql STABLE AS $fn$
        SELECT ('{s}.append_queue'::regclass::oid::bigint << 32)
               + CASE WHEN p_round IS NULL THEN 0 ELSE 1 + p_round % 4294967295 END
     $fn$;
     -- The round this process now leads, or NULL when another process leads.
     CREATE FUNCTION {s}.try_lead() RETURNS bigint LANGUAGE plpgsql AS $fn$
     DECLARE
        v_round bigint;
     BEGIN
        IF NOT pg_try_advisory_lock({s}.append_lock(NULL)) THEN
            RETURN NULL;
        END IF;
        v_round := (SELECT last_value FROM {s}.append_rounds) + 1;
        PERFORM pg_advisory_lock({s}.append_lock(v_round));
        PERFORM pg_advisory_lock({s}.append_lock(v_round + 1));
        PERFORM setval('{s}.append_rounds', v_round);
        RETURN v_round;
     END
     $fn$;
     -- Ends round p_round (its answers are written) and publishes the next one.
     CREATE FUNCTION {s}.next_round(p_round bigint) RETURNS bigint LANGUAGE plpgsql AS $fn$
     BEGIN
        PERFORM pg_advisory_lock({s}.append_lock(p_round + 2));
        PERFORM pg_advisory_unlock({s}.append_lock(p_round));
        PERFORM setval('{s}.append_rounds', p_round + 1);
        RETURN p_round + 1;
     END
     $fn$;
     CREATE FUNCTION {s}.resign(p_round bigint) RETURNS void LANGUAGE plpgsql AS $fn$
     BEGIN
        PERFORM pg_advisory_unlock({s}.append_lock(p_round));
        PERFORM pg_advisory_unlock({s}.append_lock(p_round + 1));
        PERFORM pg_advisory_unlock({s}.append_lock(NULL));
     END
     $fn$;
     -- A follower's wait: (0, answer) when answered; (1, NULL) when no leader took the row (it
     -- is removed: append it directly); (2, NULL) when a leader took it and vanished unanswered
     -- (the outcome is unknown); (3, NULL) when the leader made no progress for p_patience_ms
     -- and had not taken the row (removed: append it directly; a stalled leading process must
     -- not stall every other). Locks are taken and released one at a time, never held.
     CREATE FUNCTION {s}.await_append(p_id uuid, p_patience_ms integer, OUT status smallint, OUT answer bytea)
     LANGUAGE plpgsql AS $fn$
     DECLARE
        v_round bigint;
        v_step int;
     BEGIN
        IF NOT EXISTS (SELECT 1 FROM {s}.append_queue q WHERE q.id = p_id) THEN
            status := 1;
            RETURN;
        END IF;
        PERFORM set_config('lock_timeout', p_patience_ms::text, true);
        LOOP
            BEGIN
                FOR v_attempt IN 1..10000 LOOP
                    IF pg_try_advisory_lock_shared({s}.append_lock(NULL)) THEN
                        PERFORM pg_advisory_unlock_shared({s}.append_lock(NULL));
                        DELETE FROM {s}.append_queue q WHERE q.id = p_id AND NOT q.taken;
                        IF FOUND THEN
                            status := 1;
                            RETURN;
                        END IF;
                        DELETE FROM {s}.append_queue q WHERE q.id = p_id AND q.answer IS NOT NULL
                        RETURNING q.answer INTO answer;
                        IF FOUND THEN
                            status := 0;
                            RETURN;
                        END IF;
                        -- Taken, not answered, and nobody led a moment ago: unless a new leader
                        -- took it in between, its leader is gone (a leader answers what it took
                        -- before it resigns).
                        IF pg_try_advisory_lock_shared({s}.append_lock(NULL)) THEN
                            PERFORM pg_advisory_unlock_shared({s}.append_lock(NULL));
                            DELETE FROM {s}.append_queue q WHERE q.id = p_id RETURNING q.answer INTO answer;
                            status := CASE WHEN answer IS NULL THEN 2 ELSE 0 END;
                            RETURN;
                        END IF;
                    END IF;
                    v_round := (SELECT last_value FROM {s}.append_rounds);
                    FOR v_step IN 0..1 LOOP
                        PERFORM pg_advisory_lock_shared({s}.append_lock(v_round + v_step));
                        PERFORM pg_advisory_unlock_shared({s}.append_lock(v_round + v_step));
                        DELETE FROM {s}.append_queue q WHERE q.id = p_id AND q.answer IS NOT NULL
                        RETURNING q.answer INTO answer;
                        IF FOUND THEN
                            status := 0;
                            RETURN;
                        END IF;
                    END LOOP;
                END LOOP;
                DELETE FROM {s}.append_queue q WHERE q.id = p_id AND NOT q.taken;
                status := CASE WHEN FOUND THEN 1 ELSE 2 END;
                RETURN;
            EXCEPTION WHEN lock_not_available THEN
                -- A round lasted longer than the patience: unless the leader took the row (then
                -- it is working on it, and the wait goes on), the follower appends it itself.
                DELETE FROM {s}.append_queue q WHERE q.id = p_id AND NOT q.taken;
                IF FOUND THEN
                    status := 3;
                    RETURN;
                END IF;
            END;
        END LOOP;
     END
     $fn$;",
];

/// Newest schema version this build knows.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// A schema name: 1–63 characters of `a-z 0-9 _`, not starting with a digit.
pub fn validate_schema(name: &str) -> Result<(), ReelError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit();
    if ok {
        Ok(())
    } else {
        Err(ReelError::InvalidArgument(format!(
            "schema name {name:?} must be 1-63 characters of a-z, 0-9 and _, not starting with a digit"
        )))
    }
}

/// Creates the schema if needed and applies missing migrations; refuses a newer schema.
pub async fn migrate(client: &mut Client, schema: &str) -> Result<(), ReelError> {
    let err = |e: tokio_postgres::Error| crate::storage_error(format!("migrating schema {schema}"), e);
    let tx = client.transaction().await.map_err(err)?;
    // One migrator at a time, whichever process starts first.
    tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&format!("reel:{schema}")]).await.map_err(err)?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {schema}.reel_schema (version integer NOT NULL);"
    ))
    .await
    .map_err(err)?;
    let version: i32 = tx
        .query_opt(&format!("SELECT version FROM {schema}.reel_schema"), &[])
        .await
        .map_err(err)?
        .map_or(0, |row| row.get(0));
    if version > SCHEMA_VERSION {
        return Err(ReelError::SchemaTooNew { found: version as u32, supported: SCHEMA_VERSION as u32 });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tracing::info!(schema, to = index + 1, "migrating store schema");
        tx.batch_execute(&sql.replace("{s}", schema)).await.map_err(err)?;
    }
    tx.execute(&format!("DELETE FROM {schema}.reel_schema"), &[]).await.map_err(err)?;
    tx.execute(&format!("INSERT INTO {schema}.reel_schema (version) VALUES ($1)"), &[&SCHEMA_VERSION])
        .await
        .map_err(err)?;
    tx.commit().await.map_err(err)
}
