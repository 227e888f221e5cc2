"""Schema of the feedback service (applied by :func:`shared.db.apply_migrations`).

Tables
------
feedback_listing_tags
    Each listing's current tags, upserted from ``listing-tags``. ``tag_ids`` NULL
    means "not known yet" (a placeholder row written when feedback arrives first,
    so the feedback and tags transactions serialise on that row).
feedback_event_ids
    Every event id ever counted: the exactly-once guard (one btree insert per event,
    ``ON CONFLICT DO NOTHING``). Kept apart from the archive because a unique key on a
    partitioned table must contain the partition key, and a redelivered id must be
    refused whatever its ``ts`` says.
feedback_events
    The raw-event archive, partitioned by day of ``ts`` (partitions created on
    demand). ``tag_ids`` is what the event was counted against; NULL while the
    listing's tags are unknown (counted under the ``__pending__`` tag until then).
feedback_listing_tag_counts / feedback_listing_tag_hourly / feedback_user_tag_counts
    Additive counters per listing×tag (all-time and per hour) and user×tag (all-time),
    updated in the same transaction as the archive.
feedback_user_tag_hourly
    A view since migration 3: user×tag×hour counts recounted from the archive when
    read. As a table it was the costliest counter on the hot path (users barely repeat
    within a micro-batch, so nearly every event inserted ~3 new rows there: about a
    third of the Postgres time per event). Reads that name an hour range scan only
    those days' archive partitions; it is meant for training sets and reports, not
    per-request lookups (that would need an index on the archive's ``user_id``).
feedback_offsets
    The last offset per (group, topic, partition) whose effects are in Postgres,
    written in the same transaction as the counts.
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

MIGRATIONS: list[Migration] = [
    Migration(SERVICE, 1, "archive_counts_offsets", _V1),
    Migration(SERVICE, 2, "c_collation_and_fillfactor", _V2),
    Migration(SERVICE, 3, "user_tag_hourly_from_archive", _V3),
]
