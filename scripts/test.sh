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

# Installs one of Debian's packages with apt-get (as root, or through sudo without a prompt).
apt_install() {
    local sudo=""
    if [[ "$(id -u)" -ne 0 ]]; then sudo="sudo -n"; fi
    echo "installing Debian's $1 with apt-get"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null
}

# --- tansu -------------------------------------------------------------------------------
section "installing tansu"
if [[ -n "${STRATA_TANSU_BIN:-}" && -x "${STRATA_TANSU_BIN}" ]]; then
    echo "using STRATA_TANSU_BIN=${STRATA_TANSU_BIN}"
elif command -v tansu >/dev/null 2>&1 || [[ -x "$HOME/.cargo/bin/tansu" ]]; then
    echo "tansu already installed"
else
    echo "tansu not found: building it with cargo install (this takes ~11 minutes)"
    # Optimised lightly: the tests start small brokers, and opt-level 1 builds faster than
    # the release profile's 3 (the whole suite passes against such a build).
    CARGO_PROFILE_RELEASE_OPT_LEVEL=1 CARGO_PROFILE_RELEASE_DEBUG=0 \
        cargo install tansu --locked --features dynostore
fi
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

# --- python venv -------------------------------------------------------------------------
section "preparing python venv ($VENV)"
venv_ready() {
    [[ -x "$VENV/bin/python3" ]] \
        && [[ -x "$VENV/bin/moto_server" ]] \
        && "$VENV/bin/python3" -c 'import deltalake, pyarrow, pyarrow.compute, psycopg, adbc_driver_flightsql.dbapi' >/dev/null 2>&1
}
if venv_ready; then
    echo "venv already has moto[server], deltalake and pyarrow"
else
    if [[ ! -x "$VENV/bin/python3" ]]; then
        echo "creating venv with $(command -v python3)"
        if ! python3 -m venv "$VENV"; then
            echo "error: 'python3 -m venv' failed (on Debian/Ubuntu install python3-venv)" >&2
            exit 1
        fi
    fi
    echo "installing moto[server], deltalake, pyarrow, psycopg, adbc-driver-flightsql"
    "$VENV/bin/python3" -m pip install --quiet --disable-pip-version-check --no-input --upgrade pip
    "$VENV/bin/python3" -m pip install --quiet --disable-pip-version-check --no-input \
        'moto[server]' deltalake pyarrow 'psycopg[binary]' adbc-driver-flightsql adbc-driver-manager
    if ! venv_ready; then
        echo "error: the venv at $VENV is still missing moto_server, deltalake, pyarrow, psycopg or adbc-driver-flightsql" >&2
        exit 1
    fi
fi
export PATH="$VENV/bin:$PATH"
export STRATA_MOTO_BIN="$VENV/bin/moto_server"
export STRATA_PYTHON="$VENV/bin/python3"
echo "moto_server: $STRATA_MOTO_BIN"
echo "python: $STRATA_PYTHON ($("$STRATA_PYTHON" -c 'import deltalake, pyarrow; print("deltalake", deltalake.__version__, "pyarrow", pyarrow.__version__)'))"

# --- chromium (the dashboard's browser test) -----------------------------------------------
section "installing chromium"
if command -v chromium >/dev/null 2>&1; then
    echo "chromium already installed"
else
    apt_install chromium
fi
STRATA_CHROMIUM_BIN="$(command -v chromium || true)"
if [[ -z "$STRATA_CHROMIUM_BIN" ]]; then
    echo "error: chromium is not installed and could not be installed with apt-get" >&2
    exit 1
fi
export STRATA_CHROMIUM_BIN
echo "chromium: $STRATA_CHROMIUM_BIN ($("$STRATA_CHROMIUM_BIN" --version 2>/dev/null || true))"

# --- psql (the Postgres wire protocol's tests) ------------------------------------------------
section "installing psql"
if command -v psql >/dev/null 2>&1; then
    echo "psql already installed"
else
    apt_install postgresql-client
fi
STRATA_PSQL_BIN="$(command -v psql || true)"
if [[ -z "$STRATA_PSQL_BIN" ]]; then
    echo "error: psql is not installed and could not be installed with apt-get" >&2
    exit 1
fi
export STRATA_PSQL_BIN
echo "psql: $STRATA_PSQL_BIN ($("$STRATA_PSQL_BIN" --version))"

# --- prometheus (promtool checks, the scrape test) -------------------------------------------
section "installing prometheus"
if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    echo "prometheus and promtool already installed"
else
    apt_install prometheus
fi
STRATA_PROMETHEUS_BIN="$(command -v prometheus || true)"
STRATA_PROMTOOL_BIN="$(command -v promtool || true)"
if [[ -z "$STRATA_PROMETHEUS_BIN" || -z "$STRATA_PROMTOOL_BIN" ]]; then
    echo "error: prometheus/promtool are not installed and could not be installed with apt-get" >&2
    exit 1
fi
export STRATA_PROMETHEUS_BIN STRATA_PROMTOOL_BIN
echo "prometheus: $STRATA_PROMETHEUS_BIN ($("$STRATA_PROMETHEUS_BIN" --version 2>&1 | head -n 1))"

# --- checks ------------------------------------------------------------------------------
section "promtool check rules / config (ops/prometheus)"
"$STRATA_PROMTOOL_BIN" check rules ops/prometheus/alerts.yml
"$STRATA_PROMTOOL_BIN" check config ops/prometheus/prometheus.yml

section "cargo fmt --check"
cargo fmt --all -- --check

# Clippy runs as the rustc of our own crates while the tests build (`RUSTC_WORKSPACE_WRAPPER`
# is what `cargo clippy` sets; it applies to workspace members only), so the lints and the
# tests share one build of the dependency tree: `cargo clippy` on its own would check every
# dependency again (~10 minutes on two cores on a fresh machine). Same lints as
# `cargo clippy --workspace --all-targets -- -D warnings`, and the same failure on any warning.
section "cargo clippy (lints while building every target)"
CLIPPY_DRIVER="$(command -v clippy-driver || true)"
if [[ -z "$CLIPPY_DRIVER" ]]; then
    echo "error: clippy-driver not found (rustup component add clippy)" >&2
    exit 1
fi
export RUSTC_WORKSPACE_WRAPPER="$CLIPPY_DRIVER"
export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
cargo test --workspace --all-targets --no-run

section "cargo test"
cargo test --workspace "$@"

section "all checks passed"
