"""Schema of the feedback service (applied by :func:`shared.db.apply_migrations`).

Tables
------
feedback_listing_tags
    Each listing's current tags, upserted from ``listing-tags``. ``tag_ids`` NULL
    means "not known yet" (a placeholder row written when feedback arrives first,
    so the feedback and tags transactions serialise on that row).
feedback_event_ids
    Until migration 7, every event id ever counted: the exactly-once guard (one heap row
    and one btree insert per event). No longer written: see the archive's key.
feedback_events
    The raw-event archive, partitioned by day of ``ts`` (partitions created on
    demand). ``tag_ids`` is what the event was counted against; NULL while the
    listing's tags are unknown (counted under the ``__pending__`` tag until then).
    Since migration 7 its unique key (event_id, ts) drops producer duplicates (a retry
    resends the same event, ts included), and ``batch_id`` says which batch archived a row.
feedback_rollup_queue / feedback_counter_freshness
    Since migration 7: batches archived but not yet added to the counters (rollup mode),
    and the age of the oldest (the counters' lag).
feedback_listing_tag_counts / feedback_listing_tag_hourly / feedback_user_tag_counts
    Additive counters per listing×tag (all-time and per hour) and user×tag (all-time),
    updated in the same transaction as the archive (inline mode) or by rollup steps
    over archived batches, each in one transaction with its queue entries' removal.
feedback_user_tag_hourly
    A view since migration 3: user×tag×hour counts recounted from the archive when
    read. As a table it was the costliest counter on the hot path (users barely repeat
    within a micro-batch, so nearly every event inserted ~3 new rows there: about a
    third of the Postgres time per event). Reads that name an hour range scan only
    those days' archive partitions; it is meant for training sets and reports, not
    per-request lookups (that would need an index on the archive's ``user_id``).
feedback_offsets
    The last offset per (group, topic, partition) whose effects are in Postgres,
    written in the same transaction as the archive rows; a batch locks its partitions'
    rows first and skips what they cover (a Kafka redelivery).
feedback_tag_labels(since, until) / feedback_tag_labels_v1
    Since migration 5: per (listing, tag) feedback of a time window, recounted from the
    archive (with click and impression position histograms): what the trainer's label
    builder reads. The view is the same over all time. Since migration 6 a shopper event
    with a context tag counts under that tag only.
"""

from __future__ import annotations

from shared.db import Migration

SERVICE = "feedback"

_COUNTER_COLUMNS = """
    events       bigint        NOT NULL DEFAULT 0,
    impressions  bigint        NOT NULL DEFAULT 0,
    clicks       bigint        NOT NULL DEFAULT 0,
    carts        bigint        NOT NULL DEFAULT 0,
    purchases    bigint        NOT NULL DEFAULT 0,
    units        bigint        NOT NULL DEFAULT 0,
    revenue      numeric(20,4) NOT NULL DEFAULT 0,
    accepts      bigint        NOT NULL DEFAULT 0,
    rejects      bigint        NOT NULL DEFAULT 0,
    updated_at   timestamptz   NOT NULL DEFAULT now()
"""

_V1 = f"""
CREATE TABLE feedback_listing_tags (
    listing_id       text        PRIMARY KEY,
    tag_ids          text[],
    deleted          boolean     NOT NULL DEFAULT false,
    model_version    text,
    src_partition    integer,
    src_offset       bigint,
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE feedback_event_ids (
    event_id  text PRIMARY KEY
);

CREATE TABLE feedback_events (
    event_id        text          NOT NULL,
    user_id         text          NOT NULL,
    listing_id      text          NOT NULL,
    type            text          NOT NULL,
    context_tag_id  text,
    quantity        integer       NOT NULL,
    price           double precision,
    revenue         numeric(20,4) NOT NULL,
    ts              timestamptz   NOT NULL,
    tag_ids         text[],
    src_partition   integer       NOT NULL,
    src_offset      bigint        NOT NULL,
    ingested_at     timestamptz   NOT NULL DEFAULT now(),
    attributed_at   timestamptz
) PARTITION BY RANGE (ts);

-- Re-attribution looks up the pending events of a listing when its tags arrive.
CREATE INDEX feedback_events_pending ON feedback_events (listing_id) WHERE tag_ids IS NULL;

CREATE TABLE feedback_listing_tag_counts (
    listing_id text NOT NULL,
    tag_id     text NOT NULL,
    {_COUNTER_COLUMNS},
    PRIMARY KEY (listing_id, tag_id)
);

CREATE TABLE feedback_listing_tag_hourly (
    listing_id text        NOT NULL,
    tag_id     text        NOT NULL,
    hour       timestamptz NOT NULL,
    {_COUNTER_COLUMNS},
    PRIMARY KEY (listing_id, tag_id, hour)
);

CREATE TABLE feedback_user_tag_counts (
    user_id text NOT NULL,
    tag_id  text NOT NULL,
    {_COUNTER_COLUMNS},
    PRIMARY KEY (user_id, tag_id)
);

CREATE TABLE feedback_user_tag_hourly (
    user_id text        NOT NULL,
    tag_id  text        NOT NULL,
    hour    timestamptz NOT NULL,
    {_COUNTER_COLUMNS},
    PRIMARY KEY (user_id, tag_id, hour)
);

CREATE TABLE feedback_offsets (
    consumer_group text        NOT NULL,
    topic          text        NOT NULL,
    partition      integer     NOT NULL,
    "offset"       bigint      NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
);

-- Visible backlog of events whose listing tags are not known yet.
CREATE VIEW feedback_unattributed AS
    SELECT listing_id, count(*) AS events, min(ts) AS oldest, max(ts) AS newest
    FROM feedback_events WHERE tag_ids IS NULL GROUP BY listing_id;
"""


def _c_collate(table: str, *columns: str) -> str:
    alters = ", ".join(f'ALTER COLUMN {c} TYPE {"text[]" if c == "tag_ids" else "text"} COLLATE "C"' for c in columns)
    return f"ALTER TABLE {table} {alters};"


# Ids are opaque: byte order ("C") is all they need, and it keeps Postgres on its fast
# memcmp comparisons (abbreviated sort keys, cheaper btree descents) instead of strcoll.
# Counters are updated in place all day: free space in each page lets Postgres do HOT
# updates (no index writes; updated_at is not indexed).
_V2 = f"""
DROP VIEW feedback_unattributed;
{_c_collate("feedback_listing_tags", "listing_id", "tag_ids")}
{_c_collate("feedback_event_ids", "event_id")}
{_c_collate("feedback_events", "event_id", "user_id", "listing_id", "context_tag_id", "tag_ids")}
{_c_collate("feedback_listing_tag_counts", "listing_id", "tag_id")}
{_c_collate("feedback_listing_tag_hourly", "listing_id", "tag_id")}
{_c_collate("feedback_user_tag_counts", "user_id", "tag_id")}
{_c_collate("feedback_user_tag_hourly", "user_id", "tag_id")}
{_c_collate("feedback_offsets", "consumer_group", "topic")}
CREATE VIEW feedback_unattributed AS
    SELECT listing_id, count(*) AS events, min(ts) AS oldest, max(ts) AS newest
    FROM feedback_events WHERE tag_ids IS NULL GROUP BY listing_id;
ALTER TABLE feedback_listing_tag_counts SET (fillfactor = 70);
ALTER TABLE feedback_listing_tag_hourly SET (fillfactor = 70);
ALTER TABLE feedback_user_tag_counts SET (fillfactor = 70);
ALTER TABLE feedback_user_tag_hourly SET (fillfactor = 70);
ALTER TABLE feedback_listing_tags SET (fillfactor = 80);
ALTER TABLE feedback_offsets SET (fillfactor = 50);
"""

# Same columns as the table it replaces; the definition of counting matches
# repository._recount_sql (pending events count under the pending tag).
_V3 = """
DROP TABLE feedback_user_tag_hourly;
CREATE VIEW feedback_user_tag_hourly AS
    SELECT user_id, tag AS tag_id, date_trunc('hour', ts AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS hour,
        count(*) AS events,
        count(*) FILTER (WHERE type = 'impression') AS impressions,
        count(*) FILTER (WHERE type = 'click') AS clicks,
        count(*) FILTER (WHERE type = 'add_to_cart') AS carts,
        count(*) FILTER (WHERE type = 'purchase') AS purchases,
        coalesce(sum(quantity) FILTER (WHERE type = 'purchase'), 0) AS units,
        coalesce(sum(revenue) FILTER (WHERE type = 'purchase'), 0)::numeric(20,4) AS revenue,
        count(*) FILTER (WHERE type = 'tag_accept') AS accepts,
        count(*) FILTER (WHERE type = 'tag_reject') AS rejects,
        max(coalesce(attributed_at, ingested_at)) AS updated_at
    FROM feedback_events, unnest(coalesce(tag_ids, ARRAY['__pending__'::text])) AS tag
    GROUP BY 1, 2, 3;
"""

# Where each event was shown (1 = first slot; NULL for version-1 events and unranked surfaces), so
# the trainer can weight clicks by examination propensity; and which of a listing's current tags
# the tagger published as exploratory (NULL: none, or not known before this migration). Nullable
# without a default: on the partitioned archive this is a catalog-only change (no rewrite).
_V4 = """
ALTER TABLE feedback_events ADD COLUMN position integer;
ALTER TABLE feedback_listing_tags ADD COLUMN exploratory_tag_ids text[] COLLATE "C";
"""

# The label view: the feedback service's contract with the trainer (which never reads the tables
# above). One row per (listing, tag) with feedback in [since, until) (NULL: open). Counting follows
# repository._recount_sql: an event counts once under each tag it was attributed to (a merchant's
# judgement under the judged tag, a shopper event under the listing's tags when it was processed);
# pending events (tags not known yet) are left out until attributed. Positions come as histograms
# ({"position": events}) of the events whose position is known, so the trainer applies its own
# propensity model. ``exploratory`` and ``model_version`` describe the listing's *current* tags.
# LANGUAGE sql + STABLE + one SELECT: the planner inlines it, so the window prunes day partitions.
_V5 = """
CREATE FUNCTION feedback_tag_labels(since timestamptz DEFAULT NULL, until timestamptz DEFAULT NULL)
RETURNS TABLE (
    listing_id           text,
    tag_id               text,
    impressions          bigint,
    clicks               bigint,
    carts                bigint,
    purchases            bigint,
    accepts              bigint,
    rejects              bigint,
    last_accept_at       timestamptz,
    last_reject_at       timestamptz,
    click_positions      jsonb,
    impression_positions jsonb,
    exploratory          boolean,
    model_version        text,
    first_ts             timestamptz,
    last_ts              timestamptz
)
LANGUAGE sql STABLE AS $fn$
    WITH by_position AS (
        SELECT e.listing_id, tag, e.type, e.position, count(*) AS n, min(e.ts) AS first_ts, max(e.ts) AS last_ts
        FROM feedback_events e, unnest(e.tag_ids) AS tag
        WHERE e.tag_ids IS NOT NULL
          AND e.ts >= coalesce(since, '-infinity'::timestamptz)
          AND e.ts < coalesce(until, 'infinity'::timestamptz)
        GROUP BY 1, 2, 3, 4
    ), pairs AS (
        SELECT b.listing_id, b.tag,
            coalesce(sum(b.n) FILTER (WHERE b.type = 'impression'), 0)::bigint AS impressions,
            coalesce(sum(b.n) FILTER (WHERE b.type = 'click'), 0)::bigint AS clicks,
            coalesce(sum(b.n) FILTER (WHERE b.type = 'add_to_cart'), 0)::bigint AS carts,
            coalesce(sum(b.n) FILTER (WHERE b.type = 'purchase'), 0)::bigint AS purchases,
            coalesce(sum(b.n) FILTER (WHERE b.type = 'tag_accept'), 0)::bigint AS accepts,
            coalesce(sum(b.n) FILTER (WHERE b.type = 'tag_reject'), 0)::bigint AS rejects,
            max(b.last_ts) FILTER (WHERE b.type = 'tag_accept') AS last_accept_at,
            max(b.last_ts) FILTER (WHERE b.type = 'tag_reject') AS last_reject_at,
            coalesce(jsonb_object_agg(b.position::text, b.n)
                     FILTER (WHERE b.type = 'click' AND b.position IS NOT NULL), '{}'::jsonb) AS click_positions,
            coalesce(jsonb_object_agg(b.position::text, b.n)
                     FILTER (WHERE b.type = 'impression' AND b.position IS NOT NULL), '{}'::jsonb)
                AS impression_positions,
            min(b.first_ts) AS first_ts,
            max(b.last_ts) AS last_ts
        FROM by_position b
        GROUP BY 1, 2
    )
    SELECT p.listing_id, p.tag, p.impressions, p.clicks, p.carts, p.purchases, p.accepts, p.rejects,
        p.last_accept_at, p.last_reject_at, p.click_positions, p.impression_positions,
        coalesce(p.tag = ANY(t.exploratory_tag_ids), false), t.model_version, p.first_ts, p.last_ts
    FROM pairs p LEFT JOIN feedback_listing_tags t ON t.listing_id = p.listing_id
$fn$;

-- All time, for ops and ad-hoc queries; training reads the function with a window.
CREATE VIEW feedback_tag_labels_v1 AS SELECT * FROM feedback_tag_labels(NULL, NULL);
"""

# Labels are about tags: a click under the context "Handbags" says nothing about the listing's other tags.
_V6 = (
    _V5[_V5.index("CREATE FUNCTION"):_V5.index("-- All time")]
    .replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION")
    .replace(
        "FROM feedback_events e, unnest(e.tag_ids) AS tag",
        # A shopper event that names the tag it was shown under speaks of that tag alone;
        # without one it speaks of every tag of the listing (as the counters count it).
        "FROM feedback_events e, unnest(CASE WHEN e.context_tag_id IS NOT NULL AND e.type IN"
        " ('impression', 'click', 'add_to_cart', 'purchase') THEN ARRAY[e.context_tag_id] ELSE e.tag_ids END) AS tag",
    )
)
assert "context_tag_id" in _V6, "migration 6 no longer matches the function of migration 5"


# Issue 12, the write path at 100k events/s. The archive is the exactly-once guard for producer duplicates:
# a unique key (event_id, ts) per day partition, checked in bulk by the batch's one INSERT .. ON CONFLICT DO
# NOTHING (a producer retry resends the same event, ts included), in place of a separate id table (one heap
# row + one btree entry more per event). Kafka redeliveries never reach it: the batch's transaction reads
# and moves the partition's stored offset. Counters can be rolled up from the archive instead of written
# by every batch: each batch's rows carry its ``batch_id`` (one sequence value per batch) and the batch is
# queued in ``feedback_rollup_queue`` in its own transaction; a rollup step takes queued batches, adds
# their archive rows to the counters and deletes them from the queue, in one transaction. The queue's age
# is the counters' lag (``feedback_counter_freshness``). Rows archived before this migration (batch_id
# NULL) were counted by their own transaction. ``feedback_event_ids`` is no longer written (kept, so an
# archive from before can still be audited and pruned; stop old workers before starting new ones).
_V7 = """
ALTER TABLE feedback_events ADD COLUMN batch_id bigint;
CREATE UNIQUE INDEX feedback_events_event_id ON feedback_events (event_id, ts);
-- Rollups read a few batches' rows. A btree, not a block-range index: batch ids only grow, so entries
-- go to the rightmost leaf (cheap), and it needs no summarising (which waits for autovacuum).
CREATE INDEX feedback_events_batch ON feedback_events (batch_id) WHERE batch_id IS NOT NULL;
CREATE SEQUENCE feedback_batch_seq;
CREATE TABLE feedback_rollup_queue (
    batch_id    bigint      PRIMARY KEY,
    events      integer     NOT NULL,
    archived_at timestamptz NOT NULL DEFAULT clock_timestamp()
) WITH (fillfactor = 50);
CREATE VIEW feedback_counter_freshness AS
    SELECT coalesce(extract(epoch FROM clock_timestamp() - min(archived_at)), 0)::float8 AS lag_s,
           count(*) AS queued_batches, coalesce(sum(events), 0)::bigint AS queued_events
    FROM feedback_rollup_queue;
"""


MIGRATIONS: list[Migration] = [
    Migration(SERVICE, 1, "archive_counts_offsets", _V1),
    Migration(SERVICE, 2, "c_collation_and_fillfactor", _V2),
    Migration(SERVICE, 3, "user_tag_hourly_from_archive", _V3),
    Migration(SERVICE, 4, "archive_position_exploratory_tags", _V4),
    Migration(SERVICE, 5, "tag_labels_function", _V5),
    Migration(SERVICE, 6, "tag_labels_by_context_tag", _V6),
    Migration(SERVICE, 7, "archive_guard_and_rollups", _V7),
]
