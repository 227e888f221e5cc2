"""The feedback service's SQL, built once from the table layout (no I/O here).

One definition of counting in SQL (:func:`recount_sql`), used three ways: by a batch that
counts its own rows (from its staging table), by a rollup step (from the archive rows of the
batches it takes), and by the audit (the whole archive).
:func:`services.feedback.domain.count_rows` is the same in Python; tests check they agree.

Every statement that locks counter rows does so in a fixed table order and in key order,
so concurrent writers wait for each other but never deadlock.
"""

from __future__ import annotations

from collections.abc import Sequence

from services.feedback.domain import COUNTER_FIELDS, PENDING_TAG, REVENUE_SCALE

ARCHIVE_COLUMNS = (
    "event_id, user_id, listing_id, type, context_tag_id, quantity, price, revenue, ts, tag_ids,"
    " src_partition, src_offset, position"
)
ARCHIVE_TYPES = [
    "text", "text", "text", "text", "text", "int4", "float8", "numeric", "timestamptz", "text[]",
    "int4", "int8", "int4",
]  # fmt: skip

COUNT_TABLES = {
    # attribute of Deltas -> (table, key columns, key types). Every transaction writes the tables in
    # this order (and each in key order), so concurrent ones never deadlock. User tables first: their
    # rows are disjoint between writers of different partitions (feedback is keyed by user), so those
    # upserts run in parallel; only the shared listing rows at the end make writers wait on each other.
    "user": ("feedback_user_tag_counts", ("user_id", "tag_id"), ("text", "text")),
    "listing": ("feedback_listing_tag_counts", ("listing_id", "tag_id"), ("text", "text")),
    "listing_hourly": (
        "feedback_listing_tag_hourly",
        ("listing_id", "tag_id", "hour"),
        ("text", "text", "timestamptz"),
    ),
}

STAGE_EVENTS = "_stage_feedback_events"  # per connection: the batch's rows, by binary COPY
ROLLUP_ROWS = "_rollup_feedback_events"  # per connection: the rows a rollup step counts
# Serialises rollup steps with each other and with re-attribution (see services.feedback.rollup).
ROLLUP_LOCK_KEY = 0x66656564726F6C  # "feedrol"
PARTITION_LOCK_KEY = 0x66656564626B  # "feedbk": serialises partition creation across workers


def stage_name(table: str) -> str:
    return f"_stage_{table}"


def _stage_ddl(table: str, keys: Sequence[str], key_types: Sequence[str]) -> str:
    cols = [f"{k} {t}" for k, t in zip(keys, key_types, strict=True)] + [f"{c} int8" for c in COUNTER_FIELDS]
    # Per connection, emptied at every commit: re-attribution deltas go here by binary COPY.
    return f"CREATE TEMP TABLE IF NOT EXISTS {stage_name(table)} ({', '.join(cols)}) ON COMMIT DELETE ROWS"


def _upsert_sql(table: str, keys: Sequence[str], key_types: Sequence[str]) -> bytes:
    cols = [*keys, *COUNTER_FIELDS]
    # Revenue travels as integer 1/10_000 units (exact, and no Decimal objects on the hot path).
    values = [*keys, *(f"{c}::numeric / {REVENUE_SCALE}" if c == "revenue" else c for c in COUNTER_FIELDS)]
    order = ", ".join(keys)
    sets = ", ".join(f"{c} = t.{c} + excluded.{c}" for c in COUNTER_FIELDS)
    return (
        f"INSERT INTO {table} AS t ({', '.join(cols)}) SELECT {', '.join(values)} FROM {stage_name(table)}"
        f" ORDER BY {order} ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {sets}, updated_at = now()"
    ).encode()


def recount_sql(owner: str, hourly: bool, source: str = "feedback_events") -> str:
    """Counters per (owner, tag[, hour]) of archived rows in ``source`` (a pending event counts once
    under the pending tag)."""
    hour = ", date_trunc('hour', ts AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'" if hourly else ""
    keys = f"{owner}, tag" + hour
    return f"""
        SELECT {keys},
            count(*), count(*) FILTER (WHERE type = 'impression'), count(*) FILTER (WHERE type = 'click'),
            count(*) FILTER (WHERE type = 'add_to_cart'), count(*) FILTER (WHERE type = 'purchase'),
            coalesce(sum(quantity) FILTER (WHERE type = 'purchase'), 0),
            coalesce(sum(revenue) FILTER (WHERE type = 'purchase'), 0),
            count(*) FILTER (WHERE type = 'tag_accept'), count(*) FILTER (WHERE type = 'tag_reject')
        FROM {source}, unnest(coalesce(tag_ids, ARRAY['{PENDING_TAG}'])) AS tag
        GROUP BY {keys}"""


def _count_from_sql(table: str, keys: Sequence[str], source: str) -> bytes:
    """One sorted, set-based upsert of ``table`` with the pre-combined counts of the rows in ``source``."""
    order = ", ".join(str(i + 1) for i in range(len(keys)))
    sets = ", ".join(f"{c} = t.{c} + excluded.{c}" for c in COUNTER_FIELDS)
    select = recount_sql(keys[0], hourly="hour" in keys, source=source)
    return (
        f"INSERT INTO {table} AS t ({', '.join([*keys, *COUNTER_FIELDS])}) {select} ORDER BY {order}"
        f" ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {sets}, updated_at = now()"
    ).encode()


UPSERTS = {attr: _upsert_sql(*spec) for attr, spec in COUNT_TABLES.items()}
COUNT_FROM_STAGE = [_count_from_sql(table, keys, STAGE_EVENTS) for table, keys, _ in COUNT_TABLES.values()]
COUNT_FROM_ROLLUP = [_count_from_sql(table, keys, ROLLUP_ROWS) for table, keys, _ in COUNT_TABLES.values()]
STAGE_DDL = ";".join(
    [
        # Each batch aggregates ~30k (owner, tag) rows in SQL; at the default 4 MB the hash
        # aggregate and the lock-order sort spill to disk.
        "SET work_mem = '64MB'",
        *(_stage_ddl(*spec) for spec in COUNT_TABLES.values()),
        f"CREATE TEMP TABLE IF NOT EXISTS {STAGE_EVENTS} (LIKE feedback_events INCLUDING DEFAULTS)"
        " ON COMMIT DELETE ROWS",
        f"CREATE TEMP TABLE IF NOT EXISTS {ROLLUP_ROWS}"
        " (user_id text COLLATE \"C\", listing_id text COLLATE \"C\", type text, quantity int4,"
        " revenue numeric(20,4), ts timestamptz, tag_ids text[] COLLATE \"C\") ON COMMIT DELETE ROWS",
    ]
).encode()
STAGE_COPY = {
    attr: (
        f"COPY {stage_name(spec[0])} FROM STDIN (FORMAT BINARY)".encode(),
        [*spec[2], *(["int8"] * len(COUNTER_FIELDS))],
    )
    for attr, spec in COUNT_TABLES.items()
}
COPY_STAGE_EVENTS = f"COPY {STAGE_EVENTS} ({ARCHIVE_COLUMNS}) FROM STDIN (FORMAT BINARY)".encode()


def archive_from_stage_sql(queue: bool) -> bytes:
    """Move the staged batch into the archive under a new batch id; producer duplicates (same event id and
    ts as an archived row) are dropped by the archive's unique key. With ``queue``, the batch joins the
    rollup queue (its counts come later); the statement returns the number of rows archived."""
    insert = (
        f"WITH b AS (SELECT nextval('feedback_batch_seq') AS id),"
        f" ins AS (INSERT INTO feedback_events ({ARCHIVE_COLUMNS}, batch_id)"
        f" SELECT {ARCHIVE_COLUMNS}, b.id FROM {STAGE_EVENTS}, b"
        f" ON CONFLICT (event_id, ts) DO NOTHING RETURNING 1)"
    )
    if queue:
        return (
            f"{insert}, n AS (SELECT count(*)::int4 AS events FROM ins),"
            f" q AS (INSERT INTO feedback_rollup_queue (batch_id, events) SELECT b.id, n.events FROM b, n"
            f" WHERE n.events > 0) SELECT events FROM n"
        ).encode()
    return f"{insert} SELECT count(*)::int4 FROM ins".encode()


# When the archive refused some staged rows (producer duplicates), they leave the stage before it is counted.
DROP_DUPLICATES_FROM_STAGE = (
    f"DELETE FROM {STAGE_EVENTS} s USING feedback_events a WHERE a.event_id = s.event_id AND a.ts = s.ts"
    f" AND a.batch_id IS DISTINCT FROM currval('feedback_batch_seq')"
).encode()

LOCK_OFFSETS = (
    b'INSERT INTO feedback_offsets AS o (consumer_group, topic, partition, "offset")'
    b" SELECT %s, t, p, -1 FROM unnest(%s::text[], %s::int4[]) AS x(t, p) ORDER BY 2, 3"
    b' ON CONFLICT (consumer_group, topic, partition) DO UPDATE SET "offset" = o."offset"'
    b' RETURNING topic, partition, "offset"'
)

SAVE_OFFSETS = (
    b'INSERT INTO feedback_offsets AS o (consumer_group, topic, partition, "offset")'
    b" SELECT %s, * FROM unnest(%s::text[], %s::int4[], %s::int8[]) ORDER BY 2, 3"
    b" ON CONFLICT (consumer_group, topic, partition) DO UPDATE"
    b' SET "offset" = GREATEST(o."offset", excluded."offset"), updated_at = now()'
)

SET_TAGS = b"""
WITH u AS (
    SELECT x.listing_id, ARRAY(SELECT jsonb_array_elements_text(x.tags)) AS tag_ids, x.deleted,
           x.model_version, x.p, x.o,
           CASE WHEN x.ex IS NOT NULL THEN ARRAY(SELECT jsonb_array_elements_text(x.ex)) END AS exploratory_tag_ids
    FROM jsonb_to_recordset(%s::jsonb)
         AS x(listing_id text, tags jsonb, deleted boolean, model_version text, p integer, o bigint, ex jsonb)
    ORDER BY x.listing_id
)
INSERT INTO feedback_listing_tags AS t
    (listing_id, tag_ids, deleted, model_version, src_partition, src_offset, exploratory_tag_ids)
SELECT listing_id, tag_ids, deleted, model_version, p, o, exploratory_tag_ids FROM u
ON CONFLICT (listing_id) DO UPDATE
    SET tag_ids = excluded.tag_ids, deleted = excluded.deleted, model_version = excluded.model_version,
        exploratory_tag_ids = excluded.exploratory_tag_ids,
        src_partition = excluded.src_partition, src_offset = excluded.src_offset, updated_at = now()
    -- A redelivered older record must not overwrite newer tags.
    WHERE t.src_offset IS NULL OR t.src_partition IS DISTINCT FROM excluded.src_partition
          OR t.src_offset < excluded.src_offset
RETURNING listing_id
"""

# Rows of a batch still in the rollup queue are attributed but not moved: the rollup counts them under
# their new tags. The rollup lock (taken before) keeps a step from running in between.
TAKE_PENDING = b"""
UPDATE feedback_events e
SET tag_ids = ARRAY(SELECT jsonb_array_elements_text(x.t)), attributed_at = now()
FROM jsonb_to_recordset(%s::jsonb) AS x(l text, t jsonb)
WHERE e.listing_id = x.l AND e.tag_ids IS NULL
RETURNING e.user_id, e.listing_id, e.type, e.quantity, e.revenue, e.ts,
    EXISTS (SELECT 1 FROM feedback_rollup_queue q WHERE q.batch_id = e.batch_id) AS queued
"""

# Counted rows: everything archived except batches still waiting for their rollup.
COUNTED_ARCHIVE = (
    "(SELECT * FROM feedback_events WHERE batch_id IS NULL"
    " OR batch_id NOT IN (SELECT batch_id FROM feedback_rollup_queue)) AS counted"
)
