//! The embedded store: one SQLite file `DATA_DIR/vpngw.db` in WAL mode. Resources are
//! JSON documents keyed by ID, with the columns that relations, uniqueness and ordering
//! need beside them. Blocking SQLite calls run on tokio's blocking pool behind one mutex:
//! a single writer is what SQLite allows anyway, and the API's load is small.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use model::{
    BgpRoutes, ConnectionStatus, CustomerGateway, GatewayStatus, LogEntry, Page, PolicyRoute, Psk,
    Route, Tags, Tunnel, TunnelState, TunnelStatus, VpnConnection, VpnGateway,
};
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{
    CLIENT_TOKEN_TTL, ClientToken, ClientTokenRecord, Counts, EventCount, ListQuery, Observed,
    Result, Store, StoreError,
};

/// Schema migrations, applied in order; `schema_version` holds how many ran. Never edit
/// one that has shipped: append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: the resources, logs and client tokens.
    r#"
CREATE TABLE vpn_gateways (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id  TEXT NOT NULL UNIQUE,
    doc TEXT NOT NULL
);
CREATE TABLE customer_gateways (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id  TEXT NOT NULL UNIQUE,
    doc TEXT NOT NULL
);
CREATE TABLE vpn_connections (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    id             TEXT NOT NULL UNIQUE,
    vpn_gateway_id TEXT NOT NULL REFERENCES vpn_gateways(id),
    doc            TEXT NOT NULL
);
CREATE INDEX vpn_connections_gateway ON vpn_connections(vpn_gateway_id);
CREATE TABLE tunnels (
    id                  TEXT PRIMARY KEY,
    connection_id       TEXT NOT NULL REFERENCES vpn_connections(id) ON DELETE CASCADE,
    idx                 INTEGER NOT NULL,
    vpn_gateway_id      TEXT NOT NULL REFERENCES vpn_gateways(id),
    customer_gateway_id TEXT NOT NULL REFERENCES customer_gateways(id),
    bgp_tunnel_cidr     TEXT,
    psk                 TEXT NOT NULL,
    doc                 TEXT NOT NULL,
    status              TEXT NOT NULL,
    UNIQUE (connection_id, idx),
    UNIQUE (vpn_gateway_id, bgp_tunnel_cidr)
);
CREATE INDEX tunnels_customer_gateway ON tunnels(customer_gateway_id);
CREATE TABLE routes (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    id             TEXT NOT NULL UNIQUE,
    kind           TEXT NOT NULL CHECK (kind IN ('route', 'policy')),
    vpn_gateway_id TEXT NOT NULL REFERENCES vpn_gateways(id),
    next_hop       TEXT NOT NULL REFERENCES vpn_connections(id),
    match_key      TEXT NOT NULL,
    doc            TEXT NOT NULL,
    UNIQUE (vpn_gateway_id, kind, match_key)
);
CREATE TABLE connection_logs (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    connection_id TEXT NOT NULL,
    at            TEXT NOT NULL,
    doc           TEXT NOT NULL
);
CREATE INDEX connection_logs_connection ON connection_logs(connection_id, seq);
CREATE TABLE client_tokens (
    scope        TEXT NOT NULL,
    token        TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    resource_id  TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    PRIMARY KEY (scope, token)
);
"#,
    // 2: per-tunnel event counters, kept apart from the trimmed log so that they only
    // grow (Prometheus counters).
    r#"
CREATE TABLE tunnel_event_counts (
    tunnel_id TEXT NOT NULL REFERENCES tunnels(id) ON DELETE CASCADE,
    event     TEXT NOT NULL,
    count     INTEGER NOT NULL,
    PRIMARY KEY (tunnel_id, event)
);
"#,
    // 3: the routes each tunnel's BGP session received and advertised, written by the
    // node beside the status (a JSON `BgpRoutes`; existing tunnels start with none).
    r#"
ALTER TABLE tunnels ADD COLUMN bgp_routes TEXT NOT NULL DEFAULT '{}';
"#,
    // 4: the connections' BGP options (issue 7): ECMP over both tunnels, re-advertising
    // routes learned on other connections, overriding static routes. Existing
    // connections get them written out as off, today's behaviour.
    r#"
UPDATE vpn_connections SET doc = json_insert(doc,
    '$.bgp_ecmp', json('false'),
    '$.bgp_advertise_learned', json('false'),
    '$.bgp_override_static', json('false'));
"#,
    // 5: indexes for what the controller without a node settles after each write
    // (`unsettled_connections`): evaluating every document's JSON per create was
    // O(n) per create, O(n²) to create n connections (issue 8).
    r#"
CREATE INDEX IF NOT EXISTS vpn_connections_status ON vpn_connections(json_extract(doc, '$.status'));
CREATE INDEX IF NOT EXISTS tunnels_state ON tunnels(json_extract(doc, '$.state'));
"#,
    // 6: how many log rows each connection has, so that keeping the newest
    // MAX_LOGS_PER_CONNECTION deletes the oldest by the index instead of finding the
    // cut-off with an OFFSET walk over all of them on every append (~0.3 ms per row
    // for a connection at the cap; issue 8).
    r#"
CREATE TABLE IF NOT EXISTS connection_log_counts (
    connection_id TEXT PRIMARY KEY,
    n             INTEGER NOT NULL
);
INSERT OR REPLACE INTO connection_log_counts (connection_id, n)
    SELECT connection_id, count(*) FROM connection_logs GROUP BY connection_id;
"#,
];

const MAX_LOGS_PER_CONNECTION: i64 = 10_000;

/// [`Store::unsettled_connections`]: (seq, doc) of connections in `creating`/`updating`
/// or with a tunnel in `updating`, through the indexes of migration 5.
const UNSETTLED: &str = "SELECT seq, doc FROM vpn_connections
     WHERE json_extract(doc, '$.status') IN ('creating', 'updating')
     UNION
     SELECT c.seq, c.doc FROM tunnels t JOIN vpn_connections c ON c.id = t.connection_id
     WHERE json_extract(t.doc, '$.state') = 'updating'
     ORDER BY 1";

/// The SQLite [`Store`].
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

impl SqliteStore {
    pub const FILE_NAME: &'static str = "vpngw.db";

    /// Opens `data_dir/vpngw.db`, creating the directory (mode 0700) and the database
    /// (mode 0600: it holds pre-shared keys) when missing, and migrates the schema.
    pub fn open(data_dir: &Path) -> Result<Self> {
        fs::create_dir_all(data_dir).map_err(|e| io_err(data_dir, e))?;
        fs::set_permissions(data_dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| io_err(data_dir, e))?;
        Self::open_file(&data_dir.join(Self::FILE_NAME))
    }

    /// Opens a database file (mode 0600) and migrates it.
    pub fn open_file(path: &Path) -> Result<Self> {
        let mut conn = Connection::open(path)?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))
            .map_err(|e| io_err(path, e))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // Every statement after the migrations goes through the cache (`exec`,
        // `prepare_cached`): parsing SQL was 40% of the writer's CPU while thousands of
        // tunnels came up at once (docs/PERFORMANCE.md). Room for all of them.
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        migrate(&mut conn)?;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version (number of migrations applied).
    pub async fn schema_version(&self) -> Result<usize> {
        self.call(|c| Ok(current_version(c)?)).await
    }

    /// Runs `f` in a transaction on the blocking pool; commits when it returns `Ok`.
    async fn call<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> Result<T> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let mut conn = conn
                .lock()
                .map_err(|_| StoreError::Backend("database lock poisoned".into()))?;
            let tx = conn.transaction()?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("store task failed: {e}")))?
    }
}

fn migrate(conn: &mut Connection) -> Result<()> {
    conn.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")?;
    let tx = conn.transaction()?;
    let current = current_version(&tx)?;
    if current > MIGRATIONS.len() {
        return Err(StoreError::Backend(format!(
            "database schema version {current} is newer than this vpngw ({})",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        tx.execute_batch(sql)?;
        tracing::info!(version = i + 1, "applied schema migration");
    }
    tx.execute("DELETE FROM schema_version", [])?;
    tx.execute(
        "INSERT INTO schema_version (version) VALUES (?1)",
        [MIGRATIONS.len() as i64],
    )?;
    tx.commit()?;
    Ok(())
}

fn current_version(conn: &Connection) -> rusqlite::Result<usize> {
    let v: Option<i64> = conn
        .query_row("SELECT MAX(version) FROM schema_version", [], |r| r.get(0))
        .optional()?
        .flatten();
    Ok(usize::try_from(v.unwrap_or(0)).unwrap_or(0))
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::ConstraintViolation) => {
                StoreError::Conflict(format!("the change conflicts with stored data ({e})"))
            }
            _ => StoreError::Backend(e.to_string()),
        }
    }
}

fn io_err(path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Backend(format!("{}: {e}", path.display()))
}

fn to_json<T: Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Backend(format!("encoding: {e}")))
}

fn from_json<T: DeserializeOwned>(s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| StoreError::Backend(format!("stored document: {e}")))
}

/// Fixed-width UTC timestamps, so that text order is time order.
fn ts(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn not_found(kind: &'static str, id: &str) -> StoreError {
    StoreError::NotFound {
        kind,
        id: id.to_string(),
    }
}

// --- client tokens

fn token_cutoff(now: DateTime<Utc>) -> String {
    ts(&(now - CLIENT_TOKEN_TTL))
}

fn find_token(
    tx: &Connection,
    scope: &str,
    token: &str,
    now: DateTime<Utc>,
) -> Result<Option<ClientTokenRecord>> {
    let row = tx
        .query_row(
            "SELECT request_hash, resource_id, created_at FROM client_tokens
             WHERE scope = ?1 AND token = ?2 AND created_at >= ?3",
            params![scope, token, token_cutoff(now)],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            },
        )
        .optional()?;
    let Some((request_hash, resource_id, created_at)) = row else {
        return Ok(None);
    };
    let created_at = DateTime::parse_from_rfc3339(&created_at)
        .map_err(|e| StoreError::Backend(format!("stored token time: {e}")))?
        .with_timezone(&Utc);
    Ok(Some(ClientTokenRecord {
        token: ClientToken {
            scope: scope.to_string(),
            token: token.to_string(),
            request_hash,
            created_at,
        },
        resource_id,
    }))
}

/// Records `token` for `resource_id` inside the caller's transaction, or fails with the
/// first use so that the caller's insert is rolled back.
fn claim_token(tx: &Connection, token: Option<&ClientToken>, resource_id: &str) -> Result<()> {
    let Some(t) = token else { return Ok(()) };
    if let Some(first) = find_token(tx, &t.scope, &t.token, t.created_at)? {
        return Err(StoreError::ClientTokenTaken(first));
    }
    exec(
        tx,
        "DELETE FROM client_tokens WHERE scope = ?1 AND token = ?2",
        params![t.scope, t.token],
    )?;
    exec(
        tx,
        "INSERT INTO client_tokens (scope, token, request_hash, resource_id, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            t.scope,
            t.token,
            t.request_hash,
            resource_id,
            ts(&t.created_at)
        ],
    )?;
    Ok(())
}

// --- loading documents with their computed fields

fn load_gateway(tx: &Connection, doc: &str) -> Result<VpnGateway> {
    let mut gw: VpnGateway = from_json(doc)?;
    let n: i64 = tx.query_row(
        "SELECT COUNT(*) FROM vpn_connections WHERE vpn_gateway_id = ?1",
        [&gw.id],
        |r| r.get(0),
    )?;
    gw.connection_count = u32::try_from(n).unwrap_or(u32::MAX);
    Ok(gw)
}

fn load_customer_gateway(tx: &Connection, doc: &str) -> Result<CustomerGateway> {
    let mut c: CustomerGateway = from_json(doc)?;
    let n: i64 = tx.query_row(
        "SELECT COUNT(*) FROM tunnels WHERE customer_gateway_id = ?1",
        [&c.id],
        |r| r.get(0),
    )?;
    c.tunnel_count = u32::try_from(n).unwrap_or(u32::MAX);
    Ok(c)
}

fn load_connection(tx: &Connection, doc: &str) -> Result<VpnConnection> {
    let mut c: VpnConnection = from_json(doc)?;
    let mut stmt = tx.prepare_cached(
        "SELECT doc, psk, status FROM tunnels WHERE connection_id = ?1 ORDER BY idx",
    )?;
    let rows = stmt.query_map([&c.id], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
        ))
    })?;
    let mut tunnels = Vec::new();
    for row in rows {
        let (doc, psk, status) = row?;
        let mut t: Tunnel = from_json(&doc)?;
        t.pre_shared_key = Psk::parse(&psk).map_err(|_| {
            StoreError::Backend(format!(
                "stored pre-shared key of tunnel {} is invalid",
                t.id
            ))
        })?;
        t.status = from_json(&status)?;
        if let Some(b) = t.status.bgp.as_mut() {
            b.refresh_uptime(Utc::now());
        }
        tunnels.push(t);
    }
    c.tunnels = tunnels;
    c.refresh_state();
    Ok(c)
}

fn doc_of(tx: &Connection, table: &str, id: &str) -> Result<Option<String>> {
    Ok(tx
        .prepare_cached(&format!("SELECT doc FROM {table} WHERE id = ?1"))?
        .query_row([id], |r| r.get(0))
        .optional()?)
}

/// `Connection::execute` through the statement cache: parsed once per connection.
fn exec(tx: &Connection, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize> {
    tx.prepare_cached(sql)?.execute(params)
}

/// Statements kept parsed: more than the distinct statements this file runs.
const STATEMENT_CACHE: usize = 128;

fn gateway_in(tx: &Connection, id: &str) -> Result<VpnGateway> {
    let doc = doc_of(tx, "vpn_gateways", id)?.ok_or_else(|| not_found("VPN gateway", id))?;
    load_gateway(tx, &doc)
}

fn connection_in(tx: &Connection, id: &str) -> Result<VpnConnection> {
    let doc = doc_of(tx, "vpn_connections", id)?.ok_or_else(|| not_found("VPN connection", id))?;
    load_connection(tx, &doc)
}

/// What list filters look at.
trait Listed {
    fn name(&self) -> &str;
    fn tags(&self) -> &Tags;
    fn gateway_id(&self) -> Option<&str> {
        None
    }
}

impl Listed for VpnGateway {
    fn name(&self) -> &str {
        &self.name
    }
    fn tags(&self) -> &Tags {
        &self.tags
    }
}

impl Listed for CustomerGateway {
    fn name(&self) -> &str {
        &self.name
    }
    fn tags(&self) -> &Tags {
        &self.tags
    }
}

impl Listed for VpnConnection {
    fn name(&self) -> &str {
        &self.name
    }
    fn tags(&self) -> &Tags {
        &self.tags
    }
    fn gateway_id(&self) -> Option<&str> {
        Some(&self.vpn_gateway_id)
    }
}

/// Lists a table in insertion order. The page token is the insertion sequence number of
/// the last item handed out.
fn list<T: Listed>(
    tx: &Connection,
    table: &str,
    q: &ListQuery,
    load: fn(&Connection, &str) -> Result<T>,
) -> Result<Page<T>> {
    let after: i64 = match &q.page_token {
        None => 0,
        Some(t) => t
            .strip_prefix('p')
            .and_then(|n| n.parse().ok())
            .filter(|n| *n >= 0)
            .ok_or(StoreError::InvalidPageToken)?,
    };
    let size = q.effective_page_size();
    let needle = q.name_contains.as_ref().map(|n| n.to_lowercase());
    let mut stmt = tx.prepare(&format!(
        "SELECT seq, doc FROM {table} WHERE seq > ?1 ORDER BY seq"
    ))?;
    let mut rows = stmt.query([after])?;
    let mut items = Vec::new();
    let mut last_seq = after;
    let mut more = false;
    while let Some(row) = rows.next()? {
        let seq: i64 = row.get(0)?;
        let doc: String = row.get(1)?;
        let item = load(tx, &doc)?;
        let name_ok = needle
            .as_ref()
            .is_none_or(|n| item.name().to_lowercase().contains(n));
        let tags_ok = q
            .tags
            .iter()
            .all(|(k, v)| item.tags().get(k).is_some_and(|tv| tv == v));
        let gw_ok = q
            .vpn_gateway_id
            .as_ref()
            .is_none_or(|g| item.gateway_id() == Some(g.as_str()));
        if !(name_ok && tags_ok && gw_ok) {
            continue;
        }
        if items.len() == size {
            more = true;
            break;
        }
        items.push(item);
        last_seq = seq;
    }
    Ok(Page {
        items,
        next_page_token: more.then(|| format!("p{last_seq}")),
    })
}

fn tunnel_doc(t: &Tunnel) -> Result<String> {
    let mut t = t.clone();
    // The observed status has its own column, written by the node.
    t.status = TunnelStatus::default();
    to_json(&t)
}

fn connection_doc(c: &VpnConnection) -> Result<String> {
    let mut c = c.clone();
    c.tunnels.clear();
    to_json(&c)
}

/// Tunnel CIDRs must be unique per gateway: checked here for a clear message, and by the
/// UNIQUE index for atomicity.
fn check_tunnel_cidrs(tx: &Connection, c: &VpnConnection) -> Result<()> {
    for t in &c.tunnels {
        let Some(b) = t.bgp else { continue };
        let other: Option<String> = tx
            .query_row(
                "SELECT connection_id FROM tunnels
                 WHERE vpn_gateway_id = ?1 AND bgp_tunnel_cidr = ?2 AND connection_id != ?3",
                params![c.vpn_gateway_id, b.tunnel_cidr.to_string(), c.id],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(other) = other {
            return Err(StoreError::Conflict(format!(
                "tunnel CIDR {} is already used by connection {other} on gateway {}",
                b.tunnel_cidr, c.vpn_gateway_id
            )));
        }
    }
    Ok(())
}

fn route_rows<T: DeserializeOwned>(
    tx: &Connection,
    gateway_id: &str,
    kind: &str,
) -> Result<Vec<T>> {
    gateway_in(tx, gateway_id)?;
    let mut stmt = tx.prepare_cached(
        "SELECT doc FROM routes WHERE vpn_gateway_id = ?1 AND kind = ?2 ORDER BY seq",
    )?;
    let docs = stmt
        .query_map(params![gateway_id, kind], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    docs.iter().map(|d| from_json(d)).collect()
}

fn route_row<T: DeserializeOwned>(
    tx: &Connection,
    gateway_id: &str,
    kind: &'static str,
    id: &str,
) -> Result<T> {
    let doc: Option<String> = tx
        .query_row(
            "SELECT doc FROM routes WHERE vpn_gateway_id = ?1 AND kind = ?2 AND id = ?3",
            params![gateway_id, kind, id],
            |r| r.get(0),
        )
        .optional()?;
    let what = if kind == "route" {
        "route"
    } else {
        "policy route"
    };
    from_json(&doc.ok_or_else(|| not_found(what, id))?)
}

#[allow(clippy::too_many_arguments)]
fn insert_route(
    tx: &Connection,
    id: &str,
    kind: &str,
    gateway_id: &str,
    next_hop: &str,
    match_key: &str,
    doc: &str,
    token: Option<&ClientToken>,
) -> Result<()> {
    gateway_in(tx, gateway_id)?;
    let hop_gw: Option<String> = tx
        .query_row(
            "SELECT vpn_gateway_id FROM vpn_connections WHERE id = ?1",
            [next_hop],
            |r| r.get(0),
        )
        .optional()?;
    if hop_gw.as_deref() != Some(gateway_id) {
        return Err(StoreError::Conflict(format!(
            "next hop {next_hop} is not a connection of gateway {gateway_id}"
        )));
    }
    let dup: Option<String> = tx
        .query_row(
            "SELECT id FROM routes WHERE vpn_gateway_id = ?1 AND kind = ?2 AND match_key = ?3",
            params![gateway_id, kind, match_key],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(dup) = dup {
        return Err(StoreError::Conflict(format!(
            "an identical route already exists: {dup}"
        )));
    }
    claim_token(tx, token, id)?;
    exec(
        tx,
        "INSERT INTO routes (id, kind, vpn_gateway_id, next_hop, match_key, doc)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![id, kind, gateway_id, next_hop, match_key, doc],
    )?;
    Ok(())
}

fn delete_route_row(tx: &Connection, gateway_id: &str, kind: &'static str, id: &str) -> Result<()> {
    gateway_in(tx, gateway_id)?;
    let n = exec(
        tx,
        "DELETE FROM routes WHERE vpn_gateway_id = ?1 AND kind = ?2 AND id = ?3",
        params![gateway_id, kind, id],
    )?;
    if n == 0 {
        let what = if kind == "route" {
            "route"
        } else {
            "policy route"
        };
        return Err(not_found(what, id));
    }
    Ok(())
}

fn count(tx: &Connection, sql: &str) -> Result<u64> {
    let n: i64 = tx.query_row(sql, [], |r| r.get(0))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_gateway(&self, gw: &VpnGateway, token: Option<&ClientToken>) -> Result<()> {
        let (id, doc, token) = (gw.id.clone(), to_json(gw)?, token.cloned());
        self.call(move |tx| {
            claim_token(tx, token.as_ref(), &id)?;
            exec(
                tx,
                "INSERT INTO vpn_gateways (id, doc) VALUES (?1, ?2)",
                params![id, doc],
            )?;
            Ok(())
        })
        .await
    }

    async fn gateway(&self, id: &str) -> Result<VpnGateway> {
        let id = id.to_string();
        self.call(move |tx| gateway_in(tx, &id)).await
    }

    async fn list_gateways(&self, q: &ListQuery) -> Result<Page<VpnGateway>> {
        let q = q.clone();
        self.call(move |tx| list(tx, "vpn_gateways", &q, load_gateway))
            .await
    }

    async fn update_gateway(&self, gw: &VpnGateway) -> Result<()> {
        let (id, doc) = (gw.id.clone(), to_json(gw)?);
        self.call(move |tx| {
            let n = exec(
                tx,
                "UPDATE vpn_gateways SET doc = ?2 WHERE id = ?1",
                params![id, doc],
            )?;
            if n == 0 {
                return Err(not_found("VPN gateway", &id));
            }
            Ok(())
        })
        .await
    }

    async fn set_gateway_status(
        &self,
        id: &str,
        status: GatewayStatus,
        reason: Option<String>,
    ) -> Result<()> {
        let id = id.to_string();
        self.call(move |tx| {
            let mut gw = gateway_in(tx, &id)?;
            gw.status = status;
            gw.status_reason = reason;
            exec(
                tx,
                "UPDATE vpn_gateways SET doc = ?2 WHERE id = ?1",
                params![id, to_json(&gw)?],
            )?;
            Ok(())
        })
        .await
    }

    async fn delete_gateway(&self, id: &str) -> Result<()> {
        let id = id.to_string();
        self.call(move |tx| {
            let gw = gateway_in(tx, &id)?;
            if gw.connection_count > 0 {
                return Err(StoreError::Conflict(format!(
                    "VPN gateway {id} still has {} connection(s): delete them first",
                    gw.connection_count
                )));
            }
            exec(tx, "DELETE FROM routes WHERE vpn_gateway_id = ?1", [&id])?;
            exec(tx, "DELETE FROM vpn_gateways WHERE id = ?1", [&id])?;
            Ok(())
        })
        .await
    }

    async fn create_customer_gateway(
        &self,
        cgw: &CustomerGateway,
        token: Option<&ClientToken>,
    ) -> Result<()> {
        let (id, doc, token) = (cgw.id.clone(), to_json(cgw)?, token.cloned());
        self.call(move |tx| {
            claim_token(tx, token.as_ref(), &id)?;
            exec(
                tx,
                "INSERT INTO customer_gateways (id, doc) VALUES (?1, ?2)",
                params![id, doc],
            )?;
            Ok(())
        })
        .await
    }

    async fn customer_gateway(&self, id: &str) -> Result<CustomerGateway> {
        let id = id.to_string();
        self.call(move |tx| {
            let doc = doc_of(tx, "customer_gateways", &id)?
                .ok_or_else(|| not_found("customer gateway", &id))?;
            load_customer_gateway(tx, &doc)
        })
        .await
    }

    async fn list_customer_gateways(&self, q: &ListQuery) -> Result<Page<CustomerGateway>> {
        let q = q.clone();
        self.call(move |tx| list(tx, "customer_gateways", &q, load_customer_gateway))
            .await
    }

    async fn update_customer_gateway(&self, cgw: &CustomerGateway) -> Result<()> {
        let (id, doc) = (cgw.id.clone(), to_json(cgw)?);
        self.call(move |tx| {
            let n = exec(
                tx,
                "UPDATE customer_gateways SET doc = ?2 WHERE id = ?1",
                params![id, doc],
            )?;
            if n == 0 {
                return Err(not_found("customer gateway", &id));
            }
            Ok(())
        })
        .await
    }

    async fn delete_customer_gateway(&self, id: &str) -> Result<()> {
        let id = id.to_string();
        self.call(move |tx| {
            let doc = doc_of(tx, "customer_gateways", &id)?
                .ok_or_else(|| not_found("customer gateway", &id))?;
            let cgw = load_customer_gateway(tx, &doc)?;
            if cgw.tunnel_count > 0 {
                return Err(StoreError::Conflict(format!(
                    "customer gateway {id} is used by {} tunnel(s): delete their connections first",
                    cgw.tunnel_count
                )));
            }
            exec(tx, "DELETE FROM customer_gateways WHERE id = ?1", [&id])?;
            Ok(())
        })
        .await
    }

    async fn create_connection(
        &self,
        c: &VpnConnection,
        token: Option<&ClientToken>,
    ) -> Result<()> {
        let (c, token) = (c.clone(), token.cloned());
        self.call(move |tx| {
            gateway_in(tx, &c.vpn_gateway_id)?;
            check_tunnel_cidrs(tx, &c)?;
            claim_token(tx, token.as_ref(), &c.id)?;
            exec(
                tx,
                "INSERT INTO vpn_connections (id, vpn_gateway_id, doc) VALUES (?1, ?2, ?3)",
                params![c.id, c.vpn_gateway_id, connection_doc(&c)?],
            )?;
            for (i, t) in c.tunnels.iter().enumerate() {
                let exists = doc_of(tx, "customer_gateways", &t.customer_gateway_id)?.is_some();
                if !exists {
                    return Err(StoreError::Conflict(format!(
                        "customer gateway {} of tunnel {} does not exist",
                        t.customer_gateway_id, t.id
                    )));
                }
                exec(
                    tx,
                    "INSERT INTO tunnels (id, connection_id, idx, vpn_gateway_id,
                         customer_gateway_id, bgp_tunnel_cidr, psk, doc, status)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    params![
                        t.id,
                        c.id,
                        i as i64,
                        c.vpn_gateway_id,
                        t.customer_gateway_id,
                        t.bgp.map(|b| b.tunnel_cidr.to_string()),
                        t.pre_shared_key.expose(),
                        tunnel_doc(t)?,
                        to_json(&t.status)?,
                    ],
                )?;
            }
            Ok(())
        })
        .await
    }

    async fn connection(&self, id: &str) -> Result<VpnConnection> {
        let id = id.to_string();
        self.call(move |tx| connection_in(tx, &id)).await
    }

    async fn list_connections(&self, q: &ListQuery) -> Result<Page<VpnConnection>> {
        let q = q.clone();
        self.call(move |tx| list(tx, "vpn_connections", &q, load_connection))
            .await
    }

    async fn unsettled_connections(&self) -> Result<Vec<VpnConnection>> {
        self.call(move |tx| {
            // Both filters are on indexed expressions (migration 5): the cost follows
            // the few unsettled connections, not all of them.
            let mut stmt = tx.prepare_cached(UNSETTLED)?;
            let docs = stmt
                .query_map([], |r| r.get::<_, String>(1))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            docs.iter().map(|d| load_connection(tx, d)).collect()
        })
        .await
    }

    async fn gateway_connections(&self, gateway_id: &str) -> Result<Vec<VpnConnection>> {
        let gateway_id = gateway_id.to_string();
        self.call(move |tx| {
            let mut stmt = tx.prepare_cached(
                "SELECT doc FROM vpn_connections WHERE vpn_gateway_id = ?1 ORDER BY seq",
            )?;
            let docs = stmt
                .query_map([&gateway_id], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            docs.iter().map(|d| load_connection(tx, d)).collect()
        })
        .await
    }

    async fn tunnel_connection(&self, tunnel_id: &str) -> Result<VpnConnection> {
        let tunnel_id = tunnel_id.to_string();
        self.call(move |tx| {
            let cid: Option<String> = tx
                .query_row(
                    "SELECT connection_id FROM tunnels WHERE id = ?1",
                    [&tunnel_id],
                    |r| r.get(0),
                )
                .optional()?;
            let cid = cid.ok_or_else(|| not_found("tunnel", &tunnel_id))?;
            connection_in(tx, &cid)
        })
        .await
    }

    async fn update_connection(&self, c: &VpnConnection) -> Result<()> {
        let c = c.clone();
        self.call(move |tx| {
            let old = connection_in(tx, &c.id)?;
            if old.tunnels.len() != c.tunnels.len() {
                return Err(StoreError::Conflict(
                    "the number of tunnels of a connection cannot change".into(),
                ));
            }
            check_tunnel_cidrs(tx, &c)?;
            exec(
                tx,
                "UPDATE vpn_connections SET doc = ?2 WHERE id = ?1",
                params![c.id, connection_doc(&c)?],
            )?;
            for (i, t) in c.tunnels.iter().enumerate() {
                let n = exec(
                    tx,
                    "UPDATE tunnels SET bgp_tunnel_cidr = ?3, psk = ?4, doc = ?5
                     WHERE id = ?1 AND connection_id = ?2 AND idx = ?6",
                    params![
                        t.id,
                        c.id,
                        t.bgp.map(|b| b.tunnel_cidr.to_string()),
                        t.pre_shared_key.expose(),
                        tunnel_doc(t)?,
                        i as i64,
                    ],
                )?;
                if n == 0 {
                    return Err(StoreError::Conflict(format!(
                        "tunnel {} is not tunnel {} of connection {}",
                        t.id,
                        i + 1,
                        c.id
                    )));
                }
            }
            Ok(())
        })
        .await
    }

    async fn set_connection_status(&self, id: &str, status: ConnectionStatus) -> Result<()> {
        let id = id.to_string();
        self.call(move |tx| {
            let mut c = connection_in(tx, &id)?;
            c.status = status;
            exec(
                tx,
                "UPDATE vpn_connections SET doc = ?2 WHERE id = ?1",
                params![id, connection_doc(&c)?],
            )?;
            Ok(())
        })
        .await
    }

    async fn set_tunnel_state(&self, tunnel_id: &str, state: TunnelState) -> Result<()> {
        let tunnel_id = tunnel_id.to_string();
        self.call(move |tx| {
            let doc: Option<String> = tx
                .query_row("SELECT doc FROM tunnels WHERE id = ?1", [&tunnel_id], |r| {
                    r.get(0)
                })
                .optional()?;
            let mut t: Tunnel = from_json(&doc.ok_or_else(|| not_found("tunnel", &tunnel_id))?)?;
            t.state = state;
            exec(
                tx,
                "UPDATE tunnels SET doc = ?2 WHERE id = ?1",
                params![tunnel_id, tunnel_doc(&t)?],
            )?;
            Ok(())
        })
        .await
    }

    async fn set_tunnel_status(&self, tunnel_id: &str, status: &TunnelStatus) -> Result<()> {
        let w = ObservedRow::status(tunnel_id, status)?;
        self.call(move |tx| w.apply(tx)).await
    }

    async fn end_observed_state(&self, reason: &str, at: DateTime<Utc>) -> Result<usize> {
        let ended = TunnelStatus {
            reason: Some(reason.to_string()),
            since: Some(at),
            ..TunnelStatus::default()
        };
        let (status, routes) = (to_json(&ended)?, to_json(&BgpRoutes::default())?);
        self.call(move |tx| {
            let mut stmt = tx.prepare("SELECT id, status, bgp_routes FROM tunnels")?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })?;
            let mut changed = Vec::new();
            for row in rows {
                let (id, old, old_routes) = row?;
                let old: TunnelStatus = from_json(&old)?;
                let plain_idle = TunnelStatus {
                    since: None,
                    ..old.clone()
                } == TunnelStatus::default();
                if !plain_idle || from_json::<BgpRoutes>(&old_routes)? != BgpRoutes::default() {
                    changed.push(id);
                }
            }
            for id in &changed {
                exec(
                    tx,
                    "UPDATE tunnels SET status = ?2, bgp_routes = ?3 WHERE id = ?1",
                    params![id, status, routes],
                )?;
            }
            Ok(changed.len())
        })
        .await
    }

    async fn set_tunnel_bgp_routes(&self, tunnel_id: &str, routes: &BgpRoutes) -> Result<()> {
        let (tunnel_id, routes) = (tunnel_id.to_string(), to_json(routes)?);
        self.call(move |tx| {
            let n = exec(
                tx,
                "UPDATE tunnels SET bgp_routes = ?2 WHERE id = ?1",
                params![tunnel_id, routes],
            )?;
            if n == 0 {
                return Err(not_found("tunnel", &tunnel_id));
            }
            Ok(())
        })
        .await
    }

    async fn connection_bgp_routes(&self, id: &str) -> Result<Vec<(String, BgpRoutes)>> {
        let id = id.to_string();
        self.call(move |tx| {
            connection_in(tx, &id)?;
            let mut stmt = tx.prepare_cached(
                "SELECT id, bgp_routes FROM tunnels WHERE connection_id = ?1 ORDER BY idx",
            )?;
            let rows = stmt.query_map([&id], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (tunnel_id, routes) = row?;
                out.push((tunnel_id, from_json(&routes)?));
            }
            Ok(out)
        })
        .await
    }

    async fn delete_connection(&self, id: &str) -> Result<()> {
        let id = id.to_string();
        self.call(move |tx| {
            connection_in(tx, &id)?;
            let mut stmt =
                tx.prepare_cached("SELECT id FROM routes WHERE next_hop = ?1 ORDER BY seq")?;
            let routes = stmt
                .query_map([&id], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            if !routes.is_empty() {
                return Err(StoreError::Conflict(format!(
                    "connection {id} is the next hop of route(s) {}: delete them first",
                    routes.join(", ")
                )));
            }
            exec(
                tx,
                "DELETE FROM connection_logs WHERE connection_id = ?1",
                [&id],
            )?;
            exec(
                tx,
                "DELETE FROM connection_log_counts WHERE connection_id = ?1",
                [&id],
            )?;
            exec(tx, "DELETE FROM tunnels WHERE connection_id = ?1", [&id])?;
            exec(tx, "DELETE FROM vpn_connections WHERE id = ?1", [&id])?;
            Ok(())
        })
        .await
    }

    async fn create_route(&self, r: &Route, token: Option<&ClientToken>) -> Result<()> {
        let (r, doc, token) = (r.clone(), to_json(r)?, token.cloned());
        self.call(move |tx| {
            let key = format!("{}|{}", r.destination, r.next_hop);
            insert_route(
                tx,
                &r.id,
                "route",
                &r.vpn_gateway_id,
                &r.next_hop,
                &key,
                &doc,
                token.as_ref(),
            )
        })
        .await
    }

    async fn route(&self, gateway_id: &str, id: &str) -> Result<Route> {
        let (g, id) = (gateway_id.to_string(), id.to_string());
        self.call(move |tx| route_row(tx, &g, "route", &id)).await
    }

    async fn routes(&self, gateway_id: &str) -> Result<Vec<Route>> {
        let g = gateway_id.to_string();
        self.call(move |tx| route_rows(tx, &g, "route")).await
    }

    async fn delete_route(&self, gateway_id: &str, id: &str) -> Result<()> {
        let (g, id) = (gateway_id.to_string(), id.to_string());
        self.call(move |tx| delete_route_row(tx, &g, "route", &id))
            .await
    }

    async fn create_policy_route(
        &self,
        r: &PolicyRoute,
        token: Option<&ClientToken>,
    ) -> Result<()> {
        let (r, doc, token) = (r.clone(), to_json(r)?, token.cloned());
        self.call(move |tx| {
            let key = format!("{}|{}|{}", r.source, r.destination, r.next_hop);
            insert_route(
                tx,
                &r.id,
                "policy",
                &r.vpn_gateway_id,
                &r.next_hop,
                &key,
                &doc,
                token.as_ref(),
            )
        })
        .await
    }

    async fn policy_route(&self, gateway_id: &str, id: &str) -> Result<PolicyRoute> {
        let (g, id) = (gateway_id.to_string(), id.to_string());
        self.call(move |tx| route_row(tx, &g, "policy", &id)).await
    }

    async fn policy_routes(&self, gateway_id: &str) -> Result<Vec<PolicyRoute>> {
        let g = gateway_id.to_string();
        self.call(move |tx| route_rows(tx, &g, "policy")).await
    }

    async fn delete_policy_route(&self, gateway_id: &str, id: &str) -> Result<()> {
        let (g, id) = (gateway_id.to_string(), id.to_string());
        self.call(move |tx| delete_route_row(tx, &g, "policy", &id))
            .await
    }

    async fn append_log(&self, connection_id: &str, entry: &LogEntry) -> Result<()> {
        let w = ObservedRow::log(connection_id, entry)?;
        self.call(move |tx| w.apply(tx)).await
    }

    async fn record_observed(&self, batch: &[Observed]) -> Vec<Result<()>> {
        let mut rows = Vec::with_capacity(batch.len());
        let mut out: Vec<Result<()>> = Vec::with_capacity(batch.len());
        for o in batch {
            let row = match o {
                Observed::TunnelStatus { tunnel_id, status } => {
                    ObservedRow::status(tunnel_id, status)
                }
                Observed::Log {
                    connection_id,
                    entry,
                } => ObservedRow::log(connection_id, entry),
            };
            match row {
                Ok(r) => {
                    rows.push((out.len(), r));
                    out.push(Ok(()));
                }
                Err(e) => out.push(Err(e)),
            }
        }
        let applied = self
            .call(move |tx| {
                // A savepoint per row: one that fails changes nothing, the others stay.
                let mut results = Vec::with_capacity(rows.len());
                for (i, row) in rows {
                    exec(tx, "SAVEPOINT observed", [])?;
                    let r = row.apply(tx);
                    if r.is_err() {
                        exec(tx, "ROLLBACK TO observed", [])?;
                    }
                    exec(tx, "RELEASE observed", [])?;
                    results.push((i, r));
                }
                Ok(results)
            })
            .await;
        match applied {
            Ok(results) => {
                for (i, r) in results {
                    if let Some(slot) = out.get_mut(i) {
                        *slot = r;
                    }
                }
            }
            Err(e) => {
                // The transaction failed as a whole (database gone, disk full): none
                // of the rows is stored.
                let msg = e.to_string();
                for slot in out.iter_mut().filter(|r| r.is_ok()) {
                    *slot = Err(StoreError::Backend(msg.clone()));
                }
            }
        }
        out
    }

    async fn tunnel_event_counts(&self) -> Result<Vec<EventCount>> {
        self.call(|tx| {
            let mut stmt = tx.prepare_cached(
                "SELECT t.connection_id, e.tunnel_id, e.event, e.count
                 FROM tunnel_event_counts e JOIN tunnels t ON t.id = e.tunnel_id
                 ORDER BY t.connection_id, t.idx, e.event",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(EventCount {
                    connection_id: r.get(0)?,
                    tunnel_id: r.get(1)?,
                    event: r.get(2)?,
                    count: u64::try_from(r.get::<_, i64>(3)?).unwrap_or(0),
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn logs(
        &self,
        connection_id: &str,
        since: Option<DateTime<Utc>>,
        limit: usize,
    ) -> Result<Vec<LogEntry>> {
        let cid = connection_id.to_string();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.call(move |tx| {
            connection_in(tx, &cid)?;
            let docs: Vec<String> = match since {
                Some(since) => {
                    let mut stmt = tx.prepare_cached(
                        "SELECT doc FROM connection_logs WHERE connection_id = ?1 AND at >= ?2
                         ORDER BY seq LIMIT ?3",
                    )?;
                    stmt.query_map(params![cid, ts(&since), limit], |r| r.get(0))?
                        .collect::<rusqlite::Result<_>>()?
                }
                None => {
                    let mut stmt = tx.prepare_cached(
                        "SELECT doc FROM connection_logs WHERE connection_id = ?1
                         ORDER BY seq DESC LIMIT ?2",
                    )?;
                    let mut d: Vec<String> = stmt
                        .query_map(params![cid, limit], |r| r.get(0))?
                        .collect::<rusqlite::Result<_>>()?;
                    d.reverse();
                    d
                }
            };
            docs.iter().map(|d| from_json(d)).collect()
        })
        .await
    }

    async fn client_token(
        &self,
        scope: &str,
        token: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<ClientTokenRecord>> {
        let (scope, token) = (scope.to_string(), token.to_string());
        self.call(move |tx| find_token(tx, &scope, &token, now))
            .await
    }

    async fn purge_client_tokens(&self, now: DateTime<Utc>) -> Result<usize> {
        self.call(move |tx| {
            Ok(exec(
                tx,
                "DELETE FROM client_tokens WHERE created_at < ?1",
                [token_cutoff(now)],
            )?)
        })
        .await
    }

    async fn counts(&self) -> Result<Counts> {
        self.call(|tx| {
            Ok(Counts {
                vpn_gateways: count(tx, "SELECT COUNT(*) FROM vpn_gateways")?,
                customer_gateways: count(tx, "SELECT COUNT(*) FROM customer_gateways")?,
                vpn_connections: count(tx, "SELECT COUNT(*) FROM vpn_connections")?,
                tunnels: count(tx, "SELECT COUNT(*) FROM tunnels")?,
                routes: count(tx, "SELECT COUNT(*) FROM routes WHERE kind = 'route'")?,
                policy_routes: count(tx, "SELECT COUNT(*) FROM routes WHERE kind = 'policy'")?,
            })
        })
        .await
    }
}

/// A [`Observed`] ready for SQL (serialised outside the database lock).
enum ObservedRow {
    Status {
        tunnel_id: String,
        status: String,
    },
    Log {
        cid: String,
        at: String,
        doc: String,
        tunnel_id: Option<String>,
        event: String,
    },
}

impl ObservedRow {
    fn status(tunnel_id: &str, status: &TunnelStatus) -> Result<Self> {
        Ok(ObservedRow::Status {
            tunnel_id: tunnel_id.to_string(),
            status: to_json(status)?,
        })
    }

    fn log(connection_id: &str, entry: &LogEntry) -> Result<Self> {
        Ok(ObservedRow::Log {
            cid: connection_id.to_string(),
            at: ts(&entry.at),
            doc: to_json(entry)?,
            tunnel_id: entry.tunnel_id.clone(),
            event: entry.event.clone(),
        })
    }

    fn apply(&self, tx: &Connection) -> Result<()> {
        match self {
            ObservedRow::Status { tunnel_id, status } => {
                let n = exec(
                    tx,
                    "UPDATE tunnels SET status = ?2 WHERE id = ?1",
                    params![tunnel_id, status],
                )?;
                if n == 0 {
                    return Err(not_found("tunnel", tunnel_id));
                }
                Ok(())
            }
            ObservedRow::Log {
                cid,
                at,
                doc,
                tunnel_id,
                event,
            } => append_log_in(tx, cid, at, doc, tunnel_id.as_deref(), event),
        }
    }
}

fn append_log_in(
    tx: &Connection,
    cid: &str,
    at: &str,
    doc: &str,
    tunnel_id: Option<&str>,
    event: &str,
) -> Result<()> {
    // Existence only: loading the connection deserialised it and its tunnels
    // for every log entry.
    doc_of(tx, "vpn_connections", cid)?.ok_or_else(|| not_found("VPN connection", cid))?;
    exec(
        tx,
        "INSERT INTO connection_logs (connection_id, at, doc) VALUES (?1, ?2, ?3)",
        params![cid, at, doc],
    )?;
    let n: i64 = tx
        .prepare_cached(
            "INSERT INTO connection_log_counts (connection_id, n) VALUES (?1, 1)
             ON CONFLICT (connection_id) DO UPDATE SET n = n + 1 RETURNING n",
        )?
        .query_row([cid], |r| r.get(0))?;
    if n > MAX_LOGS_PER_CONNECTION {
        // The oldest rows, found from the start of the connection's index range.
        exec(
            tx,
            "DELETE FROM connection_logs WHERE seq IN (
                 SELECT seq FROM connection_logs WHERE connection_id = ?1
                 ORDER BY seq LIMIT ?2)",
            params![cid, n - MAX_LOGS_PER_CONNECTION],
        )?;
        exec(
            tx,
            "UPDATE connection_log_counts SET n = ?2 WHERE connection_id = ?1",
            params![cid, MAX_LOGS_PER_CONNECTION],
        )?;
    }
    if let Some(tunnel_id) = &tunnel_id {
        // Only for a tunnel of this connection; any other tunnel ID is ignored.
        exec(
            tx,
            "INSERT INTO tunnel_event_counts (tunnel_id, event, count)
             SELECT id, ?2, 1 FROM tunnels WHERE id = ?1 AND connection_id = ?3
             ON CONFLICT (tunnel_id, event) DO UPDATE SET count = count + 1",
            params![tunnel_id, event, cid],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsettled_connections_query_uses_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path()).unwrap();
        let conn = s.conn.lock().unwrap();
        let mut stmt = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {UNSETTLED}"))
            .unwrap();
        let plan: Vec<String> = stmt
            .query_map([], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        // A SCAN of either table is O(rows) per call: once per create (issue 8).
        assert!(plan.iter().all(|p| !p.starts_with("SCAN")), "{plan:#?}");
        assert!(
            plan.iter()
                .any(|p| p.contains("USING INDEX vpn_connections_status")),
            "{plan:#?}"
        );
        assert!(
            plan.iter().any(|p| p.contains("USING INDEX tunnels_state")),
            "{plan:#?}"
        );
    }

    /// A gateway, a customer gateway and connections `vco-1`, `vco-2` as raw rows.
    const TWO_CONNECTIONS: &str = "INSERT INTO vpn_gateways (id, doc) VALUES ('vpn-1', '{}');
         INSERT INTO customer_gateways (id, doc) VALUES ('cgw-1', '{}');
         INSERT INTO vpn_connections (id, vpn_gateway_id, doc) VALUES ('vco-1', 'vpn-1', '{}');
         INSERT INTO vpn_connections (id, vpn_gateway_id, doc) VALUES ('vco-2', 'vpn-1', '{}');";

    fn append(c: &Connection, cid: &str, range: std::ops::Range<i64>) {
        for i in range {
            append_log_in(c, cid, "t", &format!("{{\"i\":{i}}}"), None, "e").unwrap();
        }
    }

    /// (rows, oldest row's number, newest row's number, the stored count) of `cid`.
    fn kept(c: &Connection, cid: &str) -> (i64, i64, i64, i64) {
        let (rows, lo, hi): (i64, i64, i64) = c
            .query_row(
                "SELECT count(*), min(json_extract(doc, '$.i')), max(json_extract(doc, '$.i'))
                 FROM connection_logs WHERE connection_id = ?1",
                [cid],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        let n = c
            .query_row(
                "SELECT n FROM connection_log_counts WHERE connection_id = ?1",
                [cid],
                |r| r.get(0),
            )
            .unwrap();
        (rows, lo, hi, n)
    }

    #[test]
    fn a_connection_keeps_its_newest_log_rows_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs.db");
        let max = MAX_LOGS_PER_CONNECTION;
        {
            let s = SqliteStore::open_file(&path).unwrap();
            let mut c = s.conn.lock().unwrap();
            let tx = c.transaction().unwrap();
            tx.execute_batch(TWO_CONNECTIONS).unwrap();
            append(&tx, "vco-1", 0..max + 3);
            append(&tx, "vco-2", 0..5);
            tx.commit().unwrap();
            assert_eq!(kept(&c, "vco-1"), (max, 3, max + 2, max));
            assert_eq!(kept(&c, "vco-2"), (5, 0, 4, 5));
        }
        // Reopened, the count is where it was: one more row drops one more.
        let s = SqliteStore::open_file(&path).unwrap();
        let c = s.conn.lock().unwrap();
        append(&c, "vco-1", max + 3..max + 4);
        assert_eq!(kept(&c, "vco-1"), (max, 4, max + 3, max));
        assert_eq!(kept(&c, "vco-2"), (5, 0, 4, 5));
    }

    #[test]
    fn version_5_logs_get_their_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v5.db");
        {
            let c = Connection::open(&path).unwrap();
            for m in &MIGRATIONS[..5] {
                c.execute_batch(m).unwrap();
            }
            c.execute_batch(
                "CREATE TABLE schema_version (version INTEGER NOT NULL);
                 INSERT INTO schema_version (version) VALUES (5);",
            )
            .unwrap();
            c.execute_batch(TWO_CONNECTIONS).unwrap();
            for i in 0..3 {
                c.execute(
                    "INSERT INTO connection_logs (connection_id, at, doc) VALUES ('vco-1', 't', ?1)",
                    [format!("{{\"i\":{i}}}")],
                )
                .unwrap();
            }
        }
        let s = SqliteStore::open_file(&path).unwrap();
        let c = s.conn.lock().unwrap();
        assert_eq!(current_version(&c).unwrap(), MIGRATIONS.len());
        assert_eq!(kept(&c, "vco-1"), (3, 0, 2, 3));
        append(&c, "vco-1", 3..4);
        assert_eq!(kept(&c, "vco-1"), (4, 0, 3, 4));
    }

    #[test]
    fn migrates_a_version_1_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(MIGRATIONS[0]).unwrap();
            c.execute_batch(
                "CREATE TABLE schema_version (version INTEGER NOT NULL);
                 INSERT INTO schema_version (version) VALUES (1);",
            )
            .unwrap();
        }
        let s = SqliteStore::open_file(&path).unwrap();
        let conn = s.conn.lock().unwrap();
        assert_eq!(current_version(&conn).unwrap(), MIGRATIONS.len());
        let n: i64 = conn
            .query_row("SELECT COUNT(*) FROM tunnel_event_counts", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0);
    }

    #[test]
    fn version_2_tunnels_keep_their_data_and_get_no_bgp_routes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v2.db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(MIGRATIONS[0]).unwrap();
            c.execute_batch(MIGRATIONS[1]).unwrap();
            c.execute_batch(
                "CREATE TABLE schema_version (version INTEGER NOT NULL);
                 INSERT INTO schema_version (version) VALUES (2);
                 INSERT INTO vpn_gateways (id, doc) VALUES ('vpn-1', '{}');
                 INSERT INTO customer_gateways (id, doc) VALUES ('cgw-1', '{}');
                 INSERT INTO vpn_connections (id, vpn_gateway_id, doc) VALUES ('vco-1', 'vpn-1', '{}');
                 INSERT INTO tunnels (id, connection_id, idx, vpn_gateway_id,
                     customer_gateway_id, psk, doc, status)
                 VALUES ('tun-1', 'vco-1', 0, 'vpn-1', 'cgw-1', 'k', '{\"d\":1}', '{\"s\":2}');",
            )
            .unwrap();
        }
        let s = SqliteStore::open_file(&path).unwrap();
        let conn = s.conn.lock().unwrap();
        assert_eq!(current_version(&conn).unwrap(), MIGRATIONS.len());
        let row: (String, String, String) = conn
            .query_row(
                "SELECT doc, status, bgp_routes FROM tunnels WHERE id = 'tun-1'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(row, (r#"{"d":1}"#.into(), r#"{"s":2}"#.into(), "{}".into()));
    }

    /// A version-3 file holding a BGP connection stored before the BGP options existed:
    /// after migration 4 its document has them (off) and everything else is unchanged.
    #[test]
    fn version_3_connections_get_the_bgp_options_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v3.db");
        let old_doc = r#"{"id":"vco-1","name":"c","enable_bgp":true,"local_asn":65000}"#;
        let kept = r#"{"id":"vco-2","bgp_ecmp":true}"#;
        {
            let c = Connection::open(&path).unwrap();
            for m in &MIGRATIONS[..3] {
                c.execute_batch(m).unwrap();
            }
            c.execute_batch(
                "CREATE TABLE schema_version (version INTEGER NOT NULL);
                 INSERT INTO schema_version (version) VALUES (3);
                 INSERT INTO vpn_gateways (id, doc) VALUES ('vpn-1', '{}');",
            )
            .unwrap();
            c.execute(
                "INSERT INTO vpn_connections (id, vpn_gateway_id, doc)
                 VALUES ('vco-1', 'vpn-1', ?1), ('vco-2', 'vpn-1', ?2)",
                [old_doc, kept],
            )
            .unwrap();
        }
        let s = SqliteStore::open_file(&path).unwrap();
        let conn = s.conn.lock().unwrap();
        assert_eq!(current_version(&conn).unwrap(), MIGRATIONS.len());
        let doc = |id: &str| -> serde_json::Value {
            let d: String = conn
                .query_row("SELECT doc FROM vpn_connections WHERE id = ?1", [id], |r| {
                    r.get(0)
                })
                .unwrap();
            serde_json::from_str(&d).unwrap()
        };
        assert_eq!(
            doc("vco-1"),
            serde_json::json!({"id": "vco-1", "name": "c", "enable_bgp": true,
                "local_asn": 65000, "bgp_ecmp": false, "bgp_advertise_learned": false,
                "bgp_override_static": false})
        );
        // A value already there is never overwritten.
        assert_eq!(doc("vco-2")["bgp_ecmp"], true);
    }
}
