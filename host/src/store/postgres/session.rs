//! Connections that keep the statements they prepared. The daemon runs the
//! same few statements thousands of times a minute; parsing and planning
//! each again, in a round trip of its own, cost the server more than
//! running it (measured: 6 round trips for a no-op pull's 2 statements,
//! the client's unnamed statements and the pool's liveness check each
//! taking one).

use std::collections::HashMap;

use ::postgres::types::ToSql;
use ::postgres::{GenericClient, Row, Statement, Transaction};

/// One pooled connection and the statements it prepared, by their text.
pub(crate) struct Conn {
    client: ::postgres::Client,
    prepared: HashMap<String, Statement>,
}

/// Opens connections for the pool.
#[derive(Debug)]
pub(super) struct Manager {
    pub(super) server: super::Server,
}

impl r2d2::ManageConnection for Manager {
    type Connection = Conn;
    type Error = ::postgres::Error;

    fn connect(&self) -> Result<Conn, ::postgres::Error> {
        Ok(Conn {
            client: self.server.open()?,
            prepared: HashMap::new(),
        })
    }

    fn is_valid(&self, conn: &mut Conn) -> Result<(), ::postgres::Error> {
        conn.client.simple_query("").map(|_| ())
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        conn.client.is_closed()
    }
}

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// `sql` prepared on `client`, once per connection.
fn statement(
    client: &mut impl GenericClient,
    prepared: &mut HashMap<String, Statement>,
    sql: &str,
) -> Result<Statement, ::postgres::Error> {
    if let Some(s) = prepared.get(sql) {
        return Ok(s.clone());
    }
    let s = client.prepare(sql)?;
    prepared.insert(sql.to_string(), s.clone());
    Ok(s)
}

/// Statements by their text, through a connection's prepared ones: what a
/// pooled connection and a transaction on it both offer.
pub(crate) trait Cached {
    /// The client statements run on.
    type Client: GenericClient;

    /// The client and the connection's prepared statements, apart.
    fn parts(&mut self) -> (&mut Self::Client, &mut HashMap<String, Statement>);

    /// `f` with `sql` prepared (once per connection).
    fn with<T>(
        &mut self,
        sql: &str,
        f: impl FnOnce(&mut Self::Client, &Statement) -> Result<T, ::postgres::Error>,
    ) -> Result<T, ::postgres::Error> {
        let (client, prepared) = self.parts();
        let s = statement(client, prepared, sql)?;
        f(client, &s)
    }

    /// Runs `sql`; how many rows it changed.
    fn execute(&mut self, sql: &str, params: Params<'_>) -> Result<u64, ::postgres::Error> {
        self.with(sql, |c, s| c.execute(s, params))
    }

    /// The rows of `sql`.
    fn query(&mut self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, ::postgres::Error> {
        self.with(sql, |c, s| c.query(s, params))
    }

    /// The row of `sql`, if any.
    fn query_opt(
        &mut self,
        sql: &str,
        params: Params<'_>,
    ) -> Result<Option<Row>, ::postgres::Error> {
        self.with(sql, |c, s| c.query_opt(s, params))
    }

    /// The one row of `sql`.
    fn query_one(&mut self, sql: &str, params: Params<'_>) -> Result<Row, ::postgres::Error> {
        self.with(sql, |c, s| c.query_one(s, params))
    }
}

/// A transaction on a pooled connection, using its prepared statements.
pub(crate) struct Tx<'a> {
    tx: Transaction<'a>,
    prepared: &'a mut HashMap<String, Statement>,
}

impl Cached for Conn {
    type Client = ::postgres::Client;

    fn parts(&mut self) -> (&mut Self::Client, &mut HashMap<String, Statement>) {
        (&mut self.client, &mut self.prepared)
    }
}

impl<'a> Cached for Tx<'a> {
    type Client = Transaction<'a>;

    fn parts(&mut self) -> (&mut Self::Client, &mut HashMap<String, Statement>) {
        (&mut self.tx, &mut *self.prepared)
    }
}

impl Conn {
    /// Runs statements separated by `;`, unprepared (no parameters).
    pub(crate) fn batch_execute(&mut self, sql: &str) -> Result<(), ::postgres::Error> {
        self.client.batch_execute(sql)
    }

    /// Starts a transaction.
    pub(crate) fn transaction(&mut self) -> Result<Tx<'_>, ::postgres::Error> {
        Ok(Tx {
            tx: self.client.transaction()?,
            prepared: &mut self.prepared,
        })
    }
}

impl Tx<'_> {
    /// Makes what it did last.
    pub(crate) fn commit(self) -> Result<(), ::postgres::Error> {
        self.tx.commit()
    }
}
