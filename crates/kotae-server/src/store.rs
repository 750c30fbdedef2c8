//! Conversations and feedback in an embedded SQLite database (`<data-dir>/state/kotae.sqlite3`).
//!
//! The schema is versioned with `PRAGMA user_version`; [`MIGRATIONS`] run in order, each in
//! its own transaction, so a database from any earlier version opens and upgrades.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};
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
];

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
    conn: Mutex<Connection>,
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn internal(e: rusqlite::Error) -> ApiError {
    ApiError::Internal(format!("database: {e}"))
}

impl Store {
    /// Open (creating and migrating as needed).
    pub fn open(path: &Path) -> Result<Self, String> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let mut conn = Connection::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;")
            .map_err(|e| e.to_string())?;
        migrate(&mut conn).map_err(|e| format!("cannot migrate {}: {e}", path.display()))?;
        Ok(Self { conn: Mutex::new(conn) })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn create_conversation(&self, client: &str) -> Result<String, ApiError> {
        let id = uuid::Uuid::new_v4().to_string();
        self.conn()
            .execute(
                "INSERT INTO conversations (id, client, created_unix) VALUES (?1, ?2, ?3)",
                params![id, client, now()],
            )
            .map_err(internal)?;
        Ok(id)
    }

    /// Whether the conversation exists and belongs to `client`.
    pub fn conversation_owner(&self, id: &str) -> Result<Option<String>, ApiError> {
        self.conn()
            .query_row("SELECT client FROM conversations WHERE id = ?1", [id], |r| r.get(0))
            .optional()
            .map_err(internal)
    }

    /// Append a message; returns its id.
    pub fn add_message(
        &self,
        conversation: &str,
        role: &str,
        content: &str,
        answer: Option<&serde_json::Value>,
    ) -> Result<String, ApiError> {
        let id = uuid::Uuid::new_v4().to_string();
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(internal)?;
        let seq: i64 = tx
            .query_row(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM messages WHERE conversation_id = ?1",
                [conversation],
                |r| r.get(0),
            )
            .map_err(internal)?;
        tx.execute(
            "INSERT INTO messages (id, conversation_id, seq, role, content, answer_json, created_unix)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![id, conversation, seq, role, content, answer.map(|a| a.to_string()), now()],
        )
        .map_err(internal)?;
        tx.commit().map_err(internal)?;
        Ok(id)
    }

    /// Messages of a conversation, oldest first.
    pub fn messages(&self, conversation: &str) -> Result<Vec<StoredMessage>, ApiError> {
        let conn = self.conn();
        let mut st = conn
            .prepare(
                "SELECT id, role, content, answer_json, created_unix FROM messages
                 WHERE conversation_id = ?1 ORDER BY seq",
            )
            .map_err(internal)?;
        let rows = st
            .query_map([conversation], |r| {
                let answer: Option<String> = r.get(3)?;
                Ok(StoredMessage {
                    id: r.get(0)?,
                    role: r.get(1)?,
                    content: r.get(2)?,
                    answer: answer.and_then(|a| serde_json::from_str(&a).ok()),
                    created_unix: r.get(4)?,
                })
            })
            .map_err(internal)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(internal)
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
        let conn = self.conn();
        let found: Option<(String, String)> = conn
            .query_row(
                "SELECT m.role, c.client FROM messages m JOIN conversations c ON c.id = m.conversation_id
                 WHERE m.id = ?1",
                [message_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(internal)?;
        match found {
            Some((role, owner)) if role == "assistant" && owner == client => {}
            _ => return Ok(None),
        }
        let id = conn
            .query_row(
                "INSERT INTO feedback (message_id, rating, comment, client, created_unix) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (message_id, client) DO UPDATE SET rating = excluded.rating,
                   comment = excluded.comment, created_unix = excluded.created_unix
                 RETURNING id",
                params![message_id, rating, comment, client, now()],
                |r| r.get(0),
            )
            .map_err(internal)?;
        Ok(Some(id))
    }

    /// (up, down) counts, for metrics and tests.
    pub fn feedback_counts(&self) -> Result<(i64, i64), ApiError> {
        self.conn()
            .query_row(
                "SELECT COALESCE(SUM(rating = 'up'), 0), COALESCE(SUM(rating = 'down'), 0) FROM feedback",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(internal)
    }
}

impl Store {
    /// A new admin job, queued; its id.
    pub fn create_job(&self, kind: &str, actor: &str, detail: &serde_json::Value) -> Result<String, ApiError> {
        let id = uuid::Uuid::new_v4().to_string();
        self.conn()
            .execute(
                "INSERT INTO jobs (id, kind, actor, status, detail_json, created_unix) VALUES (?1, ?2, ?3, 'queued', ?4, ?5)",
                params![id, kind, actor, detail.to_string(), now()],
            )
            .map_err(internal)?;
        Ok(id)
    }

    /// Move a job on; `done` and `failed` record its report and end time.
    pub fn set_job(&self, id: &str, status: &str, report: Option<&serde_json::Value>) -> Result<(), ApiError> {
        let end = matches!(status, "done" | "failed").then(now);
        self.conn()
            .execute(
                "UPDATE jobs SET status = ?2, report_json = COALESCE(?3, report_json), finished_unix = ?4 WHERE id = ?1",
                params![id, status, report.map(|r| r.to_string()), end],
            )
            .map_err(internal)?;
        Ok(())
    }

    fn job_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<serde_json::Value> {
        let parse = |s: Option<String>| s.and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok());
        Ok(serde_json::json!({
            "id": r.get::<_, String>(0)?,
            "kind": r.get::<_, String>(1)?,
            "actor": r.get::<_, String>(2)?,
            "status": r.get::<_, String>(3)?,
            "detail": parse(r.get(4)?),
            "report": parse(r.get(5)?),
            "created_unix": r.get::<_, i64>(6)?,
            "finished_unix": r.get::<_, Option<i64>>(7)?,
        }))
    }

    pub fn job(&self, id: &str) -> Result<Option<serde_json::Value>, ApiError> {
        self.conn()
            .query_row(
                "SELECT id, kind, actor, status, detail_json, report_json, created_unix, finished_unix FROM jobs WHERE id = ?1",
                [id],
                Self::job_row,
            )
            .optional()
            .map_err(internal)
    }

    /// At a server's start: jobs still queued or running were cut short by a crash or a kill.
    pub fn fail_interrupted_jobs(&self) -> Result<usize, ApiError> {
        let report = serde_json::json!({ "error": "interrupted: the server stopped during the job; run it again" });
        let n = self
            .conn()
            .execute(
                "UPDATE jobs SET status = 'failed', report_json = ?1, finished_unix = ?2 WHERE status IN ('queued', 'running')",
                params![report.to_string(), now()],
            )
            .map_err(internal)?;
        Ok(n)
    }

    /// The newest jobs first.
    pub fn jobs(&self, limit: usize) -> Result<Vec<serde_json::Value>, ApiError> {
        let conn = self.conn();
        let mut st = conn
            .prepare(
                "SELECT id, kind, actor, status, detail_json, report_json, created_unix, finished_unix FROM jobs
                 ORDER BY created_unix DESC, rowid DESC LIMIT ?1",
            )
            .map_err(internal)?;
        let rows = st.query_map([limit as i64], Self::job_row).map_err(internal)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(internal)
    }

    /// Append to the audit trail. A failure to write is logged, never shown to the client.
    pub fn audit(&self, e: &AuditEntry) {
        let r = self.conn().execute(
            "INSERT INTO audit (actor, action, target, result, detail, ip, created_unix)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![e.actor, e.action, e.target, e.result, e.detail, e.ip, now()],
        );
        if let Err(err) = r {
            tracing::error!(error = %err, action = %e.action, "cannot write the audit trail");
        }
    }

    /// Audit lines, newest first; `before` pages back by id.
    pub fn audit_entries(&self, limit: usize, before: Option<i64>) -> Result<Vec<AuditRow>, ApiError> {
        let conn = self.conn();
        let mut st = conn
            .prepare(
                "SELECT id, actor, action, target, result, detail, ip, created_unix FROM audit
                 WHERE ?2 IS NULL OR id < ?2 ORDER BY id DESC LIMIT ?1",
            )
            .map_err(internal)?;
        let rows = st
            .query_map(params![limit as i64, before], |r| {
                Ok(AuditRow {
                    id: r.get(0)?,
                    entry: AuditEntry {
                        actor: r.get(1)?,
                        action: r.get(2)?,
                        target: r.get(3)?,
                        result: r.get(4)?,
                        detail: r.get(5)?,
                        ip: r.get(6)?,
                    },
                    created_unix: r.get(7)?,
                })
            })
            .map_err(internal)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(internal)
    }

    /// Record guard decisions (all of one request in one transaction).
    pub fn add_guard_events(&self, events: &[GuardEvent]) -> Result<(), ApiError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(internal)?;
        for e in events {
            tx.execute(
                "INSERT INTO guard_events (request_id, conversation_id, client, direction, category, rule, score,
                 action, took_us, created_unix) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    e.request_id,
                    e.conversation_id,
                    e.client,
                    e.direction,
                    e.category,
                    e.rule,
                    e.score,
                    e.action,
                    e.took_us,
                    now()
                ],
            )
            .map_err(internal)?;
        }
        tx.commit().map_err(internal)
    }

    /// The most recent guard decisions, newest first.
    pub fn guard_events(&self, limit: usize) -> Result<Vec<GuardEvent>, ApiError> {
        let conn = self.conn();
        let mut st = conn
            .prepare(
                "SELECT request_id, conversation_id, client, direction, category, rule, score, action, took_us
                 FROM guard_events ORDER BY id DESC LIMIT ?1",
            )
            .map_err(internal)?;
        let rows = st
            .query_map([limit as i64], |r| {
                Ok(GuardEvent {
                    request_id: r.get(0)?,
                    conversation_id: r.get(1)?,
                    client: r.get(2)?,
                    direction: r.get(3)?,
                    category: r.get(4)?,
                    rule: r.get(5)?,
                    score: r.get(6)?,
                    action: r.get(7)?,
                    took_us: r.get(8)?,
                })
            })
            .map_err(internal)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(internal)
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
        self.conn()
            .execute(
                "INSERT OR IGNORE INTO quarantine (source, ref, text, category, rule, client, created_unix)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![source, r#ref, text, category, rule, client, now()],
            )
            .map_err(internal)?;
        Ok(())
    }

    /// Quarantined texts, optionally only those with `status`.
    pub fn quarantined(&self, status: Option<&str>) -> Result<Vec<Quarantined>, ApiError> {
        let conn = self.conn();
        let mut st = conn
            .prepare(
                "SELECT id, source, ref, text, category, rule, client, status, created_unix FROM quarantine
                 WHERE ?1 IS NULL OR status = ?1 ORDER BY id",
            )
            .map_err(internal)?;
        let rows = st
            .query_map([status], |r| {
                Ok(Quarantined {
                    id: r.get(0)?,
                    source: r.get(1)?,
                    r#ref: r.get(2)?,
                    text: r.get(3)?,
                    category: r.get(4)?,
                    rule: r.get(5)?,
                    client: r.get(6)?,
                    status: r.get(7)?,
                    created_unix: r.get(8)?,
                })
            })
            .map_err(internal)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(internal)
    }

    /// An admin's review: `released` lets the text into training data, `rejected` keeps it out.
    /// Returns whether the entry existed.
    pub fn review_quarantine(&self, id: i64, status: &str) -> Result<bool, ApiError> {
        if status != "released" && status != "rejected" {
            return Err(ApiError::BadRequest(format!("status '{status}': use released or rejected")));
        }
        let n = self
            .conn()
            .execute("UPDATE quarantine SET status = ?1, reviewed_unix = ?2 WHERE id = ?3", params![status, now(), id])
            .map_err(internal)?;
        Ok(n > 0)
    }

    /// Votes for review, newest first: the answer, the question before it, the vote's comment.
    pub fn feedback_review(&self, rating: Option<&str>, limit: usize) -> Result<Vec<serde_json::Value>, ApiError> {
        let conn = self.conn();
        let mut st = conn
            .prepare(
                "SELECT f.id, f.rating, f.comment, f.client, f.created_unix, m.id, m.content, m.answer_json,
                   (SELECT q.content FROM messages q WHERE q.conversation_id = m.conversation_id
                      AND q.seq < m.seq AND q.role = 'user' ORDER BY q.seq DESC LIMIT 1)
                 FROM feedback f JOIN messages m ON m.id = f.message_id
                 WHERE (?1 IS NULL OR f.rating = ?1) ORDER BY f.id DESC LIMIT ?2",
            )
            .map_err(internal)?;
        let rows = st
            .query_map(params![rating, limit as i64], |r| {
                let answer: Option<String> = r.get(7)?;
                let answer: serde_json::Value =
                    answer.and_then(|a| serde_json::from_str(&a).ok()).unwrap_or(serde_json::Value::Null);
                Ok(serde_json::json!({
                    "id": r.get::<_, i64>(0)?,
                    "rating": r.get::<_, String>(1)?,
                    "comment": r.get::<_, Option<String>>(2)?,
                    "client": r.get::<_, String>(3)?,
                    "created_unix": r.get::<_, i64>(4)?,
                    "message_id": r.get::<_, String>(5)?,
                    "answer": r.get::<_, String>(6)?,
                    "citations": answer.get("citations").cloned().unwrap_or_default(),
                    "kind": answer.get("kind").cloned().unwrap_or_default(),
                    "question": r.get::<_, Option<String>>(8)?,
                }))
            })
            .map_err(internal)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(internal)
    }

    /// Record a Slack event id; `false` when it was seen before (a retry or a duplicate).
    /// Ids older than a day are forgotten (Slack retries within minutes).
    pub fn slack_event_first_seen(&self, event_id: &str) -> Result<bool, ApiError> {
        let conn = self.conn();
        conn.execute("DELETE FROM slack_events WHERE received_unix < ?1", [now() - 86_400]).map_err(internal)?;
        let n = conn
            .execute(
                "INSERT OR IGNORE INTO slack_events (event_id, received_unix) VALUES (?1, ?2)",
                params![event_id, now()],
            )
            .map_err(internal)?;
        Ok(n == 1)
    }

    /// The conversation of a Slack thread (`team:channel:thread_ts`), if it has one.
    pub fn slack_thread(&self, thread: &str) -> Result<Option<String>, ApiError> {
        self.conn()
            .query_row("SELECT conversation_id FROM slack_threads WHERE thread = ?1", [thread], |r| r.get(0))
            .optional()
            .map_err(internal)
    }

    pub fn set_slack_thread(&self, thread: &str, conversation: &str) -> Result<(), ApiError> {
        self.conn()
            .execute(
                "INSERT INTO slack_threads (thread, conversation_id) VALUES (?1, ?2)
                 ON CONFLICT (thread) DO UPDATE SET conversation_id = excluded.conversation_id",
                params![thread, conversation],
            )
            .map_err(internal)?;
        Ok(())
    }

    /// Feedback comments with the answer they were left on (training candidates).
    pub fn feedback_comments(&self) -> Result<Vec<(i64, String, String, String)>, ApiError> {
        let conn = self.conn();
        let mut st = conn
            .prepare(
                "SELECT f.id, f.client, f.comment, m.content FROM feedback f JOIN messages m ON m.id = f.message_id
                 WHERE f.comment IS NOT NULL AND f.comment != '' ORDER BY f.id",
            )
            .map_err(internal)?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))).map_err(internal)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(internal)
    }

    /// Every user message with its conversation's client (training candidates).
    pub fn user_messages(&self) -> Result<Vec<(String, String, String)>, ApiError> {
        let conn = self.conn();
        let mut st = conn
            .prepare(
                "SELECT m.id, c.client, m.content FROM messages m JOIN conversations c ON c.id = m.conversation_id
                 WHERE m.role = 'user' ORDER BY m.created_unix, m.seq",
            )
            .map_err(internal)?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).map_err(internal)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(internal)
    }
}

fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let version: usize = conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))? as usize;
    for (i, step) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction()?;
        tx.execute_batch(step)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
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
        let v: i64 = s.conn().query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(v as usize, MIGRATIONS.len());
    }
}
