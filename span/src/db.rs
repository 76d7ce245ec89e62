//! Database exchanges (Redis, PostgreSQL, MySQL and MariaDB), per the OpenTelemetry
//! semantic conventions for database spans and metrics (`db.*`, v1.26+ names).

use serde::Serialize;

use crate::{RedDimensions, RedSchema, Value};

/// One database operation: a command or statement and its reply.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Db {
    /// `db.system.name`: `redis`, `postgresql`, `mysql`, `mariadb`.
    pub system: &'static str,
    /// `db.operation.name`: the command (`GET`) or the statement's verb (`SELECT`).
    pub operation: String,
    /// `db.collection.name`: the table a statement names, where it names one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collection: Option<String>,
    /// `db.query.text`, sanitised (literals replaced by `?`); for Redis built from the key,
    /// and only while the key is kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query_text: Option<String>,
    /// Redis: the command's first argument, its key. Dropped before a span is shown or
    /// exported unless `privacy.keep_redis_keys` is set ([`crate::Span::apply_privacy`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// `db.response.status_code`: the error's code (Redis: its prefix, `ERR`, `WRONGTYPE`;
    /// PostgreSQL: the SQLSTATE; MySQL: the error number, `1054`); `None` when the operation
    /// succeeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_code: Option<String>,
}

/// RED of Redis commands: by service, side and command; the status label is 1 for a command
/// the server answered with an error, else 0 (the error's code is in the span).
pub static REDIS_RED_SCHEMA: RedSchema = RedSchema {
    protocol: "redis",
    server_metric: "db.server.operation.duration",
    client_metric: "db.client.operation.duration",
    metric_description:
        "Duration of Redis commands seen by Apiary's probes, counted before sampling.",
    fixed_attribute: Some(("db.system.name", "redis")),
    operation_attribute: "db.operation.name",
    route_attribute: "db.collection.name",
    status_attribute: "apiary.db.error",
    prometheus_prefix: "apiary_redis",
    prometheus_labels: ["command", "collection", "error"],
};

/// RED of PostgreSQL statements: by service, side, operation (`SELECT`) and the one table the
/// statement names (empty when it names none or several); the status label is 1 for a
/// statement the server answered with an ErrorResponse (its SQLSTATE is in the span).
pub static POSTGRES_RED_SCHEMA: RedSchema = RedSchema {
    protocol: "postgres",
    server_metric: "db.server.operation.duration",
    client_metric: "db.client.operation.duration",
    metric_description:
        "Duration of PostgreSQL statements seen by Apiary's probes, counted before sampling.",
    fixed_attribute: Some(("db.system.name", "postgresql")),
    operation_attribute: "db.operation.name",
    route_attribute: "db.collection.name",
    status_attribute: "apiary.db.error",
    prometheus_prefix: "apiary_postgres",
    prometheus_labels: ["operation", "collection", "error"],
};

/// RED of MySQL statements (text and prepared), as [`POSTGRES_RED_SCHEMA`] counts PostgreSQL's;
/// the status label is 1 for a statement answered with an ERR packet.
pub static MYSQL_RED_SCHEMA: RedSchema = RedSchema {
    protocol: "mysql",
    server_metric: "db.server.operation.duration",
    client_metric: "db.client.operation.duration",
    metric_description:
        "Duration of MySQL statements seen by Apiary's probes, counted before sampling.",
    fixed_attribute: Some(("db.system.name", "mysql")),
    operation_attribute: "db.operation.name",
    route_attribute: "db.collection.name",
    status_attribute: "apiary.db.error",
    prometheus_prefix: "apiary_mysql",
    prometheus_labels: ["operation", "collection", "error"],
};

/// RED of MariaDB statements: the mysql probe's, for a server whose greeting says MariaDB (the
/// conventions name the two systems apart).
pub static MARIADB_RED_SCHEMA: RedSchema = RedSchema {
    protocol: "mariadb",
    metric_description:
        "Duration of MariaDB statements seen by Apiary's probes, counted before sampling.",
    fixed_attribute: Some(("db.system.name", "mariadb")),
    prometheus_prefix: "apiary_mariadb",
    ..MYSQL_RED_SCHEMA
};

impl Db {
    /// `{operation} {collection}`, or the operation alone (semantic conventions).
    pub(crate) fn name(&self, out: &mut String) {
        out.clear();
        out.push_str(&self.operation);
        if let Some(collection) = &self.collection {
            out.push(' ');
            out.push_str(collection);
        }
    }

    pub fn is_error(&self) -> bool {
        self.status_code.is_some()
    }

    pub(crate) fn red(&self, schema: &'static RedSchema) -> RedDimensions<'_> {
        RedDimensions {
            protocol: schema,
            operation: &self.operation,
            route: self.collection.as_deref().unwrap_or(""),
            status: u16::from(self.is_error()),
        }
    }

    /// What privacy rules keep: a Redis key only when asked for (keys hold user ids, emails,
    /// session tokens), and with it the query text built from it.
    pub(crate) fn apply_privacy(&mut self, keep_keys: bool) {
        if !keep_keys && self.key.take().is_some() {
            self.query_text = None;
        }
    }

    pub(crate) fn for_each_attribute(&self, emit: &mut impl FnMut(&str, Value)) {
        emit("db.system.name", Value::Str(self.system));
        emit("db.operation.name", Value::Str(&self.operation));
        if let Some(collection) = &self.collection {
            emit("db.collection.name", Value::Str(collection));
        }
        if let Some(text) = &self.query_text {
            emit("db.query.text", Value::Str(text));
        }
        if let Some(code) = &self.status_code {
            emit("db.response.status_code", Value::Str(code));
            emit("error.type", Value::Str(code));
        }
    }
}
