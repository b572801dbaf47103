"""Every default expiryd uses, in one place."""

CONFIG_PATH = "expiryd.toml"
"""Where `--config` points when not given."""

REDIS_URL = "redis://127.0.0.1:6379/15"
"""The watched Redis; the DB index in the URL is the isolated DB whose expiries count."""

DATABASE_URL = "sqlite:///expiryd.sqlite3"
"""The embedded database used when `[database] url` is absent."""

DATABASE_POOL = "none"
""""none": a new connection per unit of work; "queue": a pooled engine."""

DATABASE_TLS = "off"
"""MySQL TLS: "off" or "required". Left to itself, PyMySQL >= 1.2 builds a fresh TLS context
for every connection whenever it can (about 40 ms each, measured), which a connection per
unit of work cannot afford; "required" builds one verified context and reuses it."""

POOL_SIZE = 5
"""With pool = "queue": connections kept, or `concurrency` if that is more."""

POOL_RECYCLE_SECONDS = 280
"""With pool = "queue": connections older than this are replaced before use, well under a
typical MySQL `wait_timeout`."""

KEY_PREFIX = "expiryd:"
"""Keys under this prefix belong to expiryd itself and are never dispatched."""

MAX_KEY_BYTES = 1024
"""Longer expired key names are reported as unrouted without being matched."""

NOTIFY_FLAGS = "Egx"
"""The `notify-keyspace-events` classes expiryd needs: keyevent channels (E), generic events
such as expire, del, rename and persist (g) to keep the ledger exact, and expired events (x)."""

CAPTURE_VALUES = False
"""Record each key's value when its TTL is set, to hand it to the handler after expiry."""

SWEEP_INTERVAL_SECONDS = 0.05
"""How often the ledger is checked for deadlines that have passed."""

SWEEP_LIMIT = 1000
"""At most this many due keys are looked at per sweep."""

MARKER_WAIT_SECONDS = 5.0
"""How long the sweeper waits for the listener to hear its last marker before it sweeps
again anyway (see `sweeper`)."""

SCAN_COUNT = 1000
"""Keys asked for per SCAN step when the ledger is brought up to date."""

CLAIMS_KEPT_SECONDS = 300
"""How long a claim of a key is remembered, so that an `expired` event whose deadline no
daemon recorded (several daemons hear each event) is queued once. Events whose deadline
was recorded are told apart by their deadline and need no memory."""

MAX_VALUE_BYTES = 65536
"""With capture_values: larger values are not captured (the handler gets None)."""

HEARD_EVENTS_LIMIT = 100_000
"""Events heard and not yet applied that the daemon holds at most; when it is full the
listener stops reading, Redis drops the connection at its output-buffer limit, and what
was missed is recovered through the ledger after the reconnect."""

WINDOW_EVENTS = 1000
"""Events applied to the ledger per round trip."""

RECONNECT_BASE_SECONDS = 0.5
RECONNECT_CAP_SECONDS = 30.0
"""Backoff between attempts to reconnect to Redis."""

HEALTH_CHECK_SECONDS = 10
"""A silent pub/sub connection is pinged this often, so a dead peer is noticed."""

LOG_KEY_CHARS = 200
"""Key names longer than this are shortened in log lines."""

ORDERS_TABLE = "orders"
ORDERS_KEY_COLUMN = "order_sn"
ORDERS_STATUS_COLUMN = "status"
ORDERS_CANCEL_FROM: tuple[int | str, ...] = (0,)
ORDERS_CANCEL_TO: int | str = 3
ORDERS_COMPLETE_FROM: tuple[int | str, ...] = (2,)
ORDERS_COMPLETE_TO: int | str = 4
"""How the built-in order handlers see the orders table."""

ORDER_FIELD = "order_sn"
"""The route field that carries the order number for the order handlers."""

RETRY_BASE_SECONDS = 1.0
RETRY_CAP_SECONDS = 300.0
RETRY_ATTEMPTS = 10
"""A failure that may pass is tried again after about base * 2^(attempt-1) seconds (with
jitter, at most cap), up to `attempts` attempts in all; then it is dead-lettered."""

LEASE_SECONDS = 30
"""A worker owns the jobs it took for this long; if it has not finished them by then (it
died), they are handed out again."""

GRACE_SECONDS = 30
"""On SIGTERM, how long the jobs in hand may take before expiryd exits anyway, leaving
them to be handed out again."""

BATCH_SIZE = 1000
"""Jobs a worker takes at a time. Measured on a 200,000-order burst: 7,400 orders/s with
100, 11,800 with 1,000 (scripts/bench)."""

BATCH_SIZE_LIMIT = 10_000
"""The largest batch_size accepted."""

CONCURRENCY = 2
"""Batches a daemon runs at once, each in its own worker thread with its own database
connection: while one waits for the database, another routes, logs and settles."""

CONCURRENCY_LIMIT = 64
"""The largest concurrency accepted."""

STATEMENT_SHARE_OF_LEASE = 2 / 3
"""The database driver gives up on a statement after this share of lease_seconds (MySQL's
read and write timeouts, SQLite's busy timeout), so a statement that hangs fails and is
retried while its worker still holds the lease, instead of running on after the jobs
were handed out again."""

BUSY_RETRY_SECONDS = 0.5
"""An expiry whose order row another transaction holds is tried again this soon, without
using up an attempt, until the lock is gone."""

MAX_LAPSES = 5
"""A job whose worker died (or whose lease ran out) this many times while running it is
dead-lettered instead of being handed out again: it is likely what kills the worker."""

WORKER_POLL_SECONDS = 0.1
"""How often an idle worker looks for jobs that nobody woke it for (retries that came due,
jobs another daemon queued)."""

STALL_SECONDS = 30.0
"""How long one of the daemon's loops may go without a turn before `loop.stalled` is
logged. Under systemd's watchdog, `WatchdogSec=` takes its place."""

STATUS_SECONDS = 5.0
"""How often the daemon's one-line status (systemd's STATUS=) is brought up to date."""

STOP_MARGIN_SECONDS = 5.0
"""Asked of systemd on top of `grace_seconds` for a stop (EXTEND_TIMEOUT_USEC=)."""

HEARTBEAT_LIFE_SECONDS = 15.0
"""A daemon whose last heartbeat is older than this counts as gone (`expiryd status`)."""

PULSE_JOIN_SECONDS = 10.0
"""At exit, how long the pulse may take for its last report (its Redis calls give up
after a second each)."""

RECONNECT_INTERVAL_SECONDS = 0.1
"""While Redis is away (refusing connections, restarting, loading its data), how often
the listener tries again: a refused connection costs next to nothing, and the listener
is back within this long of Redis answering, so the keys it can miss are only those set
and due inside Redis's own outage. Failures a quick retry will not mend (a password or
TLS certificate refused, missing notification flags, a bug) wait out the reconnect
backoff instead, and an outage's `redis.disconnected` lines are spaced out by that
backoff rather than written at every attempt."""

INBOX = True
"""Record each expiry a database handler settles in the inbox table, in the same
transaction as its work, so that a COMMIT whose reply was lost is never run again."""

INBOX_TABLE = "expiryd_applied"

INBOX_KEEP_SECONDS = 7 * 24 * 3600
"""How long the inbox keeps an id: a retry looks for it there, and the longest a retry
can come after its commit (every attempt's backoff, a lease or two, a day-long outage of
the workers) is far shorter. A dead letter replayed later than this runs as new."""

INBOX_PRUNE_SECONDS = 60.0
"""How often one process deletes ids past their keeping time."""

INBOX_PRUNE_CHUNKS = 100
"""At most this many chunks of ids deleted per prune, each in its own short transaction,
so one prune never holds the table for long; the next takes the rest."""

REQUEUE_LAPSED_SECONDS = 1.0
"""How often, at most, each process that takes jobs (`run` or `work`) hands out again the
jobs whose worker's lease lapsed: one short script, so that a killed worker's jobs are
taken up by whichever process is left."""
