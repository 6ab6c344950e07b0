//! One SQL text for both backends. The projections are written once as statements with `$1`,
//! `$2`… placeholders (in order of first use, which SQLite and PostgreSQL both read), `BIGINT`
//! and `TEXT` columns only, and `INSERT … ON CONFLICT`; [`Portable`] runs them inside the
//! backend's projection transaction and [`ReadModel`] reads them back.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use reel_core::{BatchFailure, HandlerError, RecordedEvent, ReelError};
use tokio_postgres::types::ToSql;

/// A parameter or a column value.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(untagged)]
pub enum Value {
    /// A `BIGINT` (or NULL).
    Int(Option<i64>),
    /// A `TEXT` (or NULL).
    Text(Option<String>),
}

impl Value {
    /// The integer, 0 for NULL or text.
    pub fn int(&self) -> i64 {
        match self {
            Value::Int(Some(v)) => *v,
            _ => 0,
        }
    }

    /// The integer, if it is one.
    pub fn opt_int(&self) -> Option<i64> {
        match self {
            Value::Int(v) => *v,
            Value::Text(_) => None,
        }
    }

    /// The text, "" for NULL or a number.
    pub fn text(&self) -> String {
        match self {
            Value::Text(Some(v)) => v.clone(),
            _ => String::new(),
        }
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(Some(v))
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(Some(v.to_string()))
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(Some(v))
    }
}

impl From<Option<String>> for Value {
    fn from(v: Option<String>) -> Self {
        Value::Text(v)
    }
}

/// One statement with its parameters.
#[derive(Clone, Debug)]
pub struct Statement {
    /// The SQL, shared by every event that runs it.
    pub sql: Arc<str>,
    /// Its parameters, `$1` first.
    pub params: Vec<Value>,
}

/// A projection written once for both backends: the tables it keeps, and the statements each
/// event turns into. It must be a function of the events alone, so a rebuild from the
/// beginning arrives at the same rows.
pub trait SqlProjection: Send + Sync + 'static {
    /// Statements that create its tables (idempotent).
    fn create_tables(&self) -> Vec<String>;
    /// Statements that drop its tables.
    fn drop_tables(&self) -> Vec<String>;
    /// Appends the statements for `event` to `out`.
    fn statements(&self, event: &RecordedEvent, out: &mut Vec<Statement>) -> Result<(), HandlerError>;
}

/// Runs a [`SqlProjection`] as a SQLite or PostgreSQL projection: its statements and the
/// subscription's checkpoint commit in one transaction.
pub struct Portable(pub Arc<dyn SqlProjection>);

impl reel_sqlite::SqliteProjection for Portable {
    fn setup(&self, tx: &rusqlite::Transaction<'_>) -> Result<(), HandlerError> {
        for sql in self.0.create_tables() {
            tx.execute_batch(&sql)?;
        }
        Ok(())
    }

    fn teardown(&self, tx: &rusqlite::Transaction<'_>) -> Result<(), HandlerError> {
        for sql in self.0.drop_tables() {
            tx.execute_batch(&sql)?;
        }
        Ok(())
    }

    fn apply(&self, tx: &rusqlite::Transaction<'_>, batch: &[RecordedEvent]) -> Result<(), BatchFailure> {
        let mut statements = Vec::new();
        for (index, event) in batch.iter().enumerate() {
            statements.clear();
            self.0.statements(event, &mut statements).map_err(|e| BatchFailure::at(index, e))?;
            for statement in &statements {
                let mut prepared =
                    tx.prepare_cached(&sqlite_sql(&statement.sql)).map_err(|e| BatchFailure::at(index, e))?;
                prepared
                    .execute(rusqlite::params_from_iter(statement.params.iter().map(sqlite_value)))
                    .map_err(|e| BatchFailure::at(index, e))?;
            }
        }
        Ok(())
    }
}

#[async_trait]
impl reel_postgres::PostgresProjection for Portable {
    async fn setup(&self, tx: &tokio_postgres::Transaction<'_>) -> Result<(), HandlerError> {
        for sql in self.0.create_tables() {
            tx.batch_execute(&sql).await?;
        }
        Ok(())
    }

    async fn teardown(&self, tx: &tokio_postgres::Transaction<'_>) -> Result<(), HandlerError> {
        for sql in self.0.drop_tables() {
            tx.batch_execute(&sql).await?;
        }
        Ok(())
    }

    async fn apply(&self, tx: &tokio_postgres::Transaction<'_>, batch: &[RecordedEvent]) -> Result<(), BatchFailure> {
        // Every statement of the batch, with the index of the event it is for.
        let mut statements: Vec<(usize, Statement)> = Vec::new();
        let mut of_event = Vec::new();
        for (index, event) in batch.iter().enumerate() {
            of_event.clear();
            self.0.statements(event, &mut of_event).map_err(|e| BatchFailure::at(index, e))?;
            statements.extend(of_event.drain(..).map(|statement| (index, statement)));
        }
        // Each distinct statement is prepared once per batch, not once per event.
        let mut prepared: HashMap<Arc<str>, tokio_postgres::Statement> = HashMap::new();
        for (index, statement) in &statements {
            if !prepared.contains_key(&statement.sql) {
                let ready = tx.prepare(&statement.sql).await.map_err(|e| BatchFailure::at(*index, e))?;
                prepared.insert(statement.sql.clone(), ready);
            }
        }
        // Sent one after another without waiting for each answer (the driver pipelines the
        // statements of one connection and PostgreSQL runs them in order): one round trip per
        // event would hold the batch's transaction, and the projection, for as many round trips
        // as the batch has statements. After a failure the later ones fail too ("transaction is
        // aborted"); the first error is the one that says why.
        // At most `PIPELINE` in flight at once: enough to hide the round trips, without a batch
        // of thousands of statements (a rebuild) in the driver's queues at once.
        const PIPELINE: usize = 32;
        for chunk in statements.chunks(PIPELINE) {
            let params: Vec<_> = chunk.iter().map(|(_, statement)| postgres_params(&statement.params)).collect();
            let refs: Vec<Vec<&(dyn ToSql + Sync)>> = params
                .iter()
                .map(|params| params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect())
                .collect();
            let executions = chunk
                .iter()
                .zip(&refs)
                .map(|((_, statement), refs)| tx.execute(&prepared[&statement.sql], refs.as_slice()));
            let outcomes = futures_util::future::join_all(executions).await;
            for ((index, _), outcome) in chunk.iter().zip(outcomes) {
                outcome.map_err(|e| BatchFailure::at(*index, e))?;
            }
        }
        Ok(())
    }
}

/// `$1` → `?1`: SQLite numbers `?NNN` parameters explicitly, while it numbers `$NNN` ones by
/// their first appearance, which would bind `$2 … $1` the wrong way round.
fn sqlite_sql(sql: &str) -> String {
    let bytes = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    for (i, c) in sql.char_indices() {
        if c == '$' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

fn sqlite_value(value: &Value) -> rusqlite::types::Value {
    match value {
        Value::Int(Some(v)) => rusqlite::types::Value::Integer(*v),
        Value::Text(Some(v)) => rusqlite::types::Value::Text(v.clone()),
        Value::Int(None) | Value::Text(None) => rusqlite::types::Value::Null,
    }
}

fn postgres_params(values: &[Value]) -> Vec<Box<dyn ToSql + Sync + Send>> {
    values
        .iter()
        .map(|v| -> Box<dyn ToSql + Sync + Send> {
            match v {
                Value::Int(v) => Box::new(*v),
                Value::Text(v) => Box::new(v.clone()),
            }
        })
        .collect()
}

/// Where the projections' tables are read: the SQLite file (a few read connections of its
/// own) or the PostgreSQL database.
#[derive(Clone)]
pub enum ReadModel {
    /// The embedded store's file.
    Sqlite(Arc<SqliteReaders>),
    /// The PostgreSQL database.
    Postgres(Arc<tokio_postgres::Client>),
}

/// Read connections to one SQLite file, used in turn.
pub struct SqliteReaders {
    path: PathBuf,
    idle: Mutex<Vec<rusqlite::Connection>>,
}

impl ReadModel {
    /// Reads from the SQLite file at `path`.
    pub fn sqlite(path: impl Into<PathBuf>) -> Self {
        ReadModel::Sqlite(Arc::new(SqliteReaders { path: path.into(), idle: Mutex::new(Vec::new()) }))
    }

    /// Reads from the PostgreSQL database at `url`.
    pub async fn postgres(url: &str) -> Result<Self, ReelError> {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .map_err(|e| ReelError::storage("connecting the read model", e))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(error = %e, "read model connection ended");
            }
        });
        Ok(ReadModel::Postgres(Arc::new(client)))
    }

    /// Runs a query and returns its rows.
    pub async fn rows(&self, sql: &str, params: Vec<Value>) -> Result<Vec<Vec<Value>>, ReelError> {
        match self {
            ReadModel::Sqlite(readers) => {
                let readers = readers.clone();
                let sql = sql.to_string();
                tokio::task::spawn_blocking(move || readers.rows(&sql, &params))
                    .await
                    .map_err(|e| ReelError::storage("reading a projection", e))?
            }
            ReadModel::Postgres(client) => {
                let params = postgres_params(&params);
                let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect();
                let rows = client.query(sql, &refs).await.map_err(|e| ReelError::storage("reading a projection", e))?;
                rows.iter().map(postgres_row).collect()
            }
        }
    }
}

impl SqliteReaders {
    fn rows(&self, sql: &str, params: &[Value]) -> Result<Vec<Vec<Value>>, ReelError> {
        let fail = |e: rusqlite::Error| ReelError::storage("reading a projection", e);
        let connection = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let connection = match connection {
            Some(connection) => connection,
            None => {
                let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
                let connection = rusqlite::Connection::open_with_flags(&self.path, flags).map_err(fail)?;
                connection.busy_timeout(std::time::Duration::from_secs(5)).map_err(fail)?;
                connection
            }
        };
        let result = (|| {
            let mut statement = connection.prepare_cached(&sqlite_sql(sql))?;
            let width = statement.column_count();
            let mut rows = statement.query(rusqlite::params_from_iter(params.iter().map(sqlite_value)))?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                let mut values = Vec::with_capacity(width);
                for i in 0..width {
                    values.push(match row.get_ref(i)? {
                        rusqlite::types::ValueRef::Integer(v) => Value::Int(Some(v)),
                        rusqlite::types::ValueRef::Real(v) => Value::Int(Some(v as i64)),
                        rusqlite::types::ValueRef::Text(v) => {
                            Value::Text(Some(String::from_utf8_lossy(v).into_owned()))
                        }
                        rusqlite::types::ValueRef::Blob(_) | rusqlite::types::ValueRef::Null => Value::Int(None),
                    });
                }
                out.push(values);
            }
            Ok(out)
        })()
        .map_err(fail);
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < 4 {
            idle.push(connection);
        }
        result
    }
}

fn postgres_row(row: &tokio_postgres::Row) -> Result<Vec<Value>, ReelError> {
    use tokio_postgres::types::Type;
    let fail = |e: tokio_postgres::Error| ReelError::storage("reading a projection row", e);
    row.columns()
        .iter()
        .enumerate()
        .map(|(i, column)| {
            Ok(match *column.type_() {
                Type::INT8 => Value::Int(row.try_get::<_, Option<i64>>(i).map_err(fail)?),
                Type::INT4 => Value::Int(row.try_get::<_, Option<i32>>(i).map_err(fail)?.map(i64::from)),
                Type::BOOL => Value::Int(row.try_get::<_, Option<bool>>(i).map_err(fail)?.map(i64::from)),
                _ => Value::Text(row.try_get::<_, Option<String>>(i).map_err(fail)?),
            })
        })
        .collect()
}
