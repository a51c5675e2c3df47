//! Processes under test: the strata binary, a tansu broker, a moto S3 server.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

pub fn strata() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_strata"));
    c.env("STRATA_LOG", "warn,strata=info,strata_ingest=info,strata_engine=info,deltalake_core=off,deltalake=off,delta_kernel=off,buoyant_kernel=off");
    c.stdin(Stdio::null());
    c
}

pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("running strata");
    assert!(
        out.status.success(),
        "{:?} failed: {}\n{}",
        cmd,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

pub fn run_err(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("running strata");
    assert!(!out.status.success(), "{cmd:?} was expected to fail");
    out
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_port(port: u16, what: &str) {
    wait_for(what, Duration::from_secs(30), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
}

fn tool(env: &str, name: &str) -> PathBuf {
    if let Ok(p) = std::env::var(env) {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_default();
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(PathBuf::from)
        .chain([
            PathBuf::from(format!("{home}/.cargo/bin")),
            PathBuf::from(format!("{home}/.cache/strata/venv/bin")),
        ])
    {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("`{name}` not found: run the suite with `bash scripts/test.sh`, which installs it (or set {env})");
}

/// A child process killed on drop.
pub struct Proc {
    child: Option<Child>,
}

impl Proc {
    pub fn signal(&self, s: Signal) {
        if let Some(c) = &self.child {
            let _ = kill(Pid::from_raw(c.id() as i32), s);
        }
    }

    pub fn kill9(mut self) {
        self.signal(Signal::SIGKILL);
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }

    /// SIGTERM, then the exit status and stdout.
    pub fn stop(mut self) -> (std::process::ExitStatus, String) {
        self.signal(Signal::SIGTERM);
        let out = self
            .child
            .take()
            .expect("running")
            .wait_with_output()
            .unwrap();
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn spawn(cmd: &mut Command, name: &str, log: &Path) -> Proc {
    let file = std::fs::File::create(log).unwrap();
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {name}: {e}"));
    Proc { child: Some(child) }
}

/// A tansu broker with in-memory storage on a free port.
pub struct Tansu {
    pub brokers: String,
    _proc: Proc,
}

impl Tansu {
    pub fn start(dir: &Path) -> Self {
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let mut cmd = Command::new(tool("STRATA_TANSU_BIN", "tansu"));
        cmd.args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
            "--storage-engine",
            "memory://tansu/",
        ]);
        cmd.env("RUST_LOG", "warn");
        let proc = spawn(&mut cmd, "tansu", &dir.join("tansu.log"));
        wait_port(port, "tansu to listen");
        Tansu {
            brokers: format!("127.0.0.1:{port}"),
            _proc: proc,
        }
    }
}

/// moto's S3 server on a free port, with one bucket.
pub struct Moto {
    pub endpoint: String,
    _proc: Proc,
}

impl Moto {
    pub fn start(dir: &Path, bucket: &str) -> Self {
        let port = free_port();
        let mut cmd = Command::new(tool("STRATA_MOTO_BIN", "moto_server"));
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        let proc = spawn(&mut cmd, "moto", &dir.join("moto.log"));
        wait_port(port, "moto to listen");
        let endpoint = format!("http://127.0.0.1:{port}");
        let script = format!(
            "import boto3; boto3.client('s3', endpoint_url='{endpoint}', aws_access_key_id='test', aws_secret_access_key='test', region_name='us-east-1').create_bucket(Bucket='{bucket}')"
        );
        python_ok(
            Command::new(python()).args(["-c", &script]),
            "creating bucket",
        );
        Moto {
            endpoint,
            _proc: proc,
        }
    }

    pub fn storage_args(&self) -> Vec<String> {
        [
            format!("aws_endpoint={}", self.endpoint),
            "aws_allow_http=true".into(),
            "aws_access_key_id=test".into(),
            "aws_secret_access_key=test".into(),
            "aws_region=us-east-1".into(),
        ]
        .into_iter()
        .flat_map(|o| ["--storage-option".to_string(), o])
        .collect()
    }
}

pub fn python() -> PathBuf {
    tool("STRATA_PYTHON", "python3")
}

/// Runs a Python command; when it fails, so does the test, with `what` and Python's stderr.
pub fn python_ok(cmd: &mut Command, what: &str) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `scripts/<name>` under the suite's Python, ready for its arguments.
pub fn python_script(name: &str) -> Command {
    let mut cmd = Command::new(python());
    cmd.arg(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("scripts")
            .join(name),
    );
    cmd
}

/// The `--storage-url` flag for a local root.
pub fn local_storage(root: &Path) -> Vec<String> {
    vec![
        "--storage-url".to_string(),
        root.to_str().unwrap().to_string(),
    ]
}

/// Generates `events` into the broker (creating the topics) and returns the summary.
pub fn produce(brokers: &str, seed: u64, events: u64, partitions: i32) -> Value {
    let out = run_ok(strata().args([
        "gen",
        "--kafka",
        brokers,
        "--create-topics",
        "--partitions",
        &partitions.to_string(),
        "--seed",
        &seed.to_string(),
        "--events",
        &events.to_string(),
        "--end-date",
        "2026-11-01",
    ]));
    serde_json::from_str(out.trim().lines().last().unwrap()).unwrap()
}

/// Runs one query through `strata sql --format json` and returns the rows.
pub fn sql(storage: &[String], q: &str) -> Vec<Value> {
    let mut cmd = strata();
    cmd.arg("sql")
        .arg(q)
        .args(["--format", "json"])
        .args(storage);
    run_ok(&mut cmd)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The `n` of a query that answers one row with a count `n`.
pub fn count(storage: &[String], q: &str) -> u64 {
    int(&sql(storage, q)[0], "n")
}

pub fn int(v: &Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("{k} missing in {v}"))
}

/// Number of commits in a local table's log.
pub fn commits(root: &Path, table: &str) -> usize {
    std::fs::read_dir(root.join("tables").join(table).join("_delta_log"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                .count()
        })
        .unwrap_or(0)
}

/// A per-test directory; kept (and its path printed) when `STRATA_TEST_KEEP` is set, so the
/// logs of the processes under test can be read after a failure.
pub fn test_dir() -> tempfile::TempDir {
    let keep = std::env::var_os("STRATA_TEST_KEEP").is_some();
    let dir = tempfile::Builder::new()
        .prefix("strata-it-")
        .disable_cleanup(keep)
        .tempdir()
        .unwrap();
    if keep {
        eprintln!("test dir: {}", dir.path().display());
    }
    dir
}
