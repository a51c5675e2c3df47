//! `strata serve --flight-listen ADDR`: Arrow Flight SQL over the query service, for Python and
//! notebooks through ADBC (`adbc-driver-flightsql`), JDBC's Flight SQL driver and the like.
//!
//! ```text
//! client --gRPC (h2c)--> tonic: bearer token checked (interceptor: exists, holds `sql`)
//!   GetFlightInfo(statement | prepared) -> plan only (gate, schema) -> ticket carrying the statement
//!   DoGet(ticket) -> AppState::start_query (gate, slot, deadline, memory, row cap, cache, metrics)
//!                 -> Arrow batches streamed as Flight data; a client that cancels or hangs up
//!                    drops the stream, which stops the query
//!   CreatePreparedStatement / DoPut(parameters) / ClosePreparedStatement: handles in memory
//!   GetCatalogs, GetDbSchemas, GetTables, GetSqlInfo: from the catalog's current snapshot
//! ```
//!
//! Plain gRPC: put a TLS-terminating proxy in front, or listen on loopback.

// Errors here are gRPC statuses, by the protocol.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, CommandGetCatalogs, CommandGetDbSchemas,
    CommandGetSqlInfo, CommandGetTables, CommandPreparedStatementQuery, CommandStatementQuery,
    DoPutPreparedStatementResult, ProstMessageExt, SqlInfo, SqlSupportedTransaction,
    TicketStatementQuery,
};
use arrow_flight::{
    Action, FlightData, FlightDescriptor, FlightEndpoint, FlightInfo, IpcMessage, SchemaAsIpc,
    Ticket,
};
use bytes::Bytes;
use datafusion::common::{ParamValues, ScalarValue};
use futures::{Stream, StreamExt, TryStreamExt};
use parking_lot::Mutex;
use prost::Message;
use strata_engine::{pg as pgcat, EngineError};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::auth::Scope;
use crate::error::ApiError;
use crate::metrics::Surface;
use crate::query::Statement;
use crate::AppState;

/// Prepared statements one server keeps; past this many the oldest is forgotten (a client
/// that uses it again gets `not_found` and prepares it anew).
const MAX_PREPARED: usize = 10_000;

/// Why the Flight SQL surface could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {listen} for Flight SQL clients; choose another --flight-listen")]
pub struct FlightListenError {
    listen: String,
    #[source]
    source: std::io::Error,
}

/// The bound Flight SQL listener, ready to [`serve`](FlightServer::serve).
pub struct FlightServer {
    pub addr: SocketAddr,
    listener: TcpListener,
    service: FlightSql,
}

impl FlightServer {
    pub async fn bind(state: AppState, listen: &str) -> Result<Self, FlightListenError> {
        let err = |source| FlightListenError {
            listen: listen.to_string(),
            source,
        };
        let listener = TcpListener::bind(listen).await.map_err(err)?;
        let addr = listener.local_addr().map_err(err)?;
        Ok(Self {
            addr,
            listener,
            service: FlightSql {
                state,
                prepared: Arc::default(),
            },
        })
    }

    /// Serves until `shutdown` turns true.
    pub async fn serve(self, mut shutdown: watch::Receiver<bool>) {
        info!(addr = %self.addr, "serving Arrow Flight SQL");
        let state = self.service.state.clone();
        let check = move |req: Request<()>| -> Result<Request<()>, Status> {
            authorize(&state, &req)?;
            Ok(req)
        };
        let service = FlightServiceServer::new(self.service).max_decoding_message_size(16 << 20);
        let service = tonic::service::interceptor::InterceptedService::new(service, check);
        let incoming = TcpIncoming::from(self.listener).with_nodelay(Some(true));
        let result = tonic::transport::Server::builder()
            .concurrency_limit_per_connection(64)
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = shutdown.changed().await;
            })
            .await;
        if let Err(e) = result {
            warn!(error = %e, "the Flight SQL server stopped");
        }
    }
}

/// Checks the bearer token of a call: it must exist and hold the `sql` scope. Unknown tokens
/// spend the client address' budget, as on HTTP.
fn authorize(state: &AppState, req: &Request<()>) -> Result<(), Status> {
    let header = req
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    match state.auth.authenticate(header) {
        Ok(caller) => caller.require(Scope::Sql).map_err(to_status),
        Err(e @ ApiError::Unauthenticated(_)) => {
            let peer = req.remote_addr().map(|a| a.ip());
            match state.peers.take(peer) {
                Ok(()) => Err(to_status(e)),
                Err(limited) => Err(to_status(limited)),
            }
        }
        Err(e) => Err(to_status(e)),
    }
}

/// The gRPC status of an answer the query service refused or failed with.
pub(crate) fn to_status(e: ApiError) -> Status {
    let message = match &e {
        ApiError::Internal(_) => "internal error; the server log has the details".to_string(),
        other => other.message(),
    };
    match e {
        ApiError::Unauthenticated(_) => Status::unauthenticated(message),
        ApiError::Forbidden(_) => Status::permission_denied(message),
        ApiError::RateLimited { .. } | ApiError::Overloaded { .. } | ApiError::TooLarge(_) => {
            Status::resource_exhausted(message)
        }
        ApiError::BadRequest {
            code: "cancelled", ..
        } => Status::cancelled(message),
        ApiError::BadRequest { .. } | ApiError::PayloadTooLarge(_) => {
            Status::invalid_argument(message)
        }
        ApiError::NotFound(_) => Status::not_found(message),
        ApiError::Conflict { .. } => Status::failed_precondition(message),
        ApiError::Timeout(_) => Status::deadline_exceeded(message),
        ApiError::Engine(EngineError::Refused(_)) => Status::permission_denied(message),
        ApiError::Engine(EngineError::Limit(_)) => Status::resource_exhausted(message),
        ApiError::Engine(EngineError::NotFound(_)) => Status::not_found(message),
        ApiError::Engine(EngineError::Sql(_) | EngineError::Param(_) | EngineError::Query(_)) => {
            Status::invalid_argument(message)
        }
        ApiError::Engine(_) | ApiError::Internal(_) => Status::internal(message),
    }
}

type DoGetStream = Pin<Box<dyn Stream<Item = Result<FlightData, Status>> + Send + 'static>>;

/// A prepared statement: its text and the parameters last bound to it.
#[derive(Clone)]
struct Prepared {
    sql: String,
    params: Option<ParamValues>,
}

#[derive(Default)]
struct PreparedStore {
    by_handle: HashMap<Bytes, Prepared>,
    order: std::collections::VecDeque<Bytes>,
}

impl PreparedStore {
    fn insert(&mut self, handle: Bytes, p: Prepared) {
        if self.by_handle.len() >= MAX_PREPARED {
            while let Some(old) = self.order.pop_front() {
                if self.by_handle.remove(&old).is_some() {
                    break;
                }
            }
        }
        self.order.push_back(handle.clone());
        self.by_handle.insert(handle, p);
    }
}

#[derive(Clone)]
struct FlightSql {
    state: AppState,
    prepared: Arc<Mutex<PreparedStore>>,
}

/// What the server tells clients about itself.
static SQL_INFO: LazyLock<SqlInfoData> = LazyLock::new(|| {
    let mut b = SqlInfoDataBuilder::new();
    b.append(SqlInfo::FlightSqlServerName, "Strata");
    b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    b.append(SqlInfo::FlightSqlServerArrowVersion, "59");
    b.append(SqlInfo::FlightSqlServerReadOnly, true);
    b.append(SqlInfo::FlightSqlServerSql, true);
    b.append(SqlInfo::FlightSqlServerSubstrait, false);
    b.append(
        SqlInfo::FlightSqlServerTransaction,
        SqlSupportedTransaction::None as i32,
    );
    b.append(SqlInfo::FlightSqlServerCancel, true);
    b.append(SqlInfo::SqlDdlCatalog, false);
    b.append(SqlInfo::SqlDdlSchema, false);
    b.append(SqlInfo::SqlDdlTable, false);
    b.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
    b.build().expect("the SQL info is well-formed")
});

/// The schema the encoder sends for `schema` (dictionaries sent as their values), which the
/// flight info must announce: clients check that the two are equal.
fn wire_schema(schema: SchemaRef) -> SchemaRef {
    FlightDataEncoderBuilder::new()
        .with_schema(schema.clone())
        .build(futures::stream::empty())
        .known_schema()
        .unwrap_or(schema)
}

fn schema_bytes(schema: &Schema) -> Result<Bytes, Status> {
    let IpcMessage(bytes) = SchemaAsIpc::new(schema, &IpcWriteOptions::default())
        .try_into()
        .map_err(|e: arrow::error::ArrowError| Status::internal(e.to_string()))?;
    Ok(bytes)
}

fn info_for(
    schema: &Schema,
    ticket: Vec<u8>,
    descriptor: FlightDescriptor,
) -> Result<FlightInfo, Status> {
    FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| Status::internal(e.to_string()))
        .map(|info| {
            info.with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket)))
                .with_descriptor(descriptor)
        })
}

/// The flight info of a command whose DoGet ticket is the command itself (a prepared
/// statement, a catalog listing, the SQL info).
fn command_info(
    schema: &Schema,
    command: &impl ProstMessageExt,
    request: Request<FlightDescriptor>,
) -> Result<Response<FlightInfo>, Status> {
    info_for(
        schema,
        command.as_any().encode_to_vec(),
        request.into_inner(),
    )
    .map(Response::new)
}

/// One batch as a Flight stream, with its schema.
fn one_batch(schema: SchemaRef, batch: Result<RecordBatch, FlightError>) -> DoGetStream {
    Box::pin(
        FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(futures::stream::once(async move { batch }))
            .map_err(Status::from),
    )
}

impl FlightSql {
    /// Plans `sql` without running it: the schema its rows will have.
    async fn describe(&self, sql: &str) -> Result<SchemaRef, Status> {
        match self.state.describe_query(sql).await {
            Ok(d) => Ok(wire_schema(d.schema)),
            Err(e) => Err(self.failed(e)),
        }
    }

    fn failed(&self, e: ApiError) -> Status {
        self.state
            .metrics
            .count_error(Surface::Flight.label(), e.code());
        to_status(e)
    }

    /// Runs `sql` through the query service and streams its rows.
    async fn run(&self, sql: String, params: Option<ParamValues>) -> Result<DoGetStream, Status> {
        let mut statement = Statement::new(sql, Surface::Flight);
        statement.params = params;
        let started = self
            .state
            .start_query(statement)
            .await
            .map_err(|e| self.failed(e))?;
        let schema = started.schema.clone();
        let batches = started.rows.map(move |b| match b {
            Ok(batch) => conform(batch, &schema),
            Err(e) => Err(FlightError::Tonic(Box::new(to_status(e)))),
        });
        Ok(Box::pin(
            FlightDataEncoderBuilder::new()
                .with_schema(started.schema)
                .build(batches)
                .map_err(Status::from),
        ))
    }

    fn prepared(&self, handle: &Bytes) -> Result<Prepared, Status> {
        self.prepared
            .lock()
            .by_handle
            .get(handle)
            .cloned()
            .ok_or_else(|| {
                Status::not_found(
                    "no such prepared statement (closed, or forgotten); prepare it again",
                )
            })
    }
}

/// `batch` with the planned schema's column types, where the plan made an equivalent one
/// (a view string for a string): the stream's schema was sent first and must hold.
fn conform(batch: RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, FlightError> {
    if batch.schema().fields() == schema.fields() {
        return Ok(batch);
    }
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| {
            if c.data_type() == f.data_type() {
                Ok(c.clone())
            } else {
                arrow::compute::cast(c, f.data_type())
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// The values of the first row of `batch`, as `$1`, `$2`, ...
fn params_of(batch: &RecordBatch) -> Result<ParamValues, Status> {
    if batch.num_rows() == 0 {
        return Err(Status::invalid_argument("the parameter batch has no row"));
    }
    let values = batch
        .columns()
        .iter()
        .map(|c| ScalarValue::try_from_array(c, 0))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok(ParamValues::from(values))
}

/// The schema of a statement's parameters (`$1` first), for clients that bind by type.
fn parameter_schema(params: &[Option<DataType>]) -> Schema {
    Schema::new(
        params
            .iter()
            .enumerate()
            .map(|(i, t)| {
                Field::new(
                    format!("${}", i + 1),
                    t.clone().unwrap_or(DataType::Null),
                    true,
                )
            })
            .collect::<Vec<_>>(),
    )
}

#[tonic::async_trait]
impl FlightSqlService for FlightSql {
    type FlightService = FlightSql;

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = self.describe(&query.query).await?;
        let ticket = TicketStatementQuery {
            statement_handle: Bytes::from(query.query.into_bytes()),
        };
        let info = info_for(
            &schema,
            ticket.as_any().encode_to_vec(),
            request.into_inner(),
        )?;
        Ok(Response::new(info))
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let sql = String::from_utf8(ticket.statement_handle.to_vec())
            .map_err(|_| Status::invalid_argument("the ticket is not a statement"))?;
        Ok(Response::new(self.run(sql, None).await?))
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        _request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let described = self
            .state
            .describe_query(&query.query)
            .await
            .map_err(|e| self.failed(e))?;
        let handle = Bytes::from(uuid::Uuid::new_v4().to_string().into_bytes());
        let result = ActionCreatePreparedStatementResult {
            prepared_statement_handle: handle.clone(),
            dataset_schema: schema_bytes(&wire_schema(described.schema))?,
            parameter_schema: schema_bytes(&parameter_schema(&described.params))?,
        };
        self.prepared.lock().insert(
            handle,
            Prepared {
                sql: query.query,
                params: None,
            },
        );
        Ok(result)
    }

    async fn do_action_close_prepared_statement(
        &self,
        query: ActionClosePreparedStatementRequest,
        _request: Request<Action>,
    ) -> Result<(), Status> {
        self.prepared
            .lock()
            .by_handle
            .remove(&query.prepared_statement_handle);
        Ok(())
    }

    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let handle = query.prepared_statement_handle;
        self.prepared(&handle)?;
        let batches: Vec<RecordBatch> = FlightRecordBatchStream::new_from_flight_data(
            request.into_inner().map_err(FlightError::from),
        )
        .try_collect()
        .await
        .map_err(Status::from)?;
        let batch = batches
            .iter()
            .find(|b| b.num_rows() > 0)
            .ok_or_else(|| Status::invalid_argument("no parameter values were sent"))?;
        let params = params_of(batch)?;
        if let Some(p) = self.prepared.lock().by_handle.get_mut(&handle) {
            p.params = Some(params);
        }
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(handle),
        })
    }

    async fn get_flight_info_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let prepared = self.prepared(&query.prepared_statement_handle)?;
        let schema = self.describe(&prepared.sql).await?;
        command_info(&schema, &query, request)
    }

    async fn do_get_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let prepared = self.prepared(&query.prepared_statement_handle)?;
        Ok(Response::new(
            self.run(prepared.sql, prepared.params).await?,
        ))
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        command_info(&query.into_builder().schema(), &query, request)
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let mut builder = query.into_builder();
        builder.append(pgcat::CATALOG);
        let schema = builder.schema();
        Ok(Response::new(one_batch(schema, builder.build())))
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        command_info(&query.clone().into_builder().schema(), &query, request)
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let mut builder = query.into_builder();
        builder.append(pgcat::CATALOG, pgcat::SCHEMA);
        let schema = builder.schema();
        Ok(Response::new(one_batch(schema, builder.build())))
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        command_info(&query.clone().into_builder().schema(), &query, request)
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let snapshot = self
            .state
            .catalog
            .fresh_snapshot(self.state.limits.max_age)
            .await
            .map_err(|e| self.failed(ApiError::Engine(e)))?;
        let mut builder = query.into_builder();
        for (name, table) in &snapshot.tables {
            let schema = wire_schema(table.provider.schema());
            builder
                .append(pgcat::CATALOG, pgcat::SCHEMA, name, "TABLE", &schema)
                .map_err(Status::from)?;
        }
        let schema = builder.schema();
        Ok(Response::new(one_batch(schema, builder.build())))
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        command_info(
            &query.clone().into_builder(&SQL_INFO).schema(),
            &query,
            request,
        )
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let builder = query.into_builder(&SQL_INFO);
        let schema = builder.schema();
        Ok(Response::new(one_batch(schema, builder.build())))
    }

    async fn do_action_fallback(
        &self,
        request: Request<Action>,
    ) -> Result<Response<<Self as FlightService>::DoActionStream>, Status> {
        Err(Status::unimplemented(format!(
            "action `{}` is not supported: Strata is read-only",
            request.get_ref().r#type
        )))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}
