//! Analysts' surfaces end to end (issue 15): `strata serve --pg-listen --flight-listen` over a
//! seeded root, with real clients: Debian's `psql`, Python's `psycopg`, a replay of what
//! Grafana's PostgreSQL data source sends, and ADBC's Flight SQL driver. The values are
//! checked against the `deltalake` package reading the same tables (scripts/pg_clients.py,
//! scripts/flight_client.py).
//!
//! ```text
//! psql / psycopg / Grafana replay --Postgres wire--> strata serve --+
//! adbc_driver_flightsql --------------gRPC--------> strata serve --+--> the query service
//! deltalake (Python) reads the same Delta tables: the expected values
//! ```

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

use super::server::{client, seeded_test_root, tokens, TestServer, Tokens};
use super::support::{python_ok, python_script, wait_for};

const EVENTS: u64 = 3000;

/// The server with both analysts' surfaces, and their addresses from its log.
struct Surfaces {
    server: TestServer,
    pg_port: String,
    flight_uri: String,
}

fn start(root: &Path, tokens: &Tokens, extra: &[&str]) -> Surfaces {
    let mut args = vec![
        "--pg-listen",
        "127.0.0.1:0",
        "--flight-listen",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    let server = TestServer::start(root, tokens, &args);
    let (mut pg, mut flight) = (String::new(), String::new());
    wait_for("the analysts' surfaces", Duration::from_secs(30), || {
        let log = server.logs();
        if let Some(rest) = log.split("Postgres wire protocol on ").nth(1) {
            pg = rest.split_whitespace().next().unwrap_or("").to_string();
        }
        if let Some(rest) = log.split("Arrow Flight SQL on ").nth(1) {
            flight = rest.split_whitespace().next().unwrap_or("").to_string();
        }
        !pg.is_empty() && !flight.is_empty()
    });
    Surfaces {
        pg_port: pg.rsplit(':').next().unwrap().to_string(),
        flight_uri: flight,
        server,
    }
}

fn psql_bin() -> String {
    std::env::var("STRATA_PSQL_BIN").unwrap_or_else(|_| "psql".into())
}

/// `psql -c <command>` as `user` with password `token`: exit status, stdout, stderr.
fn psql(s: &Surfaces, user: &str, token: &str, command: &str) -> (bool, String, String) {
    let out: Output = Command::new(psql_bin())
        .arg(format!(
            "host=127.0.0.1 port={} user={user} dbname=strata sslmode=disable connect_timeout=10",
            s.pg_port
        ))
        .args([
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-v",
            "VERBOSITY=verbose",
        ])
        .args(["-c", command])
        .env("PGPASSWORD", token)
        .env_remove("PGSERVICE")
        .output()
        .expect("running psql (scripts/test.sh installs it)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn psql_ok(s: &Surfaces, user: &str, token: &str, command: &str) -> String {
    let (ok, out, err) = psql(s, user, token, command);
    assert!(ok, "psql -c {command:?} failed: {err}");
    out
}

/// `scripts/pg_clients.py CHECK`: its JSON summary (the script asserts).
fn pg_clients(s: &Surfaces, check: &str, user: &str, token: &str, root: &Path) -> Value {
    let out = python_ok(
        python_script("pg_clients.py").args([
            check,
            "127.0.0.1",
            &s.pg_port,
            user,
            token,
            root.to_str().unwrap(),
        ]),
        &format!("pg_clients.py {check}"),
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `scripts/flight_client.py CHECK ...`: its JSON summary.
fn flight_client(s: &Surfaces, args: &[&str], token: &str) -> Value {
    let mut cmd = python_script("flight_client.py");
    cmd.arg(args[0])
        .arg(&s.flight_uri)
        .arg(token)
        .args(&args[1..]);
    let out = python_ok(&mut cmd, &format!("flight_client.py {}", args[0]));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The server still answers over HTTP and both surfaces after what a test threw at it.
async fn assert_healthy(s: &Surfaces, tokens: &Tokens) {
    let c = client();
    let resp = c.get(s.server.url("/healthz")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        psql_ok(s, "analyst", &tokens.sql, "SELECT 40 + 2").trim(),
        "42"
    );
}

/// The count of `table` over SQL over HTTP, the surface the others must agree with.
async fn http_count(s: &Surfaces, tokens: &Tokens, table: &str) -> u64 {
    let c = client();
    let (status, body) = s
        .server
        .post_json(
            &c,
            "/v1/sql",
            &tokens.sql,
            format!("SELECT count(*) AS n FROM {table}"),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body[0]["n"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn psql_psycopg_and_grafana_read_the_tables_and_writes_are_refused() {
    let (_dir, root) = seeded_test_root(EVENTS);
    let tokens = tokens();
    let s = start(&root, &tokens, &[]);

    // psql: the table list and a table's columns, from pg_catalog.
    let tables = psql_ok(&s, "analyst", &tokens.sql, r"\dt");
    for t in [
        "link_clicks",
        "ai_usage",
        "ai_usage_daily",
        "click_stats_daily",
    ] {
        assert!(
            tables.lines().any(|l| l.split('|').nth(1) == Some(t)),
            "\\dt lacks {t}:\n{tables}"
        );
    }
    let columns = psql_ok(&s, "analyst", &tokens.sql, r"\d link_clicks");
    for (column, ty) in [
        ("event_date", "date"),
        ("country", "text"),
        ("is_bot", "boolean"),
        ("ingested_at", "timestamp with time zone"),
        ("kafka_offset", "bigint"),
    ] {
        assert!(
            columns
                .lines()
                .any(|l| l.starts_with(&format!("{column}|{ty}|"))),
            "\\d link_clicks lacks {column} {ty}:\n{columns}"
        );
    }

    // A query: the same count as SQL over HTTP.
    let want = http_count(&s, &tokens, "link_clicks").await;
    assert!(want > 0, "the root holds clicks");
    let got = psql_ok(
        &s,
        "analyst",
        &tokens.sql,
        "SELECT count(*) FROM link_clicks",
    );
    assert_eq!(got.trim().parse::<u64>().unwrap(), want);

    // Writes, DDL and file access are refused with a Postgres error, not a dropped connection.
    for write in [
        "DELETE FROM link_clicks",
        "INSERT INTO link_clicks (country) VALUES ('x')",
        "DROP TABLE link_clicks",
        "CREATE TABLE t (x int)",
        "COPY link_clicks TO '/tmp/out.csv'",
        "CREATE EXTERNAL TABLE e STORED AS CSV LOCATION '/etc/passwd'",
    ] {
        let (ok, _, err) = psql(&s, "analyst", &tokens.sql, write);
        assert!(!ok, "`{write}` was not refused");
        assert!(
            err.contains("ERROR:  25006") || err.contains("ERROR:  42601"),
            "`{write}`: not a read-only refusal: {err}"
        );
        assert!(!err.contains("server closed the connection"), "{err}");
    }
    let (ok, _, err) = psql(&s, "analyst", &tokens.sql, "DELETE FROM link_clicks");
    assert!(!ok && err.contains("25006"), "{err}");
    assert_eq!(
        http_count(&s, &tokens, "link_clicks").await,
        want,
        "nothing was deleted"
    );

    // Login: the token's name is the user, the token the password, and it needs `sql`.
    // (psql shows no SQLSTATE for a failed connection: the messages are checked.)
    let refused = |err: &str| {
        err.to_lowercase()
            .contains("password authentication failed")
    };
    let (ok, _, err) = psql(&s, "analyst", "not-a-token", "SELECT 1");
    assert!(!ok && refused(&err), "wrong password: {err}");
    let (ok, _, err) = psql(&s, "admin", &tokens.sql, "SELECT 1");
    assert!(!ok && refused(&err), "a token under another name: {err}");
    let (ok, _, err) = psql(&s, "dash", &tokens.panels, "SELECT 1");
    assert!(
        !ok && err.contains("FATAL") && err.contains("`sql` scope"),
        "a token without `sql`: {err}"
    );

    // psycopg: the type of every column, values against the deltalake reader, parameters.
    let types = pg_clients(&s, "types", "analyst", &tokens.sql, &root);
    assert_eq!(types["link_clicks"]["rows"].as_u64(), Some(want));

    // Grafana's PostgreSQL data source, replayed.
    let grafana = pg_clients(&s, "grafana", "analyst", &tokens.sql, &root);
    assert!(grafana["statements"].as_u64().unwrap() >= 6, "{grafana}");

    // A cancel request stops a long query.
    let cancel = pg_clients(&s, "cancel", "analyst", &tokens.sql, &root);
    assert_eq!(cancel["sqlstate"], "57014", "{cancel}");

    assert_healthy(&s, &tokens).await;
    let metrics = s.server.metrics(&client()).await;
    assert!(
        metrics.contains("strata_query_duration_seconds_count{panel=\"\",surface=\"postgres\"}"),
        "queries over Postgres are measured by surface"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn adbc_reads_flight_sql_into_arrow_and_refusals_are_flight_errors() {
    let (_dir, root) = seeded_test_root(EVENTS);
    let tokens = tokens();
    let s = start(&root, &tokens, &[]);

    let read = flight_client(&s, &["read", root.to_str().unwrap()], &tokens.sql);
    assert_eq!(
        read["link_clicks"].as_u64().unwrap(),
        http_count(&s, &tokens, "link_clicks").await
    );

    let wrong = flight_client(&s, &["denied", "SELECT 1"], "not-a-token");
    assert!(
        wrong["message"]
            .as_str()
            .unwrap()
            .contains("nauthenticated"),
        "{wrong}"
    );
    let scope = flight_client(&s, &["denied", "SELECT 1"], &tokens.panels);
    assert!(
        scope["message"].as_str().unwrap().contains("sql"),
        "a token without `sql`: {scope}"
    );
    let write = flight_client(&s, &["denied", "DELETE FROM link_clicks"], &tokens.sql);
    assert!(
        write["message"].as_str().unwrap().contains("not allowed"),
        "{write}"
    );

    assert_healthy(&s, &tokens).await;
    let metrics = s.server.metrics(&client()).await;
    assert!(
        metrics.contains("surface=\"flight\""),
        "queries over Flight SQL are measured by surface"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_query_past_the_timeout_fails_on_both_surfaces_and_the_server_stays_up() {
    let (_dir, root) = seeded_test_root(500);
    let tokens = tokens();
    let s = start(&root, &tokens, &["--query-timeout-secs", "2"]);

    let pg = pg_clients(&s, "timeout", "analyst", &tokens.sql, &root);
    assert_eq!(pg["sqlstate"], "57014", "{pg}");
    let flight = flight_client(&s, &["timeout"], &tokens.sql);
    assert!(
        flight["message"].as_str().unwrap().contains("limit"),
        "{flight}"
    );
    assert_healthy(&s, &tokens).await;
}

/// A self-signed certificate and key for `localhost`, made with Python's `cryptography` (moto
/// depends on it, so the suite's venv has it).
fn self_signed(dir: &Path) -> (String, String) {
    let (cert, key) = (dir.join("pg.crt"), dir.join("pg.key"));
    let script = r#"
import datetime, sys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
key = ec.generate_private_key(ec.SECP256R1())
name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
now = datetime.datetime.now(datetime.timezone.utc)
cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256()))
open(sys.argv[1], "wb").write(cert.public_bytes(serialization.Encoding.PEM))
open(sys.argv[2], "wb").write(key.private_bytes(serialization.Encoding.PEM,
    serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
"#;
    python_ok(
        Command::new(super::support::python())
            .args(["-c", script])
            .arg(&cert)
            .arg(&key),
        "making a certificate",
    );
    (
        cert.to_str().unwrap().to_string(),
        key.to_str().unwrap().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_off_loopback_needs_tls_and_serves_tls_clients() {
    let (dir, root) = seeded_test_root(200);
    let tokens = tokens();

    // The password is a token: no plain-text listener on a routable address.
    let out = super::support::strata()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--pg-listen",
            "0.0.0.0:0",
        ])
        .args(["--storage-url", root.to_str().unwrap()])
        .env("STRATA_TOKENS", tokens.lines.join(","))
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "served Postgres off loopback without TLS"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--pg-tls-cert"), "{err}");

    let (cert, key) = self_signed(dir.path());
    let s = start(
        &root,
        &tokens,
        &["--pg-tls-cert", &cert, "--pg-tls-key", &key],
    );
    let out = Command::new(psql_bin())
        .arg(format!(
            "host=127.0.0.1 port={} user=analyst dbname=strata sslmode=require connect_timeout=10",
            s.pg_port
        ))
        .args([
            "-X",
            "-A",
            "-t",
            "-c",
            "SELECT count(*) > 0 FROM link_clicks",
        ])
        .env("PGPASSWORD", &tokens.sql)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "psql over TLS: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "t");
    assert_healthy(&s, &tokens).await;
}
