//! Bearer tokens with scopes, stored as SHA-256 hashes, a per-token rate limit, a per-address
//! rate limit for requests without a valid token, and the middleware that checks them all
//! before a handler reads anything.
//!
//! ```text
//! request --> authorize: routes::access(route) --Public--> peer bucket --> handler
//!                                              --Token(scope)--> token? --no/unknown--> peer bucket, 401
//!                                                                       --yes--> token bucket, scope --> handler (Extension<Caller>)
//! ```
//!
//! A token is configured as `NAME:SCOPE[+SCOPE...]:SHA256_HEX`; `strata token new` makes one.
//! The token itself is 32 random bytes, so an unsalted hash is enough to keep the config from
//! being a credential.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::routes::{self, Access};
use crate::{caller, AppState};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Panels,
    Sql,
    Gdpr,
    /// Decisions and reservations of AI spend: the AI job runner's token.
    Ai,
    Admin,
}

impl Scope {
    pub fn as_str(&self) -> &'static str {
        match self {
            Scope::Panels => "panels",
            Scope::Sql => "sql",
            Scope::Gdpr => "gdpr",
            Scope::Ai => "ai",
            Scope::Admin => "admin",
        }
    }
}

impl FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "panels" => Ok(Scope::Panels),
            "sql" => Ok(Scope::Sql),
            "gdpr" => Ok(Scope::Gdpr),
            "ai" => Ok(Scope::Ai),
            "admin" => Ok(Scope::Admin),
            other => Err(format!(
                "unknown scope `{other}`; scopes are panels, sql, gdpr, ai, admin"
            )),
        }
    }
}

/// One configured token (its hash, never the token).
#[derive(Debug, Clone)]
pub struct TokenEntry {
    pub name: String,
    pub scopes: Vec<Scope>,
    pub sha256: [u8; 32],
}

impl FromStr for TokenEntry {
    type Err = String;
    /// `NAME:SCOPE[+SCOPE]:SHA256_HEX`
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.trim().split(':').collect();
        let [name, scopes, hash] = parts.as_slice() else {
            return Err(format!(
                "token `{}` must be NAME:SCOPE[+SCOPE...]:SHA256_HEX (see `strata token new`)",
                s.split(':').next().unwrap_or("")
            ));
        };
        let scopes = scopes
            .split('+')
            .map(Scope::from_str)
            .collect::<Result<Vec<_>, _>>()?;
        let bytes = hex::decode(hash.trim())
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| format!("token `{name}`: the hash must be 64 hex digits (SHA-256)"))?;
        Ok(Self {
            name: name.to_string(),
            scopes,
            sha256: bytes,
        })
    }
}

pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A new random token and its config line.
pub fn new_token(name: &str, scopes: &[Scope]) -> (String, String) {
    let raw: [u8; 32] = rand_bytes();
    let token = format!("strata_{}", hex::encode(raw));
    let scopes = scopes
        .iter()
        .map(Scope::as_str)
        .collect::<Vec<_>>()
        .join("+");
    let line = format!("{name}:{scopes}:{}", hex::encode(hash_token(&token)));
    (token, line)
}

fn rand_bytes() -> [u8; 32] {
    // uuid v4 draws from the OS RNG; two of them give 244 random bits.
    let a = uuid::Uuid::new_v4();
    let b = uuid::Uuid::new_v4();
    let mut out = [0u8; 32];
    out[..16].copy_from_slice(a.as_bytes());
    out[16..].copy_from_slice(b.as_bytes());
    out
}

/// Who is calling.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    pub scopes: Vec<Scope>,
}

impl Caller {
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.scopes.contains(&scope) || self.scopes.contains(&Scope::Admin) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "token `{}` lacks the `{}` scope this route needs",
                self.name,
                scope.as_str()
            )))
        }
    }
}

/// Tokens and their buckets.
pub struct Auth {
    tokens: Vec<TokenEntry>,
    /// Requests per second each token may make on average, and the burst above it.
    rate: Rate,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Auth {
    pub fn new(tokens: Vec<TokenEntry>, rate_per_sec: f64, burst: f64) -> Self {
        Self {
            tokens,
            rate: Rate::new(rate_per_sec, burst),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Checks the `Authorization` header value and takes one request from the token's bucket.
    pub fn authenticate(&self, header: Option<&str>) -> Result<Caller, ApiError> {
        let Some(value) = header else {
            return Err(ApiError::Unauthenticated(
                "missing bearer token: send `Authorization: Bearer <token>`".into(),
            ));
        };
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or_else(|| {
                ApiError::Unauthenticated(
                    "the Authorization header must be `Bearer <token>`".into(),
                )
            })?
            .trim();
        let hash = hash_token(token);
        // Compare every entry in full, so timing does not tell how much of a hash matched.
        let mut found = None;
        for t in &self.tokens {
            let same = t
                .sha256
                .iter()
                .zip(hash.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
            if same {
                found = Some(t);
            }
        }
        let entry =
            found.ok_or_else(|| ApiError::Unauthenticated("unknown or revoked token".into()))?;
        self.take(&entry.name)?;
        Ok(Caller {
            name: entry.name.clone(),
            scopes: entry.scopes.clone(),
        })
    }

    /// Takes one request from token `name`'s bucket (a statement on a connection that logged
    /// in with it).
    pub(crate) fn take(&self, name: &str) -> Result<(), ApiError> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock();
        let bucket = buckets
            .entry(name.to_string())
            .or_insert_with(|| self.rate.full(now));
        self.rate.take(bucket, now)
    }
}

/// Checks who may call the matched route before its handler's extractors run, so that no
/// body is read for a caller who is refused. Puts the [`Caller`] into the request's extensions
/// (handlers that need the name take `Extension<Caller>`).
pub(crate) async fn authorize(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let access = routes::access(req.extensions().get::<MatchedPath>().map(|p| p.as_str()));
    let scope = match access {
        Access::Public => {
            if let Err(limited) = state.peers.take(peer) {
                return limited.into_response();
            }
            return next.run(req).await;
        }
        Access::Token(scope) => scope,
    };
    let who = match caller(&state, req.headers()) {
        Ok(who) => who,
        // Guessing tokens spends the address's budget: 401 while it lasts, then 429.
        Err(unknown @ ApiError::Unauthenticated(_)) => {
            return match state.peers.take(peer) {
                Ok(()) => unknown.into_response(),
                Err(limited) => limited.into_response(),
            };
        }
        Err(e) => return e.into_response(),
    };
    if let Err(e) = who.require(scope) {
        return e.into_response();
    }
    req.extensions_mut().insert(who);
    next.run(req).await
}

/// How fast a bucket refills (requests per second) and how much it holds.
#[derive(Debug, Clone, Copy)]
struct Rate {
    per_sec: f64,
    burst: f64,
}

/// A token bucket: `tokens` as of `at`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Rate {
    fn new(per_sec: f64, burst: f64) -> Self {
        Self {
            per_sec: per_sec.max(0.001),
            burst: burst.max(1.0),
        }
    }

    fn full(&self, now: Instant) -> Bucket {
        Bucket {
            tokens: self.burst,
            at: now,
        }
    }

    fn level(&self, bucket: &Bucket, now: Instant) -> f64 {
        let refill = now.saturating_duration_since(bucket.at).as_secs_f64() * self.per_sec;
        (bucket.tokens + refill).min(self.burst)
    }

    /// Takes one request from `bucket`, or says when to come back.
    fn take(&self, bucket: &mut Bucket, now: Instant) -> Result<(), ApiError> {
        bucket.tokens = self.level(bucket, now);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) / self.per_sec;
            Err(ApiError::RateLimited {
                retry_after_secs: (wait.ceil() as u64).max(1),
            })
        }
    }
}

/// Addresses the peer limiter remembers; past this many, the idle ones are forgotten.
const MAX_PEERS: usize = 10_000;
/// Forgetting the idle addresses walks the whole map, so it runs at most this often.
const PRUNE_EVERY: Duration = Duration::from_secs(1);

/// A bucket per client address for what a client can do before it proves who it is: public
/// routes, and requests with a missing or unknown token.
pub struct PeerLimiter {
    rate: Rate,
    peers: Mutex<Peers>,
}

struct Peers {
    buckets: HashMap<IpAddr, Bucket>,
    pruned_at: Option<Instant>,
}

impl PeerLimiter {
    pub fn new(rate_per_sec: f64, burst: f64) -> Self {
        Self {
            rate: Rate::new(rate_per_sec, burst),
            peers: Mutex::new(Peers {
                buckets: HashMap::new(),
                pruned_at: None,
            }),
        }
    }

    /// Takes one request from the address's bucket. Without an address (a request that did not
    /// come through `http::serve_connections`) there is nothing to key on, so nothing is taken.
    pub fn take(&self, peer: Option<IpAddr>) -> Result<(), ApiError> {
        match peer {
            Some(peer) => self.take_at(peer, Instant::now()),
            None => Ok(()),
        }
    }

    fn take_at(&self, peer: IpAddr, now: Instant) -> Result<(), ApiError> {
        let key = peer_key(peer);
        let mut peers = self.peers.lock();
        if peers.buckets.len() >= MAX_PEERS && !peers.buckets.contains_key(&key) {
            peers.make_room(&self.rate, now);
        }
        let bucket = peers
            .buckets
            .entry(key)
            .or_insert_with(|| self.rate.full(now));
        self.rate.take(bucket, now)
    }
}

impl Peers {
    /// Forgets the idle addresses (a full bucket: forgetting it changes nothing). When every
    /// address is busy (a flood from many addresses), forgets one of them, so the map stays
    /// bounded.
    fn make_room(&mut self, rate: &Rate, now: Instant) {
        if self
            .pruned_at
            .is_none_or(|at| now.saturating_duration_since(at) >= PRUNE_EVERY)
        {
            self.buckets.retain(|_, b| rate.level(b, now) < rate.burst);
            self.pruned_at = Some(now);
        }
        if self.buckets.len() >= MAX_PEERS {
            if let Some(any) = self.buckets.keys().next().copied() {
                self.buckets.remove(&any);
            }
        }
    }
}

/// An IPv6 client is keyed by its /64 (a host usually holds a whole /64), an IPv4-mapped one by
/// its IPv4 address.
fn peer_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_scopes_and_limits() {
        let (token, line) = new_token("ops", &[Scope::Panels]);
        let entry: TokenEntry = line.parse().unwrap();
        let auth = Auth::new(vec![entry], 1.0, 2.0);
        let caller = auth.authenticate(Some(&format!("Bearer {token}"))).unwrap();
        assert!(caller.require(Scope::Panels).is_ok());
        assert!(matches!(
            caller.require(Scope::Sql),
            Err(ApiError::Forbidden(_))
        ));
        assert!(matches!(
            auth.authenticate(None),
            Err(ApiError::Unauthenticated(_))
        ));
        assert!(matches!(
            auth.authenticate(Some("Bearer nope")),
            Err(ApiError::Unauthenticated(_))
        ));
        // burst of 2: the second succeeds, the third is limited
        auth.authenticate(Some(&format!("Bearer {token}"))).unwrap();
        assert!(matches!(
            auth.authenticate(Some(&format!("Bearer {token}"))),
            Err(ApiError::RateLimited { .. })
        ));
        assert!("x:root:00".parse::<TokenEntry>().is_err());
        assert!("x:panels:00".parse::<TokenEntry>().is_err());
    }

    fn v4(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn a_peer_gets_its_burst_then_429_until_its_bucket_refills() {
        let peers = PeerLimiter::new(2.0, 3.0);
        let t0 = Instant::now();
        for _ in 0..3 {
            peers.take_at(v4(1), t0).unwrap();
        }
        let Err(ApiError::RateLimited { retry_after_secs }) = peers.take_at(v4(1), t0) else {
            panic!("the fourth request of a burst of 3 was not limited");
        };
        assert_eq!(retry_after_secs, 1);
        // Another address has its own bucket.
        peers.take_at(v4(2), t0).unwrap();
        // Half a second at 2/s refills one request.
        peers
            .take_at(v4(1), t0 + Duration::from_millis(500))
            .unwrap();
        assert!(peers
            .take_at(v4(1), t0 + Duration::from_millis(500))
            .is_err());
        assert!(peers.take(None).is_ok());
    }

    #[test]
    fn ipv6_peers_share_a_bucket_per_64() {
        let peers = PeerLimiter::new(1.0, 1.0);
        let t0 = Instant::now();
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::7".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        peers.take_at(a, t0).unwrap();
        assert!(peers.take_at(b, t0).is_err());
        peers.take_at(other, t0).unwrap();
        let mapped: IpAddr = "::ffff:10.0.0.9".parse().unwrap();
        peers.take_at(mapped, t0).unwrap();
        assert!(peers.take_at(v4(9), t0).is_err());
    }

    #[test]
    fn the_peer_map_stays_bounded() {
        let peers = PeerLimiter::new(10.0, 20.0);
        let t0 = Instant::now();
        let addr = |i: u32| IpAddr::from((0x0a00_0000 + i).to_be_bytes());
        // A flood from more addresses than the map holds, all busy at once.
        for i in 0..(MAX_PEERS as u32 + 500) {
            peers.take_at(addr(i), t0).unwrap();
        }
        assert_eq!(peers.peers.lock().buckets.len(), MAX_PEERS);
        // Ten seconds later they are all idle: a new address makes them go.
        peers
            .take_at(IpAddr::from([192, 168, 0, 1]), t0 + Duration::from_secs(10))
            .unwrap();
        assert!(peers.peers.lock().buckets.len() < MAX_PEERS);
        assert_eq!(peers.peers.lock().buckets.len(), 1);
    }
}
