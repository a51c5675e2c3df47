//! Bearer tokens with scopes, stored as SHA-256 hashes, and a per-token rate limit.
//!
//! A token is configured as `NAME:SCOPE[+SCOPE...]:SHA256_HEX`; `strata token new` makes one.
//! The token itself is 32 random bytes, so an unsalted hash is enough to keep the config from
//! being a credential.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use crate::error::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Panels,
    Sql,
    Gdpr,
    Admin,
}

impl Scope {
    pub fn as_str(&self) -> &'static str {
        match self {
            Scope::Panels => "panels",
            Scope::Sql => "sql",
            Scope::Gdpr => "gdpr",
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
            "admin" => Ok(Scope::Admin),
            other => Err(format!(
                "unknown scope `{other}`; scopes are panels, sql, gdpr, admin"
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
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl Auth {
    pub fn new(tokens: Vec<TokenEntry>, rate_per_sec: f64, burst: f64) -> Self {
        Self {
            tokens,
            rate: rate_per_sec.max(0.001),
            burst: burst.max(1.0),
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

    fn take(&self, name: &str) -> Result<(), ApiError> {
        let mut buckets = self.buckets.lock();
        let now = Instant::now();
        let (tokens, last) = buckets.entry(name.to_string()).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.rate).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            let wait = Duration::from_secs_f64((1.0 - *tokens) / self.rate);
            Err(ApiError::RateLimited {
                retry_after_secs: wait.as_secs().max(1),
            })
        }
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
}
