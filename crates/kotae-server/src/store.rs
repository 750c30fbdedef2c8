//! Conversations, feedback, admin jobs, the audit trail, guard events, the quarantine and
//! Slack's bookkeeping: in an embedded SQLite database (`<data-dir>/state/kotae.sqlite3`, the
//! default) or in PostgreSQL (`state.url`), which every replica shares.
//!
//! One migration set serves both: the steps are written in SQLite's dialect and
//! `postgres_dialect` translates their column types. SQLite keeps its version in `PRAGMA
//! user_version`, PostgreSQL in `kotae_schema`; replicas that start together migrate one at a
//! time (an advisory lock). Queries are written once, in SQL both understand (`?N`
//! placeholders become `$N` for PostgreSQL).

use std::path::Path;
use std::sync::Mutex;

use rusqlite::Connection;
use serde::Serialize;

use crate::error::ApiError;

/// Schema steps; index + 1 is the `user_version` after the step. Never edit a released step:
/// add a new one.
const MIGRATIONS: &[&str] = &[
    // 1: conversations, their messages (answers keep citations and timings as JSON), feedback.
    "CREATE TABLE conversations (
        id TEXT PRIMARY KEY,
        client TEXT NOT NULL,
        created_unix INTEGER NOT NULL
    );
    CREATE TABLE messages (
        id TEXT PRIMARY KEY,
        conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
        content TEXT NOT NULL,
        answer_json TEXT,
        created_unix INTEGER NOT NULL,
        UNIQUE (conversation_id, seq)
    );
    CREATE TABLE feedback (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        message_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
        rating TEXT NOT NULL CHECK (rating IN ('up', 'down')),
        comment TEXT,
        client TEXT NOT NULL,
        created_unix INTEGER NOT NULL
    );
    CREATE INDEX feedback_message ON feedback(message_id);",
    // 2: the guardrails' audit trail (never the offending text), and the quarantine of text
    // that failed the training-data guard, for an admin to review.
    "CREATE TABLE guard_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        request_id TEXT NOT NULL,
        conversation_id TEXT,
        client TEXT NOT NULL,
        direction TEXT NOT NULL,
        category TEXT NOT NULL,
        rule TEXT NOT NULL,
        score REAL NOT NULL,
        action TEXT NOT NULL,
        took_us INTEGER NOT NULL,
        created_unix INTEGER NOT NULL
    );
    CREATE INDEX guard_events_request ON guard_events(request_id);
    CREATE TABLE quarantine (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        source TEXT NOT NULL,
        ref TEXT NOT NULL,
        text TEXT NOT NULL,
        category TEXT NOT NULL,
        rule TEXT NOT NULL,
        client TEXT,
        status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'released', 'rejected')),
        created_unix INTEGER NOT NULL,
        reviewed_unix INTEGER,
        UNIQUE (source, ref)
    );",
    // 3: the audit trail of admin actions and authentication failures; one vote per client
    // and answer (earlier duplicates: the latest stays).
    "CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        result TEXT NOT NULL,
        detail TEXT NOT NULL,
        ip TEXT NOT NULL,
        created_unix INTEGER NOT NULL
    );
    CREATE INDEX audit_created ON audit(created_unix);
    DELETE FROM feedback WHERE id NOT IN (SELECT MAX(id) FROM feedback GROUP BY message_id, client);
    CREATE UNIQUE INDEX feedback_once ON feedback(message_id, client);",
    // 4: admin jobs (ingest uploads, remove documents).
    "CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        actor TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'done', 'failed')),
        detail_json TEXT NOT NULL,
        report_json TEXT,
        created_unix INTEGER NOT NULL,
        finished_unix INTEGER
    );
    CREATE INDEX jobs_created ON jobs(created_unix);",
    // 5: Slack: events already taken (Slack retries; an event is answered once, across
    // restarts) and which conversation a thread is.
    "CREATE TABLE slack_events (
        event_id TEXT PRIMARY KEY,
        received_unix INTEGER NOT NULL
    );
    CREATE TABLE slack_threads (
        thread TEXT PRIMARY KEY,
        conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE
    );",
    // 6: a running job's heartbeat, so that replicas sharing the state tell a job that another
    // replica is running from one whose replica died.
    "ALTER TABLE jobs ADD COLUMN heartbeat_unix INTEGER;",
    // 7: jobs can be cancelled (a request any replica records, the running one honours), and
    // say how far they are. SQLite cannot change a CHECK in place: the table is rebuilt.
    "CREATE TABLE jobs_v7 (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        actor TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'done', 'failed', 'cancelled')),
        detail_json TEXT NOT NULL,
        report_json TEXT,
        created_unix INTEGER NOT NULL,
        finished_unix INTEGER,
        heartbeat_unix INTEGER,
        progress_json TEXT,
        cancel_unix INTEGER,
        cancel_actor TEXT
    );
    INSERT INTO jobs_v7 (id, kind, actor, status, detail_json, report_json, created_unix, finished_unix, heartbeat_unix)
        SELECT id, kind, actor, status, detail_json, report_json, created_unix, finished_unix, heartbeat_unix FROM jobs;
    DROP TABLE jobs;
    ALTER TABLE jobs_v7 RENAME TO jobs;
    CREATE INDEX jobs_created ON jobs(created_unix);",
    // 8: API keys that admins make and revoke while Kotae serves (only their SHA-256). A
    // revoked key's row stays, so that its name, which owns conversations, is never given again.
    "CREATE TABLE api_keys (
        name TEXT PRIMARY KEY,
        key_sha256 TEXT NOT NULL UNIQUE,
        role TEXT NOT NULL CHECK (role IN ('user', 'admin')),
        groups_json TEXT NOT NULL,
        created_by TEXT NOT NULL,
        created_unix INTEGER NOT NULL,
        revoked_by TEXT,
        revoked_unix INTEGER
    );",
    // 9: folder → groups rules that admins set while Kotae serves, per knowledge base (the
    // folder's canonical path). They join kotae.toml's `[[ingest.access]]` and win over a rule
    // there for the same folder.
    "CREATE TABLE access_rules (
        kb TEXT NOT NULL,
        path TEXT NOT NULL,
        groups_json TEXT NOT NULL,
        updated_by TEXT NOT NULL,
        updated_unix INTEGER NOT NULL,
        PRIMARY KEY (kb, path)
    );",
    // 10: the knowledge base a queued job changes (its `kb.id`): its writer claims it (one
    // state database may serve several knowledge bases, each with its own writer).
    "ALTER TABLE jobs ADD COLUMN kb TEXT NOT NULL DEFAULT '';
    CREATE INDEX jobs_queue ON jobs(status, kb, created_unix);",
];

/// How often a running job says it is alive, and how long a silence means its process died.
pub const JOB_HEARTBEAT_S: u64 = 15;
pub const JOB_STALE_S: i64 = 90;
/// The kinds of job any writer runs from the queue (`claim_job`), as an SQL list.
const QUEUED_KINDS: &str = "('ingest', 'reindex', 'remove', 'finetune', 'lora')";
/// The kinds of job a process queues for itself (an evaluation runs where it was asked for).
const LOCAL_KINDS: &str = "('eval')";

/// A writer runs its queue in two lanes, each one job at a time, oldest first: changes to
/// the knowledge base, and training. A fine-tuning job that trains for an hour on a CPU does
/// not hold back an upload.
///
/// A runner claims only the kinds it names, and a new kind of work gets a new kind: during a
/// rolling upgrade a writer of an older version leaves a job it does not know queued (until
/// the new writer claims it) instead of claiming and failing it. So LoRA runs as `lora`, not
/// as a `finetune` task; `finetune` with task `lora`, which an earlier version queued, still
/// runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// `ingest`, `reindex`, `remove`.
    Index,
    /// `finetune` (the heads), `lora` (the generator).
    Train,
}

impl Lane {
    pub const ALL: [Lane; 2] = [Lane::Index, Lane::Train];

    /// The lane's kinds, as an SQL list.
    fn kinds(self) -> &'static str {
        match self {
            Lane::Index => "('ingest', 'reindex', 'remove')",
            Lane::Train => "('finetune', 'lora')",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Lane::Index => "index",
            Lane::Train => "train",
        }
    }
}

/// One line of the audit trail: who did what to what, and how it ended. Never a secret.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    /// `key:<name>`, `user:<id>` or, for a failed sign-in, `ip:<address>`.
    pub actor: String,
    /// `authenticate`, `quarantine.review`, …
    pub action: String,
    pub target: String,
    /// `ok`, `denied`, `failed`.
    pub result: String,
    pub detail: String,
    pub ip: String,
}

/// An audit line as read back.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRow {
    pub id: i64,
    #[serde(flatten)]
    pub entry: AuditEntry,
    pub created_unix: i64,
}

/// One decision of the guardrails, as the audit table keeps it.
#[derive(Debug, Clone, Serialize)]
pub struct GuardEvent {
    pub request_id: String,
    pub conversation_id: Option<String>,
    pub client: String,
    pub direction: String,
    pub category: String,
    pub rule: String,
    pub score: f64,
    pub action: String,
    pub took_us: i64,
}

/// A folder → groups rule an admin set (`/admin/api/access-rules`).
#[derive(Debug, Clone, Serialize)]
pub struct AccessRuleRow {
    /// The folder's (or file's) canonical path on the server.
    pub path: String,
    pub groups: Vec<String>,
    pub updated_by: String,
    pub updated_unix: i64,
}

/// A text held back from training data.
#[derive(Debug, Clone, Serialize)]
pub struct Quarantined {
    pub id: i64,
    /// `feedback`, `conversation`, `inquiry_log`.
    pub source: String,
    /// Where it came from (a feedback id, a message id, a log file and row).
    pub r#ref: String,
    pub text: String,
    pub category: String,
    pub rule: String,
    pub client: Option<String>,
    pub status: String,
    pub created_unix: i64,
}

/// One stored message.
#[derive(Debug, Clone, Serialize)]
pub struct StoredMessage {
    pub id: String,
    pub role: String,
    pub content: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answer: Option<serde_json::Value>,
    pub created_unix: i64,
}

pub struct Store {
    db: Db,
}

enum Db {
    Sqlite(Mutex<Connection>),
    Postgres(Box<Postgres>),
}

/// A value bound to a query or read from a row, the same for both databases.
#[derive(Debug, Clone, PartialEq)]
enum V {
    Null,
    I(i64),
    F(f64),
    T(String),
}

impl From<i64> for V {
    fn from(v: i64) -> Self {
        V::I(v)
    }
}
impl From<f64> for V {
    fn from(v: f64) -> Self {
        V::F(v)
    }
}
impl From<&str> for V {
    fn from(v: &str) -> Self {
        V::T(v.to_string())
    }
}
impl From<&String> for V {
    fn from(v: &String) -> Self {
        V::T(v.clone())
    }
}
impl From<String> for V {
    fn from(v: String) -> Self {
        V::T(v)
    }
}
impl<T: Into<V>> From<Option<T>> for V {
    fn from(v: Option<T>) -> Self {
        v.map_or(V::Null, Into::into)
    }
}

macro_rules! vals {
    ($($v:expr),* $(,)?) => { &[$(V::from($v)),*] };
}

/// One result row.
struct Row(Vec<V>);

impl Row {
    fn s(&self, i: usize) -> String {
        self.os(i).unwrap_or_default()
    }
    fn os(&self, i: usize) -> Option<String> {
        match &self.0[i] {
            V::T(s) => Some(s.clone()),
            V::I(n) => Some(n.to_string()),
            V::F(x) => Some(x.to_string()),
            V::Null => None,
        }
    }
    fn i(&self, i: usize) -> i64 {
        self.oi(i).unwrap_or(0)
    }
    fn oi(&self, i: usize) -> Option<i64> {
        match &self.0[i] {
            V::I(n) => Some(*n),
            V::F(x) => Some(*x as i64),
            V::T(s) => s.parse().ok(),
            V::Null => None,
        }
    }
    fn f(&self, i: usize) -> f64 {
        match &self.0[i] {
            V::F(x) => *x,
            V::I(n) => *n as f64,
            _ => 0.0,
        }
    }
    fn json(&self, i: usize) -> Option<serde_json::Value> {
        self.os(i).and_then(|s| serde_json::from_str(&s).ok())
    }
}

impl rusqlite::ToSql for V {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, Value, ValueRef};
        Ok(match self {
            V::Null => ToSqlOutput::Owned(Value::Null),
            V::I(n) => ToSqlOutput::Owned(Value::Integer(*n)),
            V::F(x) => ToSqlOutput::Owned(Value::Real(*x)),
            V::T(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
        })
    }
}

impl postgres::types::ToSql for V {
    fn to_sql(
        &self,
        ty: &postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use postgres::types::Type;
        match self {
            V::Null => Ok(postgres::types::IsNull::Yes),
            V::I(n) if *ty == Type::INT4 => i32::try_from(*n)?.to_sql(ty, out),
            V::I(n) if *ty == Type::INT2 => i16::try_from(*n)?.to_sql(ty, out),
            V::I(n) if *ty == Type::FLOAT8 => (*n as f64).to_sql(ty, out),
            V::I(n) => n.to_sql(ty, out),
            V::F(x) if *ty == Type::FLOAT4 => (*x as f32).to_sql(ty, out),
            V::F(x) => x.to_sql(ty, out),
            V::T(s) => s.as_str().to_sql(ty, out),
        }
    }
    fn accepts(_: &postgres::types::Type) -> bool {
        true
    }
    postgres::types::to_sql_checked!();
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(format!("database: {e}"))
}

/// `?N` placeholders as PostgreSQL writes them (`$N`); nothing else in our SQL uses `?`.
fn postgres_sql(sql: &str) -> String {
    sql.replace('?', "$")
}

/// A migration step in PostgreSQL's column types.
fn postgres_dialect(step: &str) -> String {
    step.replace("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGSERIAL PRIMARY KEY")
        .replace("INTEGER", "BIGINT")
        .replace(" REAL ", " DOUBLE PRECISION ")
}

/// A PostgreSQL connection. The `postgres` client blocks on its own runtime, which tokio
/// forbids on a thread that drives async tasks; calls from there run on a scoped thread.
/// A broken connection (a database restart) is replaced at the next call.
struct Postgres {
    url: String,
    /// Always `Some` but in `drop`: the client blocks when it closes, so it is closed off async
    /// threads too.
    client: Mutex<Option<postgres::Client>>,
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(c) = self.client.get_mut().unwrap_or_else(|p| p.into_inner()).take() {
            off_async(move || drop(c));
        }
    }
}

fn off_async<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|s| s.spawn(f).join().expect("a database call panicked"))
    } else {
        f()
    }
}

fn pg_connect(url: &str) -> Result<postgres::Client, String> {
    let tls = native_tls::TlsConnector::new().map_err(|e| format!("TLS: {e}"))?;
    postgres::Client::connect(url, postgres_native_tls::MakeTlsConnector::new(tls)).map_err(|e| {
        format!("cannot connect to PostgreSQL at {} ({e}): check state.url (KOTAE_STATE_URL)", redact_url(url))
    })
}

/// The URL without its password, for messages.
fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.split('?').next().unwrap_or(url).to_string(),
    }
}

impl Postgres {
    fn with<T: Send>(
        &self,
        f: impl FnOnce(&mut postgres::Client) -> Result<T, postgres::Error> + Send,
    ) -> Result<T, ApiError> {
        off_async(|| {
            let mut guard = self.client.lock().unwrap_or_else(|p| p.into_inner());
            let c = guard.as_mut().expect("the client is only taken when the store is dropped");
            if c.is_closed() {
                *c = pg_connect(&self.url).map_err(ApiError::Internal)?;
            }
            f(c).map_err(pg_error)
        })
    }
}

/// Parameters as the `postgres` client takes them.
fn pg_params(params: &[V]) -> Vec<&(dyn postgres::types::ToSql + Sync)> {
    params.iter().map(|v| v as &(dyn postgres::types::ToSql + Sync)).collect()
}

/// A PostgreSQL error with what the server said (its code and message), not just "db error".
fn pg_error(e: postgres::Error) -> ApiError {
    match e.as_db_error() {
        Some(db) => internal(format!("{} ({}): {}", db.message(), db.code().code(), db.detail().unwrap_or(""))),
        None => internal(e),
    }
}

fn pg_row(r: &postgres::Row) -> Result<Row, postgres::Error> {
    use postgres::types::Type;
    let mut out = Vec::with_capacity(r.len());
    for (i, c) in r.columns().iter().enumerate() {
        let t = c.type_();
        let v = if *t == Type::INT8 {
            r.try_get::<_, Option<i64>>(i)?.into()
        } else if *t == Type::INT4 {
            r.try_get::<_, Option<i32>>(i)?.map(i64::from).into()
        } else if *t == Type::INT2 {
            r.try_get::<_, Option<i16>>(i)?.map(i64::from).into()
        } else if *t == Type::FLOAT8 {
            r.try_get::<_, Option<f64>>(i)?.into()
        } else if *t == Type::FLOAT4 {
            r.try_get::<_, Option<f32>>(i)?.map(f64::from).into()
        } else if *t == Type::BOOL {
            r.try_get::<_, Option<bool>>(i)?.map(i64::from).into()
        } else {
            r.try_get::<_, Option<String>>(i)?.into()
        };
        out.push(v);
    }
    Ok(Row(out))
}

fn sqlite_row(r: &rusqlite::Row<'_>, n: usize) -> rusqlite::Result<Row> {
    use rusqlite::types::ValueRef;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        out.push(match r.get_ref(i)? {
            ValueRef::Null => V::Null,
            ValueRef::Integer(n) => V::I(n),
            ValueRef::Real(x) => V::F(x),
            ValueRef::Text(t) | ValueRef::Blob(t) => V::T(String::from_utf8_lossy(t).into_owned()),
        });
    }
    Ok(Row(out))
}

impl Store {
    /// Open the embedded SQLite database (creating and migrating as needed).
    pub fn open(path: &Path) -> Result<Self, String> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let mut conn = Connection::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;")
            .map_err(|e| e.to_string())?;
        migrate_sqlite(&mut conn).map_err(|e| format!("cannot migrate {}: {e}", path.display()))?;
        Ok(Self { db: Db::Sqlite(Mutex::new(conn)) })
    }

    /// Connect to PostgreSQL (`postgres://user:password@host/db?sslmode=require`), migrating
    /// the schema as needed; every replica given the same URL shares the state.
    pub fn connect(url: &str) -> Result<Self, String> {
        off_async(|| {
            let mut client = pg_connect(url)?;
            migrate_postgres(&mut client)
                .map_err(|e| format!("cannot migrate the database at {}: {e}", redact_url(url)))?;
            Ok(Self { db: Db::Postgres(Box::new(Postgres { url: url.to_string(), client: Mutex::new(Some(client)) })) })
        })
    }

    /// Which database holds the state (`sqlite`, `postgres`), for `/readyz` and logs.
    pub fn backend(&self) -> &'static str {
        match self.db {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres(_) => "postgres",
        }
    }

    /// Run a statement; the number of rows it changed.
    fn exec(&self, sql: &str, params: &[V]) -> Result<u64, ApiError> {
        match &self.db {
            Db::Sqlite(c) => {
                let c = c.lock().unwrap_or_else(|p| p.into_inner());
                c.execute(sql, rusqlite::params_from_iter(params.iter())).map(|n| n as u64).map_err(internal)
            }
            Db::Postgres(pg) => {
                let sql = postgres_sql(sql);
                pg.with(|c| c.execute(sql.as_str(), &pg_params(params)))
            }
        }
    }

    /// Run a query; its rows.
    fn query(&self, sql: &str, params: &[V]) -> Result<Vec<Row>, ApiError> {
        match &self.db {
            Db::Sqlite(c) => {
                let c = c.lock().unwrap_or_else(|p| p.into_inner());
                let mut st = c.prepare_cached(sql).map_err(internal)?;
                let n = st.column_count();
                let rows =
                    st.query_map(rusqlite::params_from_iter(params.iter()), |r| sqlite_row(r, n)).map_err(internal)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(internal)
            }
            Db::Postgres(pg) => {
                let sql = postgres_sql(sql);
                pg.with(|c| c.query(sql.as_str(), &pg_params(params))?.iter().map(pg_row).collect())
            }
        }
    }

    fn query_one(&self, sql: &str, params: &[V]) -> Result<Option<Row>, ApiError> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    pub fn create_conversation(&self, client: &str) -> Result<String, ApiError> {
        let id = uuid::Uuid::new_v4().to_string();
        self.exec(
            "INSERT INTO conversations (id, client, created_unix) VALUES (?1, ?2, ?3)",
            vals![&id, client, now()],
        )?;
        Ok(id)
    }

    /// Whether the conversation exists and belongs to `client`.
    pub fn conversation_owner(&self, id: &str) -> Result<Option<String>, ApiError> {
        Ok(self.query_one("SELECT client FROM conversations WHERE id = ?1", vals![id])?.map(|r| r.s(0)))
    }

    /// Append a message; returns its id. Its place in the conversation is taken in the same
    /// statement; on PostgreSQL, with the conversation's row locked, so that two replicas
    /// appending at once take one place each.
    pub fn add_message(
        &self,
        conversation: &str,
        role: &str,
        content: &str,
        answer: Option<&serde_json::Value>,
    ) -> Result<String, ApiError> {
        let id = uuid::Uuid::new_v4().to_string();
        let insert = "INSERT INTO messages (id, conversation_id, seq, role, content, answer_json, created_unix)
             SELECT CAST(?1 AS TEXT), CAST(?2 AS TEXT), COALESCE(MAX(seq), 0) + 1, CAST(?3 AS TEXT),
               CAST(?4 AS TEXT), CAST(?5 AS TEXT), CAST(?6 AS BIGINT)
             FROM messages WHERE conversation_id = ?2";
        let params = vals![&id, conversation, role, content, answer.map(|a| a.to_string()), now()];
        match &self.db {
            // One connection behind a mutex: appends are already one at a time.
            Db::Sqlite(_) => {
                self.exec(insert, params)?;
            }
            Db::Postgres(pg) => {
                let sql = postgres_sql(insert);
                pg.with(|c| {
                    let mut tx = c.transaction()?;
                    tx.query("SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE", &[&conversation])?;
                    tx.execute(sql.as_str(), &pg_params(params))?;
                    tx.commit()
                })?;
            }
        }
        Ok(id)
    }

    /// Messages of a conversation, oldest first.
    pub fn messages(&self, conversation: &str) -> Result<Vec<StoredMessage>, ApiError> {
        Ok(self
            .query(
                "SELECT id, role, content, answer_json, created_unix FROM messages
                 WHERE conversation_id = ?1 ORDER BY seq",
                vals![conversation],
            )?
            .iter()
            .map(|r| StoredMessage {
                id: r.s(0),
                role: r.s(1),
                content: r.s(2),
                answer: r.json(3),
                created_unix: r.i(4),
            })
            .collect())
    }

    /// Store a client's vote on an answer in one of its own conversations; a second vote
    /// replaces the first. `None` when there is no such answer for this client.
    pub fn add_feedback(
        &self,
        message_id: &str,
        rating: &str,
        comment: Option<&str>,
        client: &str,
    ) -> Result<Option<i64>, ApiError> {
        let found = self.query_one(
            "SELECT m.role, c.client FROM messages m JOIN conversations c ON c.id = m.conversation_id
             WHERE m.id = ?1",
            vals![message_id],
        )?;
        match found {
            Some(r) if r.s(0) == "assistant" && r.s(1) == client => {}
            _ => return Ok(None),
        }
        let row = self.query_one(
            "INSERT INTO feedback (message_id, rating, comment, client, created_unix) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (message_id, client) DO UPDATE SET rating = excluded.rating,
               comment = excluded.comment, created_unix = excluded.created_unix
             RETURNING id",
            vals![message_id, rating, comment, client, now()],
        )?;
        Ok(row.map(|r| r.i(0)))
    }

    /// (up, down) counts, for metrics and tests.
    pub fn feedback_counts(&self) -> Result<(i64, i64), ApiError> {
        let r = self.query_one(
            "SELECT COALESCE(SUM(CASE WHEN rating = 'up' THEN 1 ELSE 0 END), 0),
                    COALESCE(SUM(CASE WHEN rating = 'down' THEN 1 ELSE 0 END), 0) FROM feedback",
            &[],
        )?;
        Ok(r.map_or((0, 0), |r| (r.i(0), r.i(1))))
    }
}

impl Store {
    /// A new admin job, queued; its id (time-ordered, so the newest sorts last).
    pub fn create_job(&self, kind: &str, actor: &str, detail: &serde_json::Value) -> Result<String, ApiError> {
        self.create_job_for("", kind, actor, detail)
    }

    /// A new admin job that changes knowledge base `kb`, queued for its writer (`claim_job`).
    pub fn create_job_for(
        &self,
        kb: &str,
        kind: &str,
        actor: &str,
        detail: &serde_json::Value,
    ) -> Result<String, ApiError> {
        let id = uuid::Uuid::now_v7().to_string();
        self.exec(
            "INSERT INTO jobs (id, kind, actor, status, detail_json, created_unix, kb) VALUES (?1, ?2, ?3, 'queued', ?4, ?5, ?6)",
            vals![&id, kind, actor, detail.to_string(), now(), kb],
        )?;
        Ok(id)
    }

    /// Move a job on; `done`, `failed` and `cancelled` record its report and end time.
    pub fn set_job(&self, id: &str, status: &str, report: Option<&serde_json::Value>) -> Result<(), ApiError> {
        let end = matches!(status, "done" | "failed" | "cancelled").then(now);
        self.exec(
            "UPDATE jobs SET status = ?2, report_json = COALESCE(CAST(?3 AS TEXT), report_json),
               finished_unix = CAST(?4 AS BIGINT) WHERE id = ?1",
            vals![id, status, report.map(|r| r.to_string()), end],
        )?;
        Ok(())
    }

    fn job_json(r: &Row) -> serde_json::Value {
        serde_json::json!({
            "id": r.s(0),
            "kind": r.s(1),
            "actor": r.s(2),
            "status": r.s(3),
            "detail": r.json(4),
            "report": r.json(5),
            "created_unix": r.i(6),
            "finished_unix": r.oi(7),
            "progress": r.json(8),
            "cancel_requested": r.os(9).is_some().then(|| serde_json::json!({ "by": r.os(9), "unix": r.oi(10) })),
        })
    }

    /// Record how far a running job is (and that it is alive); whether a cancel was asked for.
    pub fn set_job_progress(&self, id: &str, progress: &serde_json::Value) -> Result<bool, ApiError> {
        self.exec(
            "UPDATE jobs SET progress_json = ?2, heartbeat_unix = ?3 WHERE id = ?1 AND status = 'running'",
            vals![id, progress.to_string(), now()],
        )?;
        Ok(self.query_one("SELECT cancel_unix FROM jobs WHERE id = ?1", vals![id])?.is_some_and(|r| r.oi(0).is_some()))
    }

    /// Ask a queued or running job to stop: a queued one is cancelled at once (it never
    /// starts), a running one stops at its next check, whichever replica runs it. Whether the
    /// job was still queued or running.
    pub fn request_cancel(&self, id: &str, actor: &str) -> Result<bool, ApiError> {
        let report = serde_json::json!({ "cancelled": true, "files_ingested": 0 });
        let n = self.exec(
            "UPDATE jobs SET status = 'cancelled', report_json = ?2, finished_unix = ?3, cancel_unix = ?3,
               cancel_actor = ?4 WHERE id = ?1 AND status = 'queued'",
            vals![id, report.to_string(), now(), actor],
        )?;
        if n > 0 {
            return Ok(true);
        }
        let n = self.exec(
            "UPDATE jobs SET cancel_unix = COALESCE(cancel_unix, ?2), cancel_actor = COALESCE(cancel_actor, ?3)
             WHERE id = ?1 AND status IN ('queued', 'running')",
            vals![id, now(), actor],
        )?;
        Ok(n > 0)
    }

    pub fn job(&self, id: &str) -> Result<Option<serde_json::Value>, ApiError> {
        Ok(self
            .query_one(
                "SELECT id, kind, actor, status, detail_json, report_json, created_unix, finished_unix, progress_json, cancel_actor, cancel_unix FROM jobs WHERE id = ?1",
                vals![id],
            )?
            .map(|r| Self::job_json(&r)))
    }

    /// Take the oldest queued job of `lane` for knowledge base `kb` for this process to run,
    /// marked running: the update only succeeds while the job is still queued, so of replicas
    /// claiming at once exactly one gets it.
    pub fn claim_job(&self, kb: &str, lane: Lane) -> Result<Option<serde_json::Value>, ApiError> {
        loop {
            let Some(r) = self.query_one(
                &format!(
                    "SELECT id FROM jobs WHERE status = 'queued' AND kb = ?1 AND kind IN {}
                     ORDER BY created_unix, id LIMIT 1",
                    lane.kinds()
                ),
                vals![kb],
            )?
            else {
                return Ok(None);
            };
            let id = r.s(0);
            let n = self.exec(
                "UPDATE jobs SET status = 'running', heartbeat_unix = ?2 WHERE id = ?1 AND status = 'queued'",
                vals![&id, now()],
            )?;
            if n == 1 {
                return self.job(&id);
            }
        }
    }

    /// The writer of `kb` starts: it holds the knowledge base, so no other process runs that
    /// base's queued kinds of job, and those still marked running were cut short by its last
    /// stop. They are marked failed at once, without waiting for their heartbeat to go stale
    /// (not run again by themselves: a job that crashed its writer would crash it again).
    pub fn fail_jobs_of_stopped_writer(&self, kb: &str) -> Result<usize, ApiError> {
        let report = serde_json::json!({ "error": "interrupted: the writer stopped during the job; run it again" });
        let n = self.exec(
            &format!(
                "UPDATE jobs SET status = 'failed', report_json = ?1, finished_unix = ?2
                 WHERE status = 'running' AND kb = ?3 AND kind IN {QUEUED_KINDS}"
            ),
            vals![report.to_string(), now(), kb],
        )?;
        Ok(n as usize)
    }

    /// Queued jobs from before jobs named their knowledge base (migration 10) are taken by
    /// the first writer that starts: how many.
    pub fn adopt_unnamed_jobs(&self, kb: &str) -> Result<usize, ApiError> {
        let n = self.exec(
            &format!("UPDATE jobs SET kb = ?1 WHERE kb = '' AND status = 'queued' AND kind IN {QUEUED_KINDS}"),
            vals![kb],
        )?;
        Ok(n as usize)
    }

    /// A running job is alive (see `JOB_HEARTBEAT_S`).
    pub fn touch_job(&self, id: &str) -> Result<(), ApiError> {
        self.exec("UPDATE jobs SET heartbeat_unix = ?2 WHERE id = ?1 AND status = 'running'", vals![id, now()])?;
        Ok(())
    }

    /// Jobs cut short by a crash or a kill are marked failed. On SQLite (one process owns the
    /// file) that is every job still running when the server starts; on PostgreSQL, which
    /// replicas share, only those whose heartbeat stopped `JOB_STALE_S` ago, so that a replica
    /// starting (or sweeping, every minute) never fails another live replica's job. Queued
    /// jobs of the queue's kinds are not failed: they wait for a runner (`claim_job`); a queued
    /// evaluation was its process's own, and is. A queued job of a kind this version does not
    /// know is a newer replica's, for a newer writer: it is left alone.
    pub fn fail_interrupted_jobs(&self) -> Result<usize, ApiError> {
        let report = serde_json::json!({ "error": "interrupted: the server stopped during the job; run it again" });
        let stale_before = match self.db {
            Db::Sqlite(_) => i64::MAX,
            Db::Postgres(_) => now() - JOB_STALE_S,
        };
        let n = self.exec(
            &format!(
                "UPDATE jobs SET status = 'failed', report_json = ?1, finished_unix = ?2
                 WHERE (status = 'running' OR (status = 'queued' AND kind IN {LOCAL_KINDS}))
                   AND COALESCE(heartbeat_unix, created_unix) < ?3"
            ),
            vals![report.to_string(), now(), stale_before],
        )?;
        Ok(n as usize)
    }

    /// The newest jobs first.
    pub fn jobs(&self, limit: usize) -> Result<Vec<serde_json::Value>, ApiError> {
        Ok(self
            .query(
                "SELECT id, kind, actor, status, detail_json, report_json, created_unix, finished_unix, progress_json, cancel_actor, cancel_unix FROM jobs
                 ORDER BY created_unix DESC, id DESC LIMIT ?1",
                vals![limit as i64],
            )?
            .iter()
            .map(Self::job_json)
            .collect())
    }

    /// A new API key (its SHA-256); false when the name is taken (also by a revoked key).
    pub fn add_api_key(
        &self,
        name: &str,
        digest: &str,
        role: &str,
        groups: &[String],
        by: &str,
    ) -> Result<bool, ApiError> {
        let n = self.exec(
            "INSERT INTO api_keys (name, key_sha256, role, groups_json, created_by, created_unix)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
            vals![name, digest, role, serde_json::to_string(groups).unwrap_or_default(), by, now()],
        )?;
        Ok(n > 0)
    }

    /// The live (unrevoked) key with this SHA-256: its name, role and groups.
    pub fn api_key(&self, digest: &str) -> Result<Option<(String, String, Vec<String>)>, ApiError> {
        Ok(self
            .query_one(
                "SELECT name, role, groups_json FROM api_keys WHERE key_sha256 = ?1 AND revoked_unix IS NULL",
                vals![digest],
            )?
            .map(|r| (r.s(0), r.s(1), r.json(2).and_then(|g| serde_json::from_value(g).ok()).unwrap_or_default())))
    }

    /// Whether any live key exists.
    pub fn has_api_keys(&self) -> Result<bool, ApiError> {
        Ok(self.query_one("SELECT name FROM api_keys WHERE revoked_unix IS NULL LIMIT 1", &[])?.is_some())
    }

    /// Revoke a key at once: `None` when there is no such key, else whether it was live.
    pub fn revoke_api_key(&self, name: &str, by: &str) -> Result<Option<bool>, ApiError> {
        if self.query_one("SELECT name FROM api_keys WHERE name = ?1", vals![name])?.is_none() {
            return Ok(None);
        }
        let n = self.exec(
            "UPDATE api_keys SET revoked_unix = ?2, revoked_by = ?3 WHERE name = ?1 AND revoked_unix IS NULL",
            vals![name, now(), by],
        )?;
        Ok(Some(n > 0))
    }

    /// Every key made through the admin API, newest first (never a secret).
    pub fn api_keys(&self) -> Result<Vec<serde_json::Value>, ApiError> {
        Ok(self
            .query(
                "SELECT name, role, groups_json, created_by, created_unix, revoked_by, revoked_unix FROM api_keys
                 ORDER BY created_unix DESC, name",
                &[],
            )?
            .iter()
            .map(|r| {
                serde_json::json!({
                    "name": r.s(0),
                    "role": r.s(1),
                    "groups": r.json(2),
                    "source": "admin",
                    "created_by": r.s(3),
                    "created_unix": r.i(4),
                    "revoked_by": r.os(5),
                    "revoked_unix": r.oi(6),
                })
            })
            .collect())
    }

    /// The folder → groups rules admins set for knowledge base `kb`, by path.
    pub fn access_rules(&self, kb: &str) -> Result<Vec<AccessRuleRow>, ApiError> {
        Ok(self
            .query(
                "SELECT path, groups_json, updated_by, updated_unix FROM access_rules WHERE kb = ?1 ORDER BY path",
                vals![kb],
            )?
            .iter()
            .map(|r| AccessRuleRow {
                path: r.s(0),
                groups: r.json(1).and_then(|g| serde_json::from_value(g).ok()).unwrap_or_default(),
                updated_by: r.s(2),
                updated_unix: r.i(3),
            })
            .collect())
    }

    /// Set (or replace) the rule for `path` in `kb`.
    pub fn set_access_rule(&self, kb: &str, path: &str, groups: &[String], by: &str) -> Result<(), ApiError> {
        self.exec(
            "INSERT INTO access_rules (kb, path, groups_json, updated_by, updated_unix) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (kb, path) DO UPDATE SET groups_json = excluded.groups_json,
                 updated_by = excluded.updated_by, updated_unix = excluded.updated_unix",
            vals![kb, path, serde_json::to_string(groups).unwrap_or_default(), by, now()],
        )?;
        Ok(())
    }

    /// Remove the rule for `path` in `kb`; whether there was one.
    pub fn remove_access_rule(&self, kb: &str, path: &str) -> Result<bool, ApiError> {
        Ok(self.exec("DELETE FROM access_rules WHERE kb = ?1 AND path = ?2", vals![kb, path])? > 0)
    }

    /// Append to the audit trail. A failure to write is logged, never shown to the client.
    pub fn audit(&self, e: &AuditEntry) {
        let r = self.exec(
            "INSERT INTO audit (actor, action, target, result, detail, ip, created_unix)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            vals![&e.actor, &e.action, &e.target, &e.result, &e.detail, &e.ip, now()],
        );
        if let Err(err) = r {
            tracing::error!(error = %err, action = %e.action, "cannot write the audit trail");
        }
    }

    /// Audit lines, newest first; `before` pages back by id.
    pub fn audit_entries(&self, limit: usize, before: Option<i64>) -> Result<Vec<AuditRow>, ApiError> {
        Ok(self
            .query(
                "SELECT id, actor, action, target, result, detail, ip, created_unix FROM audit
                 WHERE CAST(?2 AS BIGINT) IS NULL OR id < ?2 ORDER BY id DESC LIMIT ?1",
                vals![limit as i64, before],
            )?
            .iter()
            .map(|r| AuditRow {
                id: r.i(0),
                entry: AuditEntry {
                    actor: r.s(1),
                    action: r.s(2),
                    target: r.s(3),
                    result: r.s(4),
                    detail: r.s(5),
                    ip: r.s(6),
                },
                created_unix: r.i(7),
            })
            .collect())
    }

    /// Record guard decisions (all of one request in one statement).
    pub fn add_guard_events(&self, events: &[GuardEvent]) -> Result<(), ApiError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut sql = String::from(
            "INSERT INTO guard_events (request_id, conversation_id, client, direction, category, rule, score,
             action, took_us, created_unix) VALUES ",
        );
        let mut params = Vec::with_capacity(events.len() * 10);
        for (i, e) in events.iter().enumerate() {
            let b = i * 10;
            sql.push_str(&format!(
                "{}(?{}, ?{}, ?{}, ?{}, ?{}, ?{}, ?{}, ?{}, ?{}, ?{})",
                if i == 0 { "" } else { ", " },
                b + 1,
                b + 2,
                b + 3,
                b + 4,
                b + 5,
                b + 6,
                b + 7,
                b + 8,
                b + 9,
                b + 10
            ));
            params.extend([
                V::from(&e.request_id),
                V::from(e.conversation_id.clone()),
                V::from(&e.client),
                V::from(&e.direction),
                V::from(&e.category),
                V::from(&e.rule),
                V::F(e.score),
                V::from(&e.action),
                V::I(e.took_us),
                V::I(now()),
            ]);
        }
        self.exec(&sql, &params)?;
        Ok(())
    }

    /// The most recent guard decisions, newest first.
    pub fn guard_events(&self, limit: usize) -> Result<Vec<GuardEvent>, ApiError> {
        Ok(self
            .query(
                "SELECT request_id, conversation_id, client, direction, category, rule, score, action, took_us
                 FROM guard_events ORDER BY id DESC LIMIT ?1",
                vals![limit as i64],
            )?
            .iter()
            .map(|r| GuardEvent {
                request_id: r.s(0),
                conversation_id: r.os(1),
                client: r.s(2),
                direction: r.s(3),
                category: r.s(4),
                rule: r.s(5),
                score: r.f(6),
                action: r.s(7),
                took_us: r.i(8),
            })
            .collect())
    }

    /// Put a text in quarantine (once per source and reference).
    #[allow(clippy::too_many_arguments)]
    pub fn quarantine(
        &self,
        source: &str,
        r#ref: &str,
        text: &str,
        category: &str,
        rule: &str,
        client: Option<&str>,
    ) -> Result<(), ApiError> {
        self.exec(
            "INSERT INTO quarantine (source, ref, text, category, rule, client, created_unix)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (source, ref) DO NOTHING",
            vals![source, r#ref, text, category, rule, client, now()],
        )?;
        Ok(())
    }

    /// Quarantined texts, optionally only those with `status`.
    pub fn quarantined(&self, status: Option<&str>) -> Result<Vec<Quarantined>, ApiError> {
        Ok(self
            .query(
                "SELECT id, source, ref, text, category, rule, client, status, created_unix FROM quarantine
                 WHERE CAST(?1 AS TEXT) IS NULL OR status = ?1 ORDER BY id",
                vals![status],
            )?
            .iter()
            .map(|r| Quarantined {
                id: r.i(0),
                source: r.s(1),
                r#ref: r.s(2),
                text: r.s(3),
                category: r.s(4),
                rule: r.s(5),
                client: r.os(6),
                status: r.s(7),
                created_unix: r.i(8),
            })
            .collect())
    }

    /// An admin's review: `released` lets the text into training data, `rejected` keeps it out.
    /// Returns whether the entry existed.
    pub fn review_quarantine(&self, id: i64, status: &str) -> Result<bool, ApiError> {
        if status != "released" && status != "rejected" {
            return Err(ApiError::BadRequest(format!("status '{status}': use released or rejected")));
        }
        let n =
            self.exec("UPDATE quarantine SET status = ?1, reviewed_unix = ?2 WHERE id = ?3", vals![status, now(), id])?;
        Ok(n > 0)
    }

    /// Votes for review, newest first: the answer, the question before it, the vote's comment.
    pub fn feedback_review(&self, rating: Option<&str>, limit: usize) -> Result<Vec<serde_json::Value>, ApiError> {
        Ok(self
            .query(
                "SELECT f.id, f.rating, f.comment, f.client, f.created_unix, m.id, m.content, m.answer_json,
                   (SELECT q.content FROM messages q WHERE q.conversation_id = m.conversation_id
                      AND q.seq < m.seq AND q.role = 'user' ORDER BY q.seq DESC LIMIT 1)
                 FROM feedback f JOIN messages m ON m.id = f.message_id
                 WHERE (CAST(?1 AS TEXT) IS NULL OR f.rating = ?1) ORDER BY f.id DESC LIMIT ?2",
                vals![rating, limit as i64],
            )?
            .iter()
            .map(|r| {
                let answer = r.json(7).unwrap_or(serde_json::Value::Null);
                serde_json::json!({
                    "id": r.i(0),
                    "rating": r.s(1),
                    "comment": r.os(2),
                    "client": r.s(3),
                    "created_unix": r.i(4),
                    "message_id": r.s(5),
                    "answer": r.s(6),
                    "citations": answer.get("citations").cloned().unwrap_or_default(),
                    "kind": answer.get("kind").cloned().unwrap_or_default(),
                    "question": r.os(8),
                })
            })
            .collect())
    }

    /// Record a Slack event id; `false` when it was seen before (a retry or a duplicate).
    /// Ids older than a day are forgotten (Slack retries within minutes).
    pub fn slack_event_first_seen(&self, event_id: &str) -> Result<bool, ApiError> {
        self.exec("DELETE FROM slack_events WHERE received_unix < ?1", vals![now() - 86_400])?;
        let n = self.exec(
            "INSERT INTO slack_events (event_id, received_unix) VALUES (?1, ?2) ON CONFLICT (event_id) DO NOTHING",
            vals![event_id, now()],
        )?;
        Ok(n == 1)
    }

    /// The conversation of a Slack thread (`team:channel:thread_ts`), if it has one.
    pub fn slack_thread(&self, thread: &str) -> Result<Option<String>, ApiError> {
        Ok(self
            .query_one("SELECT conversation_id FROM slack_threads WHERE thread = ?1", vals![thread])?
            .map(|r| r.s(0)))
    }

    pub fn set_slack_thread(&self, thread: &str, conversation: &str) -> Result<(), ApiError> {
        self.exec(
            "INSERT INTO slack_threads (thread, conversation_id) VALUES (?1, ?2)
             ON CONFLICT (thread) DO UPDATE SET conversation_id = excluded.conversation_id",
            vals![thread, conversation],
        )?;
        Ok(())
    }

    /// Feedback comments with the answer they were left on (training candidates).
    pub fn feedback_comments(&self) -> Result<Vec<(i64, String, String, String)>, ApiError> {
        Ok(self
            .query(
                "SELECT f.id, f.client, f.comment, m.content FROM feedback f JOIN messages m ON m.id = f.message_id
                 WHERE f.comment IS NOT NULL AND f.comment != '' ORDER BY f.id",
                &[],
            )?
            .iter()
            .map(|r| (r.i(0), r.s(1), r.s(2), r.s(3)))
            .collect())
    }

    /// Every user message with its conversation's client (training candidates).
    pub fn user_messages(&self) -> Result<Vec<(String, String, String)>, ApiError> {
        Ok(self
            .query(
                "SELECT m.id, c.client, m.content FROM messages m JOIN conversations c ON c.id = m.conversation_id
                 WHERE m.role = 'user' ORDER BY m.created_unix, m.seq",
                &[],
            )?
            .iter()
            .map(|r| (r.s(0), r.s(1), r.s(2)))
            .collect())
    }

    /// The schema version (the number of migration steps applied).
    pub fn schema_version(&self) -> Result<usize, ApiError> {
        let sql = match self.db {
            Db::Sqlite(_) => "PRAGMA user_version",
            Db::Postgres(_) => "SELECT version FROM kotae_schema",
        };
        Ok(self.query_one(sql, &[])?.map_or(0, |r| r.i(0) as usize))
    }
}

fn migrate_sqlite(conn: &mut Connection) -> rusqlite::Result<()> {
    let version: usize = conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))? as usize;
    for (i, step) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction()?;
        tx.execute_batch(step)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

/// The same steps in one transaction under an advisory lock, so that replicas starting
/// together migrate one after the other (the later ones find nothing left to do).
fn migrate_postgres(c: &mut postgres::Client) -> Result<(), postgres::Error> {
    let mut tx = c.transaction()?;
    tx.query("SELECT pg_advisory_xact_lock(7061302201)", &[])?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS kotae_schema (version BIGINT NOT NULL)")?;
    let version = tx.query_opt("SELECT version FROM kotae_schema", &[])?.map_or(0, |r| r.get::<_, i64>(0)) as usize;
    if version == 0 {
        tx.execute("INSERT INTO kotae_schema (version) VALUES (0)", &[])?;
    }
    for step in MIGRATIONS.iter().skip(version) {
        tx.batch_execute(&postgres_dialect(step))?;
    }
    tx.execute("UPDATE kotae_schema SET version = $1", &[&(MIGRATIONS.len() as i64).max(version as i64)])?;
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversations_feedback_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/kotae.sqlite3");
        let (conv, answer_id) = {
            let s = Store::open(&path).unwrap();
            let c = s.create_conversation("k1").unwrap();
            s.add_message(&c, "user", "VPN?", None).unwrap();
            let a = s
                .add_message(&c, "assistant", "Restart [1].", Some(&serde_json::json!({"kind": "generated"})))
                .unwrap();
            let first = s.add_feedback(&a, "up", Some("good"), "k1").unwrap().unwrap();
            assert!(s.add_feedback("nope", "up", None, "k1").unwrap().is_none());
            // Another client cannot vote on k1's answer; k1's second vote replaces its first.
            assert!(s.add_feedback(&a, "down", None, "k2").unwrap().is_none());
            assert_eq!(s.add_feedback(&a, "down", None, "k1").unwrap(), Some(first));
            assert_eq!(s.feedback_counts().unwrap(), (0, 1));
            s.add_feedback(&a, "up", Some("good"), "k1").unwrap();
            (c, a)
        };
        let s = Store::open(&path).unwrap();
        let m = s.messages(&conv).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!((m[0].role.as_str(), m[1].id.as_str()), ("user", answer_id.as_str()));
        assert_eq!(m[1].answer.as_ref().unwrap()["kind"], "generated");
        assert_eq!(s.feedback_counts().unwrap(), (1, 0));
        assert_eq!(s.conversation_owner(&conv).unwrap().as_deref(), Some("k1"));
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len());
    }

    #[test]
    fn jobs_report_progress_and_are_cancelled() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("kotae.sqlite3")).unwrap();
        let id = s.create_job("ingest", "key:ops", &serde_json::json!({ "files": ["a.md"] })).unwrap();
        s.set_job(&id, "running", None).unwrap();
        assert!(!s.set_job_progress(&id, &serde_json::json!({ "files_ingested": 1 })).unwrap());
        let j = s.job(&id).unwrap().unwrap();
        assert_eq!((j["progress"]["files_ingested"].as_i64(), j["cancel_requested"].is_null()), (Some(1), true));
        assert!(s.request_cancel(&id, "key:ops").unwrap());
        assert!(s.request_cancel(&id, "key:other").unwrap(), "asking twice is fine");
        assert!(s.set_job_progress(&id, &serde_json::json!({ "files_ingested": 2 })).unwrap(), "the runner sees it");
        assert_eq!(s.job(&id).unwrap().unwrap()["cancel_requested"]["by"], "key:ops", "the first asker is kept");
        s.set_job(&id, "cancelled", Some(&serde_json::json!({ "cancelled": true }))).unwrap();
        let j = s.job(&id).unwrap().unwrap();
        assert_eq!(j["status"], "cancelled");
        assert!(j["finished_unix"].is_i64());
        assert!(!s.request_cancel(&id, "key:ops").unwrap(), "an ended job cannot be cancelled");
        assert!(!s.request_cancel("no-such-job", "key:ops").unwrap());
    }

    #[test]
    fn the_jobs_table_rebuild_keeps_earlier_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kotae.sqlite3");
        {
            let conn = Connection::open(&path).unwrap();
            for (i, step) in MIGRATIONS.iter().enumerate().take(6) {
                conn.execute_batch(step).unwrap();
                conn.pragma_update(None, "user_version", (i + 1) as i64).unwrap();
            }
            conn.execute(
                "INSERT INTO jobs (id, kind, actor, status, detail_json, created_unix, heartbeat_unix) VALUES ('j1', 'ingest', 'key:ops', 'done', '{}', 5, 6)",
                [],
            )
            .unwrap();
        }
        let s = Store::open(&path).unwrap();
        let j = s.job("j1").unwrap().unwrap();
        assert_eq!((j["status"].as_str(), j["created_unix"].as_i64()), (Some("done"), Some(5)));
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len());
        assert_eq!(s.jobs(10).unwrap().len(), 1);
    }

    #[test]
    fn api_keys_are_made_found_and_revoked_for_good() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("kotae.sqlite3")).unwrap();
        assert!(!s.has_api_keys().unwrap());
        let groups = vec!["staff".to_string()];
        assert!(s.add_api_key("bot", "d1", "user", &groups, "key:ops").unwrap());
        assert!(!s.add_api_key("bot", "d2", "admin", &[], "key:ops").unwrap(), "names are unique");
        assert!(s.has_api_keys().unwrap());
        assert_eq!(s.api_key("d1").unwrap(), Some(("bot".into(), "user".into(), groups.clone())));
        assert_eq!(s.api_key("d2").unwrap(), None);
        assert_eq!(s.revoke_api_key("bot", "key:ops").unwrap(), Some(true));
        assert_eq!(s.api_key("d1").unwrap(), None, "revoked at once");
        assert_eq!(s.revoke_api_key("bot", "key:ops").unwrap(), Some(false));
        assert_eq!(s.revoke_api_key("nobody", "key:ops").unwrap(), None);
        assert!(!s.add_api_key("bot", "d3", "user", &[], "key:ops").unwrap(), "a revoked name is never given again");
        assert!(!s.has_api_keys().unwrap());
        let listed = s.api_keys().unwrap();
        assert_eq!((listed.len(), listed[0]["revoked_by"].as_str()), (1, Some("key:ops")));
        assert!(!listed[0].to_string().contains("d1"), "no digest in the list");
    }
}
