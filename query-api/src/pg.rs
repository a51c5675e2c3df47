//! `strata serve --pg-listen ADDR`: the Postgres wire protocol over the query service, for
//! psql, DBeaver, Metabase, Grafana's PostgreSQL data source and psycopg.
//!
//! ```text
//! client --TCP/TLS--> pgwire (startup, simple and extended protocols, cancel requests)
//!   startup: cleartext password = a token whose name is the user and that holds `sql`
//!   statement: Postgres-only SQL rewritten (datafusion-pg-catalog) -> session statements
//!              (BEGIN, COMMIT, SET, SHOW) answered here -> the rest through
//!              AppState::start_query (gate, slot, deadline, memory, row cap, cache, metrics)
//!   rows: Arrow batches -> Postgres rows (arrow-pg), text or binary as the client asks
//! ```
//!
//! Built on `pgwire` directly rather than `datafusion-postgres`: that server runs statements
//! on one shared session itself (DDL and DML allowed, `SET` shared by every connection, rows
//! streamed past its timeout), where every Strata surface must run them through the one query
//! service. Its pieces that fit are used: `arrow-pg` for rows and parameters and
//! `datafusion-pg-catalog` for `pg_catalog` (see `strata_engine::pg`) and the rewrite of the SQL
//! clients send.

use std::collections::HashMap;
use std::fmt::Debug;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::datatypes::{DataType, SchemaRef};
use async_trait::async_trait;
use datafusion::common::ParamValues;
use datafusion::sql::sqlparser::ast::{Set, Statement as Sql};
use datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use futures::{stream, Sink, SinkExt, StreamExt};
use parking_lot::Mutex;
use pgwire::api::auth::{
    finish_authentication, protocol_negotiation, save_startup_parameters_to_metadata,
    DefaultServerParameterProvider, StartupHandler,
};
use pgwire::api::cancel::CancelHandler;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{DataRowEncoder, FieldFormat, FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{
    ClientInfo, ClientPortalStore, PgWireConnectionState, PgWireServerHandlers,
    PidSecretKeyGenerator, RandomPidSecretKeyGenerator, Type, METADATA_USER,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::cancel::CancelRequest;
use pgwire::messages::data::DataRow;
use pgwire::messages::startup::{Authentication, SecretKey};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use pgwire::types::format::FormatOptions;
use strata_engine::{pg as pgcat, EngineError};
use tokio::net::TcpListener;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, warn};

use crate::auth::Scope;
use crate::error::ApiError;
use crate::metrics::Surface;
use crate::query::Statement;
use crate::AppState;

/// Where the Postgres surface listens, and its TLS certificate.
#[derive(Debug, Clone)]
pub struct PgOptions {
    pub listen: String,
    pub tls: Option<TlsFiles>,
}

/// A PEM certificate chain and its private key.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Why the Postgres surface could not start.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("cannot listen on {listen} for Postgres clients; choose another --pg-listen")]
    Listen {
        listen: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "--pg-listen {0} is not a loopback address: clients send their token as the password, so \
         give a TLS certificate and key (--pg-tls-cert, --pg-tls-key) or listen on 127.0.0.1"
    )]
    NeedsTls(String),
    #[error("the Postgres TLS certificate or key: {0}")]
    Tls(String),
}

/// The bound Postgres listener, ready to [`serve`](PgServer::serve).
pub struct PgServer {
    pub addr: SocketAddr,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    handlers: Arc<PgHandlers>,
    connections: Arc<Semaphore>,
}

impl PgServer {
    /// Binds the listener and loads the certificate. A listener on an address other than
    /// loopback needs TLS: the password is a token.
    pub async fn bind(state: AppState, options: &PgOptions) -> Result<Self, PgError> {
        let listener =
            TcpListener::bind(&options.listen)
                .await
                .map_err(|source| PgError::Listen {
                    listen: options.listen.clone(),
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| PgError::Listen {
            listen: options.listen.clone(),
            source,
        })?;
        let tls = match &options.tls {
            Some(files) => Some(tls_acceptor(files)?),
            None if addr.ip().is_loopback() => None,
            None => return Err(PgError::NeedsTls(options.listen.clone())),
        };
        let connections = Arc::new(Semaphore::new(state.limits.http.max_connections.max(1)));
        let mut params = DefaultServerParameterProvider::default();
        params.server_version = pgcat::SERVER_VERSION.to_string();
        params.default_transaction_read_only = true;
        let surface = Arc::new(PgSurface {
            state: state.clone(),
            parser: Arc::new(StrataParser {
                pg: PostgresCompatibilityParser::new(),
                state: state.clone(),
            }),
            queries: Arc::default(),
        });
        let handlers = Arc::new(PgHandlers {
            startup: Arc::new(TokenStartup {
                state,
                params,
                pids: RandomPidSecretKeyGenerator::default(),
                tls: tls.is_some(),
                queries: surface.queries.clone(),
            }),
            surface,
        });
        Ok(Self {
            addr,
            listener,
            tls,
            handlers,
            connections,
        })
    }

    /// Serves connections until `shutdown` turns true. Connections past the server's limit
    /// are closed at once.
    pub async fn serve(self, mut shutdown: watch::Receiver<bool>) {
        info!(addr = %self.addr, tls = self.tls.is_some(), "serving the Postgres wire protocol");
        loop {
            let (socket, peer) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        warn!(error = %e, "accepting a Postgres connection failed");
                        continue;
                    }
                },
                _ = shutdown.changed() => return,
            };
            let Ok(permit) = self.connections.clone().try_acquire_owned() else {
                warn!(peer = %peer.ip(), "Postgres connection refused: the server is at its connection limit");
                continue;
            };
            let _ = socket.set_nodelay(true);
            let handlers = self.handlers.clone();
            let tls = self.tls.clone();
            tokio::spawn(async move {
                let _permit: OwnedSemaphorePermit = permit;
                if let Err(e) = pgwire::tokio::process_socket(socket, tls, handlers).await {
                    debug!(error = %e, "Postgres connection ended with an error");
                }
            });
        }
    }
}

fn tls_acceptor(files: &TlsFiles) -> Result<tokio_rustls::TlsAcceptor, PgError> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| PgError::Tls(format!("{}: {e}", files.cert.display())))?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| PgError::Tls(format!("{}: {e}", files.key.display())))?;
    // This process links both of rustls' providers; name one rather than rely on a default.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PgError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| PgError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// A Postgres error with its SQLSTATE.
fn pg_error(code: &str, message: impl Into<String>) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".into(),
        code.into(),
        message.into(),
    )))
}

fn fatal(code: &str, message: impl Into<String>) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "FATAL".into(),
        code.into(),
        message.into(),
    )))
}

/// The SQLSTATE of an answer the query service refused or failed with.
pub(crate) fn sqlstate(e: &ApiError) -> &'static str {
    match e {
        ApiError::Unauthenticated(_) => "28P01",
        ApiError::Forbidden(_) => "42501",
        ApiError::RateLimited { .. } | ApiError::Overloaded { .. } => "53300",
        ApiError::BadRequest {
            code: "cancelled", ..
        } => "57014",
        ApiError::BadRequest { .. } => "22023",
        ApiError::NotFound(_) => "42P01",
        ApiError::Conflict { .. } => "55000",
        ApiError::Timeout(_) => "57014",
        ApiError::TooLarge(_) => "53200",
        ApiError::PayloadTooLarge(_) => "54000",
        ApiError::Engine(e) => match e {
            // A write, DDL or a second statement: what Postgres says in a read-only
            // transaction.
            EngineError::Refused(_) => "25006",
            EngineError::Sql(m) if m.contains("not found") && m.contains("table") => "42P01",
            EngineError::Sql(m) if m.contains("No field named") => "42703",
            EngineError::Sql(_) => "42601",
            EngineError::Param(_) => "22023",
            EngineError::NotFound(_) => "42P01",
            EngineError::Limit(_) => "54000",
            EngineError::Query(_) => "22000",
            _ => "XX000",
        },
        ApiError::Internal(_) => "XX000",
    }
}

fn from_api(e: ApiError) -> PgWireError {
    let code = sqlstate(&e);
    let message = match &e {
        ApiError::Engine(inner) => inner.to_string(),
        ApiError::Timeout(m) => format!("canceling statement due to statement timeout: {m}"),
        ApiError::Internal(_) => "internal error; the server log has the details".into(),
        other => other.message(),
    };
    pg_error(code, message)
}

/// Checks the token a client sends as its password: it must exist, be named as the user, and
/// hold the `sql` scope. Failures spend the client address' budget, as on HTTP.
struct TokenStartup {
    state: AppState,
    params: DefaultServerParameterProvider,
    pids: RandomPidSecretKeyGenerator,
    /// Whether the listener has TLS: then only loopback clients may log in without it.
    tls: bool,
    queries: Arc<Queries>,
}

#[async_trait]
impl StartupHandler for TokenStartup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                if self.tls && !client.is_secure() && !client.socket_addr().ip().is_loopback() {
                    return Err(fatal(
                        "28000",
                        "connect with TLS (sslmode=require): the password is a token",
                    ));
                }
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                client
                    .send(PgWireBackendMessage::Authentication(
                        Authentication::CleartextPassword,
                    ))
                    .await?;
            }
            PgWireFrontendMessage::PasswordMessageFamily(pwd) => {
                let pwd = pwd.into_password()?;
                let user = client
                    .metadata()
                    .get(METADATA_USER)
                    .cloned()
                    .unwrap_or_default();
                let peer = client.socket_addr().ip();
                let caller = match self
                    .state
                    .auth
                    .authenticate(Some(&format!("Bearer {}", pwd.password)))
                {
                    Ok(caller) if caller.name == user => caller,
                    Ok(_) | Err(ApiError::Unauthenticated(_)) => {
                        if self.state.peers.take(Some(peer)).is_err() {
                            return Err(fatal(
                                "53300",
                                "too many failed logins from this address; wait and retry",
                            ));
                        }
                        info!(peer = %peer, "Postgres login refused: wrong user or token");
                        return Err(PgWireError::InvalidPassword(user));
                    }
                    Err(e) => return Err(fatal(sqlstate(&e), e.message())),
                };
                if let Err(e) = caller.require(Scope::Sql) {
                    return Err(fatal("42501", e.message()));
                }
                let (pid, key) = self.pids.generate(&*client);
                client.set_pid_and_secret_key(pid, key.clone());
                client.session_extensions().insert(ConnectionEntry::new(
                    self.queries.clone(),
                    pid,
                    key,
                ));
                client
                    .session_extensions()
                    .insert(LoggedIn(caller.name.clone()));
                finish_authentication(client, &self.params).await?;
                info!(token = %caller.name, "Postgres client logged in");
            }
            _ => {}
        }
        Ok(())
    }
}

/// The name of the token a connection logged in with: each statement takes one request from
/// its bucket, as each HTTP request does.
struct LoggedIn(String);

/// The query each connection runs now, by its backend pid, for cancel requests.
#[derive(Default)]
struct Queries {
    by_pid: Mutex<HashMap<i32, (SecretKey, Option<String>)>>,
}

/// A connection's entry in [`Queries`], removed when the connection (its session extensions)
/// goes.
struct ConnectionEntry {
    queries: Arc<Queries>,
    pid: i32,
}

impl ConnectionEntry {
    fn new(queries: Arc<Queries>, pid: i32, key: SecretKey) -> Self {
        queries.by_pid.lock().insert(pid, (key, None));
        Self { queries, pid }
    }
}

impl Drop for ConnectionEntry {
    fn drop(&mut self) {
        self.queries.by_pid.lock().remove(&self.pid);
    }
}

/// A statement as parsed at Parse (extended protocol) or per Query message.
#[derive(Clone, Debug)]
pub enum PgStatement {
    /// BEGIN, COMMIT, ROLLBACK, SET, SHOW, DISCARD, DEALLOCATE: answered by the surface; a
    /// read-only service has no transactions to keep, and settings stay with the connection.
    Session(Arc<Sql>),
    /// Everything else runs through the query service; planned at Parse for Describe.
    Query {
        sql: String,
        schema: SchemaRef,
        params: Vec<Option<DataType>>,
    },
}

fn is_session(s: &Sql) -> bool {
    match s {
        Sql::ShowVariable { variable } => !is_show_tables(variable),
        Sql::StartTransaction { .. }
        | Sql::Commit { .. }
        | Sql::Rollback { .. }
        | Sql::Set(_)
        | Sql::Discard { .. }
        | Sql::Deallocate { .. } => true,
        _ => false,
    }
}

/// `SHOW TABLES` parses as a variable in the Postgres dialect; it is DataFusion's statement.
fn is_show_tables(variable: &[datafusion::sql::sqlparser::ast::Ident]) -> bool {
    variable.len() == 1 && variable[0].value.eq_ignore_ascii_case("tables")
}

fn show_variable_name(s: &Sql) -> Option<String> {
    match s {
        Sql::ShowVariable { variable } => Some(
            variable
                .iter()
                .map(|i| i.value.to_ascii_lowercase())
                .collect::<Vec<_>>()
                .join(" "),
        ),
        _ => None,
    }
}

fn text_fields(name: &str) -> Arc<Vec<FieldInfo>> {
    Arc::new(vec![FieldInfo::new(
        name.into(),
        None,
        None,
        Type::TEXT,
        FieldFormat::Text,
    )])
}

fn one_text_row(name: &str, value: &str) -> PgWireResult<QueryResponse> {
    let fields = text_fields(name);
    let mut encoder = DataRowEncoder::new(fields.clone());
    encoder.encode_field(&Some(value))?;
    let row = encoder.take_row();
    Ok(QueryResponse::new(fields, stream::iter(vec![Ok(row)])))
}

/// The answer to a session statement.
fn session_response<C: ClientInfo>(client: &mut C, s: &Sql) -> PgWireResult<Response> {
    Ok(match s {
        Sql::StartTransaction { .. } => Response::TransactionStart(Tag::new("BEGIN")),
        Sql::Commit { .. } => Response::TransactionEnd(Tag::new("COMMIT")),
        Sql::Rollback { .. } => Response::TransactionEnd(Tag::new("ROLLBACK")),
        Sql::Set(Set::SingleAssignment {
            variable, values, ..
        }) => {
            let name = variable.to_string().to_ascii_lowercase();
            let value = values
                .iter()
                .map(|v| v.to_string().trim_matches('\'').to_string())
                .collect::<Vec<_>>()
                .join(", ");
            client.metadata_mut().insert(name, value);
            Response::Execution(Tag::new("SET"))
        }
        Sql::Set(_) => Response::Execution(Tag::new("SET")),
        Sql::Discard { .. } => Response::Execution(Tag::new("DISCARD ALL")),
        Sql::Deallocate { .. } => Response::Execution(Tag::new("DEALLOCATE")),
        Sql::ShowVariable { .. } => {
            let name = show_variable_name(s).unwrap_or_default();
            let value = match client.metadata().get(&name) {
                Some(v) => v.clone(),
                None => match pgcat::setting(&name) {
                    Some(v) => v.to_string(),
                    None if name == "all" => {
                        return Err(pg_error("0A000", "SHOW ALL is not supported; SHOW a name"))
                    }
                    None => {
                        return Err(pg_error(
                            "42704",
                            format!("unrecognized configuration parameter \"{name}\""),
                        ))
                    }
                },
            };
            Response::Query(one_text_row(&name, &value)?)
        }
        other => {
            return Err(pg_error(
                "0A000",
                format!("`{other}` is not supported here"),
            ))
        }
    })
}

/// Parses what clients send: Postgres' dialect, rewritten for DataFusion (`OPERATOR(pg_catalog.~)`,
/// `::regclass`, `pg_catalog.` function prefixes, ...).
pub struct StrataParser {
    pg: PostgresCompatibilityParser,
    state: AppState,
}

impl StrataParser {
    fn parse(&self, sql: &str) -> PgWireResult<Vec<Sql>> {
        strata_engine::check_size(sql).map_err(|e| pg_error("54000", e.to_string()))?;
        self.pg
            .parse(sql)
            .map_err(|e| pg_error("42601", e.to_string()))
    }
}

#[async_trait]
impl QueryParser for StrataParser {
    type Statement = PgStatement;

    async fn parse_sql<C>(
        &self,
        _client: &C,
        sql: &str,
        _types: &[Option<Type>],
    ) -> PgWireResult<Option<PgStatement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let mut statements = self.parse(sql)?;
        match statements.len() {
            // A comment only (Grafana's `-- ping`): an empty query.
            0 => return Ok(None),
            1 => {}
            _ => {
                return Err(pg_error(
                    "42601",
                    "cannot insert multiple commands into a prepared statement",
                ))
            }
        }
        let s = statements.remove(0);
        if is_session(&s) {
            return Ok(Some(PgStatement::Session(Arc::new(s))));
        }
        let sql = s.to_string();
        let described = self.state.describe_query(&sql).await.map_err(from_api)?;
        Ok(Some(PgStatement::Query {
            sql,
            schema: described.schema,
            params: described.params,
        }))
    }

    fn get_parameter_types(&self, stmt: &PgStatement) -> PgWireResult<Vec<Type>> {
        match stmt {
            PgStatement::Query { params, .. } => params
                .iter()
                .map(|t| {
                    t.as_ref()
                        .map_or(Ok(Type::UNKNOWN), arrow_pg::datatypes::into_pg_type)
                })
                .collect(),
            PgStatement::Session(_) => Ok(vec![]),
        }
    }

    fn get_result_schema(
        &self,
        stmt: &PgStatement,
        column_format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        match stmt {
            PgStatement::Query { schema, .. } => arrow_pg::datatypes::arrow_schema_to_pg_fields(
                schema.as_ref(),
                column_format.unwrap_or(&Format::UnifiedText),
                None,
            ),
            PgStatement::Session(s) => match show_variable_name(s) {
                Some(name) => Ok(text_fields(&name).as_ref().clone()),
                None => Ok(vec![]),
            },
        }
    }
}

/// The simple and extended query handlers and the cancel handler.
struct PgSurface {
    state: AppState,
    parser: Arc<StrataParser>,
    queries: Arc<Queries>,
}

impl PgSurface {
    /// Runs one statement through the query service and turns its rows into Postgres rows.
    async fn run<C: ClientInfo>(
        &self,
        client: &C,
        sql: String,
        params: Option<ParamValues>,
        format: &Format,
    ) -> PgWireResult<QueryResponse> {
        if let Some(who) = client.session_extensions().get::<LoggedIn>() {
            if let Err(e) = self.state.auth.take(&who.0) {
                return Err(from_api(e));
            }
        }
        let mut statement = Statement::new(sql, Surface::Postgres);
        statement.params = params;
        let (pid, _) = client.pid_and_secret_key();
        if let Some(entry) = self.queries.by_pid.lock().get_mut(&pid) {
            entry.1 = Some(statement.query_id.clone());
        }
        let started = match self.state.start_query(statement).await {
            Ok(s) => s,
            Err(e) => {
                self.state
                    .metrics
                    .count_error(Surface::Postgres.label(), e.code());
                return Err(from_api(e));
            }
        };
        let options = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
        let fields = Arc::new(arrow_pg::datatypes::arrow_schema_to_pg_fields(
            started.schema.as_ref(),
            format,
            Some(options),
        )?);
        let row_fields = fields.clone();
        let rows = started
            .rows
            .map(move |batch| {
                let rows: Box<dyn Iterator<Item = PgWireResult<DataRow>> + Send + Sync> =
                    match batch {
                        Ok(b) => arrow_pg::encode_recordbatch(row_fields.clone(), b),
                        Err(e) => Box::new(std::iter::once(Err(from_api(e)))),
                    };
                stream::iter(rows)
            })
            .flatten();
        Ok(QueryResponse::new(fields, rows))
    }
}

#[async_trait]
impl SimpleQueryHandler for PgSurface {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let statements = self.parser.parse(query)?;
        if statements.is_empty() {
            return Ok(vec![Response::EmptyQuery]);
        }
        // Responses are gathered before any row is sent, so one message runs one query (each
        // would hold its slot while the next waits for one).
        if statements.iter().filter(|s| !is_session(s)).count() > 1 {
            return Err(pg_error(
                "0A000",
                "send one query per message (BEGIN, SET and SHOW may go with it)",
            ));
        }
        let mut out = Vec::with_capacity(statements.len());
        for s in &statements {
            if is_session(s) {
                out.push(session_response(client, s)?);
            } else {
                let response = self
                    .run(&*client, s.to_string(), None, &Format::UnifiedText)
                    .await?;
                out.push(Response::Query(response));
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl ExtendedQueryHandler for PgSurface {
    type Statement = PgStatement;
    type QueryParser = StrataParser;

    fn query_parser(&self) -> Arc<StrataParser> {
        self.parser.clone()
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<PgStatement>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = PgStatement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match &portal.statement.statement {
            PgStatement::Session(s) => session_response(client, s),
            PgStatement::Query { sql, params, .. } => {
                // A null whose type neither the client nor the plan tells is a text null, so
                // that it keeps its place among the values.
                let hints: Vec<Option<&DataType>> = (0..portal.parameter_len())
                    .map(|i| match params.get(i).and_then(Option::as_ref) {
                        Some(t) => Some(t),
                        None if portal.parameters[i].is_none() => Some(&DataType::Utf8),
                        None => None,
                    })
                    .collect();
                let params = if portal.parameter_len() > 0 {
                    Some(arrow_pg::datatypes::df::deserialize_parameters(
                        portal, &hints,
                    )?)
                } else {
                    None
                };
                let response = self
                    .run(&*client, sql.clone(), params, &portal.result_column_format)
                    .await?;
                Ok(Response::Query(response))
            }
        }
    }
}

#[async_trait]
impl CancelHandler for PgSurface {
    async fn on_cancel_request(&self, request: CancelRequest) {
        let query = {
            let by_pid = self.queries.by_pid.lock();
            by_pid
                .get(&request.pid)
                .filter(|(key, _)| key.eq_value(&request.secret_key))
                .and_then(|(_, q)| q.clone())
        };
        if let Some(id) = query {
            if self.state.running.cancel(&id) {
                info!(query_id = %id, "query cancelled by a Postgres cancel request");
            }
        }
    }
}

struct PgHandlers {
    surface: Arc<PgSurface>,
    startup: Arc<TokenStartup>,
}

impl PgWireServerHandlers for PgHandlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.surface.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.surface.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.startup.clone()
    }

    fn cancel_handler(&self) -> Arc<impl CancelHandler> {
        self.surface.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_carry_the_sqlstate_postgres_clients_expect() {
        let refused = ApiError::Engine(EngineError::Refused("`DELETE FROM` is not allowed".into()));
        assert_eq!(sqlstate(&refused), "25006");
        assert_eq!(sqlstate(&ApiError::Timeout("late".into())), "57014");
        assert_eq!(
            sqlstate(&ApiError::bad_request(
                "cancelled",
                "the query was cancelled"
            )),
            "57014"
        );
        assert_eq!(sqlstate(&ApiError::Forbidden("no".into())), "42501");
    }

    #[test]
    fn session_statements_are_told_from_queries() {
        let parser = PostgresCompatibilityParser::new();
        let kinds: Vec<bool> = [
            "BEGIN",
            "SET application_name = 'x'",
            "SHOW server_version",
            "SHOW TABLES",
            "SELECT 1",
            "DELETE FROM link_clicks",
        ]
        .iter()
        .map(|s| is_session(&parser.parse(s).unwrap()[0]))
        .collect();
        assert_eq!(kinds, vec![true, true, true, false, false, false]);
        assert!(parser.parse("-- ping").unwrap().is_empty());
    }
}
