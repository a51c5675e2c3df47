#!/usr/bin/env bash
# The whole test suite of Strata: formatting, lints (in the test build), then every test of the
# workspace.
#
# Installs (once, into a cache) what the integration tests need:
#   - tansu, a Kafka-compatible broker written in Rust (each test starts its own broker);
#   - a Python venv with moto[server] (S3 emulation) and deltalake + pyarrow (to check that
#     the tables Strata writes are readable by another Delta implementation);
#   - Debian's chromium, headless, for the dashboard's browser test;
#   - Debian's psql, and psycopg and adbc-driver-flightsql in the venv, for the analysts'
#     surfaces (the Postgres wire protocol and Arrow Flight SQL);
#   - Debian's prometheus (prometheus and promtool): the shipped alert rules are checked with
#     promtool, and a test starts a real Prometheus that scrapes `strata serve`.
# It does not start any server: the tests spawn tansu and moto themselves, on free ports.
#
# Usage: scripts/test.sh [extra args for `cargo test --workspace`]
# Environment:
#   STRATA_CACHE_DIR   where the venv lives (default: $HOME/.cache/strata)
#   STRATA_TANSU_BIN   use this tansu binary instead of installing one
set -euo pipefail

cd "$(dirname "$0")/.."

# Never wait for input (CI runs with no stdin).
exec </dev/null

CACHE="${STRATA_CACHE_DIR:-$HOME/.cache/strata}"
VENV="$CACHE/venv"
mkdir -p "$CACHE"

export PATH="$HOME/.cargo/bin:$PATH"

section() {
    printf '\n==> %s\n' "$*"
}

# Installs Debian's packages with apt-get (as root, or through sudo without a prompt).
apt_install() {
    local sudo=""
    if [[ "$(id -u)" -ne 0 ]]; then sudo="sudo -n"; fi
    echo "installing Debian's $* with apt-get"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# The installs run in the background while the workspace builds (the build is the long pole:
# ~40 minutes on two cores; the installs are network-bound, except tansu's build, which runs at
# the lowest CPU priority and so mostly fills the cores the workspace build leaves idle in its
# serial stretches: linking, the largest crates' front ends). Each writes a log under
# $CACHE/logs, printed when it fails.
LOGS="$CACHE/logs"
mkdir -p "$LOGS"
declare -A INSTALL_PIDS=()
# An early stop (a lint, a failed build) ends the installs still running, and their children.
stop_installs() {
    local pid
    for pid in "${INSTALL_PIDS[@]}"; do
        pkill -TERM -P "$pid" 2>/dev/null || true
        kill "$pid" 2>/dev/null || true
    done
}
trap stop_installs EXIT

# Runs "$@" in the background as install $name, its output to $LOGS/$name.log.
background() {
    local name="$1"
    shift
    ("$@") >"$LOGS/$name.log" 2>&1 &
    INSTALL_PIDS[$name]=$!
    echo "started: $name (log: $LOGS/$name.log)"
}

# Waits for install $1; prints its log and fails the run when it failed.
await() {
    local name="$1"
    if wait "${INSTALL_PIDS[$name]}"; then
        echo "done: $name"
    else
        echo "error: installing $name failed; its log:" >&2
        cat "$LOGS/$name.log" >&2
        exit 1
    fi
}

# --- tansu -------------------------------------------------------------------------------
install_tansu() {
    echo "tansu not found: building it with cargo install (~11 minutes on an idle machine)"
    # Optimised lightly: the tests start small brokers, and opt-level 1 builds faster than
    # the release profile's 3 (the whole suite passes against such a build).
    CARGO_PROFILE_RELEASE_OPT_LEVEL=1 CARGO_PROFILE_RELEASE_DEBUG=0 \
        nice -n 19 cargo install tansu --locked --features dynostore
}
section "tansu"
if [[ -n "${STRATA_TANSU_BIN:-}" && -x "${STRATA_TANSU_BIN}" ]]; then
    echo "using STRATA_TANSU_BIN=${STRATA_TANSU_BIN}"
elif command -v tansu >/dev/null 2>&1 || [[ -x "$HOME/.cargo/bin/tansu" ]]; then
    echo "tansu already installed"
else
    background tansu install_tansu
fi

# --- python venv -------------------------------------------------------------------------
section "python venv ($VENV)"
venv_ready() {
    [[ -x "$VENV/bin/python3" ]] \
        && [[ -x "$VENV/bin/moto_server" ]] \
        && "$VENV/bin/python3" -c 'import deltalake, pyarrow, pyarrow.compute, psycopg, adbc_driver_flightsql.dbapi' >/dev/null 2>&1
}
install_venv() {
    if [[ ! -x "$VENV/bin/python3" ]]; then
        echo "creating venv with $(command -v python3)"
        if ! python3 -m venv "$VENV"; then
            echo "error: 'python3 -m venv' failed (on Debian/Ubuntu install python3-venv)"
            return 1
        fi
    fi
    echo "installing moto[server], deltalake, pyarrow, psycopg, adbc-driver-flightsql"
    "$VENV/bin/python3" -m pip install --quiet --disable-pip-version-check --no-input --upgrade pip
    "$VENV/bin/python3" -m pip install --quiet --disable-pip-version-check --no-input \
        'moto[server]' deltalake pyarrow 'psycopg[binary]' adbc-driver-flightsql adbc-driver-manager
    if ! venv_ready; then
        echo "error: the venv at $VENV is still missing moto_server, deltalake, pyarrow, psycopg or adbc-driver-flightsql"
        return 1
    fi
}
if venv_ready; then
    echo "venv already has moto[server], deltalake, pyarrow, psycopg and adbc-driver-flightsql"
else
    background venv install_venv
fi

# --- Debian's packages: chromium (the dashboard's browser test), psql (the Postgres wire
# protocol's tests), prometheus and promtool (rule checks, the scrape test) ----------------------
section "Debian's packages"
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
    missing+=(prometheus)
fi
if [[ ${#missing[@]} -eq 0 ]]; then
    echo "chromium, psql, prometheus and promtool already installed"
else
    background debian apt_install "${missing[@]}"
fi

section "cargo fmt --check"
cargo fmt --all -- --check

# Clippy runs as the rustc of our own crates while the tests build (`RUSTC_WORKSPACE_WRAPPER`
# is what `cargo clippy` sets; it applies to workspace members only), so the lints and the
# tests share one build of the dependency tree: `cargo clippy` on its own would check every
# dependency again (~10 minutes on two cores on a fresh machine). Same lints as
# `cargo clippy --workspace --all-targets -- -D warnings`, and the same failure on any warning.
# (Exported after the background installs started: tansu's build does not get the wrapper.)
section "cargo clippy (lints while building every target)"
CLIPPY_DRIVER="$(command -v clippy-driver || true)"
if [[ -z "$CLIPPY_DRIVER" ]]; then
    echo "error: clippy-driver not found (rustup component add clippy)" >&2
    exit 1
fi
export RUSTC_WORKSPACE_WRAPPER="$CLIPPY_DRIVER"
export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
cargo test --workspace --all-targets --no-run

# --- the installs, finished --------------------------------------------------------------
section "waiting for the installs"
for name in "${!INSTALL_PIDS[@]}"; do
    await "$name"
done

if [[ -z "${STRATA_TANSU_BIN:-}" || ! -x "${STRATA_TANSU_BIN}" ]]; then
    STRATA_TANSU_BIN="$(command -v tansu || true)"
    if [[ -z "$STRATA_TANSU_BIN" && -x "$HOME/.cargo/bin/tansu" ]]; then
        STRATA_TANSU_BIN="$HOME/.cargo/bin/tansu"
    fi
fi
if [[ -z "$STRATA_TANSU_BIN" || ! -x "$STRATA_TANSU_BIN" ]]; then
    echo "error: tansu is not installed and could not be found after install" >&2
    exit 1
fi
export STRATA_TANSU_BIN
echo "tansu: $STRATA_TANSU_BIN"

export PATH="$VENV/bin:$PATH"
export STRATA_MOTO_BIN="$VENV/bin/moto_server"
export STRATA_PYTHON="$VENV/bin/python3"
echo "moto_server: $STRATA_MOTO_BIN"
echo "python: $STRATA_PYTHON ($("$STRATA_PYTHON" -c 'import deltalake, pyarrow; print("deltalake", deltalake.__version__, "pyarrow", pyarrow.__version__)'))"

# Resolves Debian's tool $2 into variable $1, or fails the run.
require_tool() {
    local path
    path="$(command -v "$2" || true)"
    if [[ -z "$path" ]]; then
        echo "error: $2 is not installed and could not be installed with apt-get" >&2
        exit 1
    fi
    printf -v "$1" '%s' "$path"
    export "${1?}"
}
require_tool STRATA_CHROMIUM_BIN chromium
require_tool STRATA_PSQL_BIN psql
require_tool STRATA_PROMETHEUS_BIN prometheus
require_tool STRATA_PROMTOOL_BIN promtool
echo "chromium: $STRATA_CHROMIUM_BIN ($("$STRATA_CHROMIUM_BIN" --version 2>/dev/null || true))"
echo "psql: $STRATA_PSQL_BIN ($("$STRATA_PSQL_BIN" --version))"
echo "prometheus: $STRATA_PROMETHEUS_BIN ($("$STRATA_PROMETHEUS_BIN" --version 2>&1 | head -n 1))"

section "promtool check rules / config (ops/prometheus)"
"$STRATA_PROMTOOL_BIN" check rules ops/prometheus/alerts.yml
"$STRATA_PROMTOOL_BIN" check config ops/prometheus/prometheus.yml

section "cargo test"
cargo test --workspace "$@"

section "all checks passed"
