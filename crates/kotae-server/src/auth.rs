//! Who is asking: API keys for services, OIDC/JWT bearer tokens and SSO-proxy headers for
//! employees, anonymous access for public documents only. Every way in fails closed: a
//! credential that does not verify is refused (never downgraded to anonymous), headers that
//! only a trusted proxy may set are ignored from anyone else, and failed attempts are
//! logged, audited and rate limited per client address.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What a client may do. Admin endpoints (`/admin/api/…`) need [`Role::Admin`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[default]
    User,
    Admin,
}

/// An API key for a service (a bot, a script), the access groups its holder may read and
/// its role. Only the key's SHA-256 needs to be stored (`kotae keys new` prints both).
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// Unique; names the client in logs, the audit and as the owner of its conversations.
    pub name: String,
    /// The key in plain text (accepted, with a warning at start-up: prefer `key_sha256`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Hex SHA-256 of the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_sha256: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub role: Role,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKey")
            .field("name", &self.name)
            .field("key", &"<redacted>")
            .field("groups", &self.groups)
            .field("role", &self.role)
            .finish()
    }
}

/// Employees' identity from an OpenID Connect provider (`[server.jwt]`): bearer tokens signed
/// with RS256/ES256 (keys from the provider's JWKS, cached and re-fetched when a token names
/// an unknown key) or HS256 with a shared secret.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtConfig {
    /// Required `iss`.
    pub issuer: String,
    /// Required `aud` (one of).
    pub audience: Vec<String>,
    /// The provider's JWKS (`…/.well-known/jwks.json` or the `jwks_uri` of its discovery
    /// document). Needed for RS256/ES256.
    pub jwks_url: Option<String>,
    /// Shared secret for HS256 (simple set-ups). Prefer `hs256_secret_env`.
    pub hs256_secret: Option<String>,
    /// Environment variable holding the HS256 secret.
    pub hs256_secret_env: Option<String>,
    /// Claim naming the user (`sub`, or e.g. `email`).
    pub user_claim: String,
    /// Claim with the user's groups: an array or a space/comma-separated string; a dotted
    /// path reaches into objects (Keycloak: `realm_access.roles`).
    pub groups_claim: String,
    /// Allowed clock skew, seconds, for `exp` and `nbf`.
    pub leeway_s: u64,
    /// The JWKS is fetched again after this long.
    pub jwks_refresh_s: u64,
    /// A token naming a key the cached JWKS lacks (the provider rotated its keys) fetches
    /// it again, at most this often.
    pub jwks_refetch_min_s: u64,
    /// Sign-in to the admin console with the provider (authorization code flow with PKCE,
    /// a public client): the provider's authorization endpoint…
    pub authorize_url: Option<String>,
    /// …its token endpoint (it must allow Kotae's origin, CORS)…
    pub token_url: Option<String>,
    /// …and Kotae's client id there (redirect URI: `https://<kotae>/admin`).
    pub client_id: Option<String>,
    pub scopes: String,
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            issuer: String::new(),
            audience: Vec::new(),
            jwks_url: None,
            hs256_secret: None,
            hs256_secret_env: None,
            user_claim: "sub".into(),
            groups_claim: "groups".into(),
            leeway_s: 60,
            jwks_refresh_s: 600,
            jwks_refetch_min_s: 10,
            authorize_url: None,
            token_url: None,
            client_id: None,
            scopes: "openid profile email".into(),
        }
    }
}

/// Identity set by a single-sign-on proxy in front of Kotae (oauth2-proxy style,
/// `[server.sso]`). The headers count only on requests from `server.trusted_proxies`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SsoConfig {
    pub user_header: String,
    /// Comma-separated groups.
    pub groups_header: String,
}

impl Default for SsoConfig {
    fn default() -> Self {
        Self { user_header: "X-Forwarded-User".into(), groups_header: "X-Forwarded-Groups".into() }
    }
}

/// Who is asking: set by the access middleware.
#[derive(Debug, Clone, Serialize)]
pub struct Client {
    /// Owner of conversations and feedback, rate-limit key: `key:<name>`, `user:<id>` or
    /// `ip:<address>` (anonymous).
    pub id: String,
    pub groups: Vec<String>,
    pub role: Role,
    /// How the client proved who it is: `api_key`, `jwt`, `sso`, `anonymous`.
    pub via: &'static str,
    /// The client's address (from `X-Forwarded-For` only behind a trusted proxy).
    #[serde(skip)]
    pub ip: IpAddr,
}

/// Why a credential was refused (logged and audited; the client sees a generic message).
#[derive(Debug, Clone)]
pub struct Denied(pub String);

/// A fresh API key: `kotae_` and 244 random bits (two v4 UUIDs, from the OS generator).
pub fn new_key() -> String {
    format!("kotae_{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

/// The SHA-256 of an API key, hex.
pub fn key_digest(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

struct StoredKey {
    digest: [u8; 32],
    name: String,
    groups: Vec<String>,
    role: Role,
}

/// The configured ways in, checked at start-up.
pub struct Authenticator {
    keys: Vec<StoredKey>,
    jwt: Option<JwtVerifier>,
    sso: Option<SsoConfig>,
    trusted: Vec<ipnet::IpNet>,
    admin_groups: Vec<String>,
}

impl Authenticator {
    /// Check the settings: unique key names, well-formed digests and proxy addresses, a
    /// complete JWT section.
    pub fn new(cfg: &crate::ServerConfig) -> Result<Self, String> {
        let mut names = BTreeSet::new();
        let mut keys = Vec::new();
        for k in &cfg.api_keys {
            if k.name.trim().is_empty() {
                return Err("server.api_keys: every key needs a `name`".into());
            }
            if !names.insert(k.name.as_str()) {
                return Err(format!(
                    "server.api_keys: the name '{}' is used twice; names own conversations, so each key needs its own",
                    k.name
                ));
            }
            let digest = match (&k.key, &k.key_sha256) {
                (Some(_), Some(_)) => {
                    return Err(format!("server.api_keys '{}': give `key_sha256` or `key`, not both", k.name))
                }
                (None, None) => return Err(format!("server.api_keys '{}': `key_sha256` is missing", k.name)),
                (Some(plain), None) => {
                    if plain.len() < 16 {
                        return Err(format!(
                            "server.api_keys '{}': the key is shorter than 16 characters; make one with `kotae keys new`",
                            k.name
                        ));
                    }
                    tracing::warn!(
                        name = %k.name,
                        "an API key is stored in plain text; store its `key_sha256` instead (`kotae keys new` prints it)"
                    );
                    key_digest(plain)
                }
                (None, Some(h)) => h.trim().to_ascii_lowercase(),
            };
            let bytes = hex::decode(&digest).ok().and_then(|b| <[u8; 32]>::try_from(b).ok()).ok_or_else(|| {
                format!("server.api_keys '{}': `key_sha256` must be 64 hex digits (a SHA-256)", k.name)
            })?;
            keys.push(StoredKey { digest: bytes, name: k.name.clone(), groups: k.groups.clone(), role: k.role });
        }
        let trusted = cfg
            .trusted_proxies
            .iter()
            .map(|p| {
                p.parse::<ipnet::IpNet>()
                    .or_else(|_| p.parse::<IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| format!("server.trusted_proxies: '{p}' is not an address or a CIDR range"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if cfg.sso.is_some() && trusted.is_empty() {
            return Err(
                "server.sso needs server.trusted_proxies: the addresses of the proxy that sets its headers".into()
            );
        }
        let jwt = cfg.jwt.as_ref().map(JwtVerifier::new).transpose()?;
        Ok(Self { keys, jwt, sso: cfg.sso.clone(), trusted, admin_groups: cfg.admin_groups.clone() })
    }

    /// The keys of `server.api_keys`: name, role and groups (never a digest).
    pub fn configured_keys(&self) -> impl Iterator<Item = (&str, Role, &[String])> {
        self.keys.iter().map(|k| (k.name.as_str(), k.role, k.groups.as_slice()))
    }

    /// Whether any credential is configured (else an OpenAI client's dummy key is ignored).
    pub fn has_credentials(&self) -> bool {
        !self.keys.is_empty() || self.jwt.is_some() || self.sso.is_some()
    }

    pub fn is_trusted(&self, peer: IpAddr) -> bool {
        self.trusted.iter().any(|n| n.contains(&peer))
    }

    /// The client's address: the peer's, or behind trusted proxies the right-most
    /// `X-Forwarded-For` entry that is not itself a trusted proxy.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.is_trusted(peer) {
            return peer;
        }
        let mut hops: Vec<IpAddr> = Vec::new();
        for v in headers.get_all("x-forwarded-for") {
            let Ok(s) = v.to_str() else { return peer };
            for part in s.split(',') {
                match part.trim().parse::<IpAddr>() {
                    Ok(ip) => hops.push(ip),
                    // A garbled chain: trust nothing in it.
                    Err(_) => return peer,
                }
            }
        }
        hops.into_iter().rev().find(|ip| !self.is_trusted(*ip)).unwrap_or(peer)
    }

    /// An API key, compared in constant time with every stored digest.
    pub fn api_key(&self, key: &str, ip: IpAddr) -> Option<Client> {
        let digest = Sha256::digest(key.as_bytes());
        let mut found: Option<&StoredKey> = None;
        for k in &self.keys {
            if bool::from(k.digest.ct_eq(digest.as_slice())) {
                found = Some(k);
            }
        }
        found.map(|k| Client {
            id: format!("key:{}", k.name),
            groups: k.groups.clone(),
            role: k.role,
            via: "api_key",
            ip,
        })
    }

    pub fn jwt(&self) -> Option<&JwtVerifier> {
        self.jwt.as_ref()
    }

    fn role_of(&self, groups: &[String]) -> Role {
        if groups.iter().any(|g| self.admin_groups.contains(g)) {
            Role::Admin
        } else {
            Role::User
        }
    }

    /// A client from verified JWT claims.
    pub fn from_claims(&self, user: String, groups: Vec<String>, ip: IpAddr) -> Client {
        let role = self.role_of(&groups);
        Client { id: format!("user:{user}"), groups, role, via: "jwt", ip }
    }

    /// The SSO proxy's headers, when the request came from a trusted proxy and names a
    /// user. `Err` when such headers come from anyone else (they are ignored; the caller
    /// logs it).
    pub fn sso(&self, peer: IpAddr, ip: IpAddr, headers: &HeaderMap) -> Result<Option<Client>, Denied> {
        let Some(sso) = &self.sso else { return Ok(None) };
        let Some(user) = headers.get(sso.user_header.as_str()) else { return Ok(None) };
        if !self.is_trusted(peer) {
            return Err(Denied(format!("`{}` sent by {peer}, which is not a trusted proxy", sso.user_header)));
        }
        let user = user.to_str().map_err(|_| Denied(format!("`{}` is not text", sso.user_header)))?.trim();
        if user.is_empty() {
            return Ok(None);
        }
        let groups: Vec<String> = headers
            .get(sso.groups_header.as_str())
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(',').map(|g| g.trim().to_string()).filter(|g| !g.is_empty()).collect())
            .unwrap_or_default();
        let role = self.role_of(&groups);
        Ok(Some(Client { id: format!("user:{user}"), groups, role, via: "sso", ip }))
    }
}

/// Whether a bearer token is shaped like a JWT (three base64url segments).
pub fn looks_like_jwt(token: &str) -> bool {
    let parts: Vec<&str> = token.split('.').collect();
    parts.len() == 3
        && parts[..2].iter().all(|p| !p.is_empty())
        && parts.iter().all(|p| p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
}

struct JwksCache {
    set: JwkSet,
    fetched: Option<Instant>,
    last_attempt: Option<Instant>,
}

/// Verifies bearer JWTs: signature (HS256 with the shared secret; RS*/ES*/PS* with the
/// provider's keys), issuer, audience, expiry and not-before with the configured leeway.
pub struct JwtVerifier {
    cfg: JwtConfig,
    hs: Option<DecodingKey>,
    http: reqwest::Client,
    cache: tokio::sync::Mutex<JwksCache>,
}

impl JwtVerifier {
    pub fn new(cfg: &JwtConfig) -> Result<Self, String> {
        if cfg.issuer.trim().is_empty() {
            return Err("server.jwt.issuer is required (the `iss` your identity provider puts in tokens)".into());
        }
        if cfg.audience.is_empty() {
            return Err("server.jwt.audience is required (the `aud` of tokens meant for Kotae)".into());
        }
        let secret = match (&cfg.hs256_secret, &cfg.hs256_secret_env) {
            (Some(s), _) => Some(s.clone()),
            (None, Some(var)) => Some(
                std::env::var(var)
                    .map_err(|_| format!("server.jwt.hs256_secret_env: the environment variable {var} is not set"))?,
            ),
            (None, None) => None,
        };
        if let Some(s) = &secret {
            if s.len() < 32 {
                return Err("server.jwt: the HS256 secret must have at least 32 bytes".into());
            }
        }
        if secret.is_none() && cfg.jwks_url.is_none() {
            return Err("server.jwt needs `jwks_url` (RS256/ES256) or an HS256 secret".into());
        }
        let hs = secret
            .map(|s| DecodingKey::from_secret(s.as_bytes()))
            .transpose()
            .map_err(|e| format!("server.jwt: the HS256 secret is not usable: {e}"))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("cannot build the HTTP client for the JWKS: {e}"))?;
        Ok(Self {
            cfg: cfg.clone(),
            hs,
            http,
            cache: tokio::sync::Mutex::new(JwksCache {
                set: JwkSet { keys: Vec::new() },
                fetched: None,
                last_attempt: None,
            }),
        })
    }

    async fn fetch(&self, cache: &mut JwksCache) -> Result<(), Denied> {
        let Some(url) = &self.cfg.jwks_url else { return Ok(()) };
        cache.last_attempt = Some(Instant::now());
        let resp = self.http.get(url).send().await.map_err(|e| Denied(format!("cannot fetch the JWKS: {e}")))?;
        if !resp.status().is_success() {
            return Err(Denied(format!("the JWKS at {url} answered {}", resp.status())));
        }
        let set: JwkSet = resp.json().await.map_err(|e| Denied(format!("the JWKS at {url} is not a JWK set: {e}")))?;
        tracing::info!(keys = set.keys.len(), %url, "fetched the JWKS");
        cache.set = set;
        cache.fetched = Some(Instant::now());
        Ok(())
    }

    /// The provider's key for this token: from the cache, fetched again when stale or when
    /// the token names a key the cache lacks (key rotation), at most every few seconds.
    async fn public_key(&self, kid: Option<&str>, alg: Algorithm) -> Result<DecodingKey, Denied> {
        let mut cache = self.cache.lock().await;
        let stale = cache.fetched.is_none_or(|t| t.elapsed() > Duration::from_secs(self.cfg.jwks_refresh_s));
        let find = |set: &JwkSet| -> Option<DecodingKey> {
            let fits = |j: &&jsonwebtoken::jwk::Jwk| {
                let kind = match &j.algorithm {
                    AlgorithmParameters::RSA(_) => {
                        matches!(
                            alg,
                            Algorithm::RS256
                                | Algorithm::RS384
                                | Algorithm::RS512
                                | Algorithm::PS256
                                | Algorithm::PS384
                                | Algorithm::PS512
                        )
                    }
                    AlgorithmParameters::EllipticCurve(_) => matches!(alg, Algorithm::ES256 | Algorithm::ES384),
                    AlgorithmParameters::OctetKeyPair(_) => alg == Algorithm::EdDSA,
                    // Symmetric keys are never taken from a JWKS.
                    _ => false,
                };
                let declared = j.common.key_algorithm.is_none_or(|a| format!("{a:?}") == format!("{alg:?}"));
                kind && declared
            };
            let mut fitting = set.keys.iter().filter(fits);
            let jwk = match kid {
                Some(k) => fitting.find(|j| j.common.key_id.as_deref() == Some(k)),
                None => {
                    let all: Vec<_> = fitting.collect();
                    (all.len() == 1).then(|| all[0])
                }
            }?;
            DecodingKey::from_jwk(jwk).ok()
        };
        if !stale {
            if let Some(k) = find(&cache.set) {
                return Ok(k);
            }
        }
        let may_refetch =
            stale || cache.last_attempt.is_none_or(|t| t.elapsed() >= Duration::from_secs(self.cfg.jwks_refetch_min_s));
        if may_refetch {
            if let Err(e) = self.fetch(&mut cache).await {
                tracing::warn!(error = %e.0, "JWKS refresh failed");
                // A provider that is briefly down: keep using the keys we have.
                if cache.fetched.is_none() {
                    return Err(e);
                }
            }
        }
        find(&cache.set).ok_or_else(|| Denied(format!("no key {} in the provider's JWKS", kid.unwrap_or("(no kid)"))))
    }

    /// Verify a token; the user and their groups.
    pub async fn verify(&self, token: &str) -> Result<(String, Vec<String>), Denied> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| Denied(format!("malformed JWT: {e}")))?;
        let key = match header.alg {
            Algorithm::HS256 => self
                .hs
                .clone()
                .ok_or_else(|| Denied("HS256 tokens are not accepted (no shared secret configured)".into()))?,
            Algorithm::HS384 | Algorithm::HS512 => return Err(Denied(format!("{:?} is not accepted", header.alg))),
            alg => {
                if self.cfg.jwks_url.is_none() {
                    return Err(Denied(format!("{alg:?} tokens need server.jwt.jwks_url")));
                }
                self.public_key(header.kid.as_deref(), alg).await?
            }
        };
        let mut v = Validation::new(header.alg);
        v.set_issuer(&[self.cfg.issuer.as_str()]);
        v.set_audience(&self.cfg.audience);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        v.leeway = self.cfg.leeway_s;
        v.validate_nbf = true;
        let data = jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, &key, &v)
            .map_err(|e| Denied(format!("JWT refused: {e}")))?;
        let claims = Value::Object(data.claims);
        let user = match claim(&claims, &self.cfg.user_claim) {
            Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
            _ => return Err(Denied(format!("the JWT has no `{}` claim", self.cfg.user_claim))),
        };
        let groups = match claim(&claims, &self.cfg.groups_claim) {
            Some(Value::Array(a)) => a.iter().filter_map(|g| g.as_str()).map(str::to_string).collect(),
            Some(Value::String(s)) => {
                s.split([',', ' ']).map(str::trim).filter(|g| !g.is_empty()).map(str::to_string).collect()
            }
            _ => Vec::new(),
        };
        Ok((user, groups))
    }
}

/// A claim by dotted path.
fn claim<'a>(claims: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(claims, |v, k| v.get(k))
}

/// Failed authentications per client address: after `per_minute` failures within a minute
/// the address is refused (429) until the minute is over, whatever it sends.
pub struct FailureLimiter {
    per_minute: u32,
    state: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl FailureLimiter {
    pub fn new(per_minute: u32) -> Self {
        Self { per_minute: per_minute.max(1), state: Mutex::new(HashMap::new()) }
    }

    /// Seconds until `ip` may try again, when it is locked out.
    pub fn locked(&self, ip: IpAddr) -> Option<u64> {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (start, n) = s.get(&ip)?;
        let left = Duration::from_secs(60).checked_sub(start.elapsed())?;
        (*n >= self.per_minute).then(|| left.as_secs().max(1))
    }

    /// Count a failure.
    pub fn failed(&self, ip: IpAddr) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.len() > 100_000 {
            s.retain(|_, (t, _)| t.elapsed() < Duration::from_secs(60));
        }
        let e = s.entry(ip).or_insert((Instant::now(), 0));
        if e.0.elapsed() >= Duration::from_secs(60) {
            *e = (Instant::now(), 0);
        }
        e.1 += 1;
    }

    pub fn prune(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).retain(|_, (t, _)| t.elapsed() < Duration::from_secs(60));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> crate::ServerConfig {
        crate::ServerConfig {
            api_keys: vec![ApiKey {
                name: "bot".into(),
                key: None,
                key_sha256: Some(key_digest("kotae_0123456789abcdef")),
                groups: vec!["staff".into()],
                role: Role::User,
            }],
            trusted_proxies: vec!["10.0.0.0/8".into(), "127.0.0.1".into()],
            ..Default::default()
        }
    }

    #[test]
    fn keys_match_by_digest_only() {
        let a = Authenticator::new(&cfg()).unwrap();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(a.api_key("kotae_0123456789abcdef", ip).unwrap().id, "key:bot");
        assert!(a.api_key("kotae_0123456789abcdeF", ip).is_none());
        assert!(a.api_key("", ip).is_none());
    }

    #[test]
    fn duplicate_names_and_bad_digests_are_refused() {
        let mut c = cfg();
        c.api_keys.push(c.api_keys[0].clone());
        assert!(Authenticator::new(&c).err().unwrap().contains("used twice"));
        let mut c = cfg();
        c.api_keys[0].key_sha256 = Some("abc".into());
        assert!(Authenticator::new(&c).err().unwrap().contains("64 hex digits"));
        let mut c = cfg();
        c.trusted_proxies = vec!["not-an-ip".into()];
        assert!(Authenticator::new(&c).is_err());
    }

    #[test]
    fn forwarded_for_counts_only_behind_a_trusted_proxy() {
        let a = Authenticator::new(&cfg()).unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "198.51.100.7, 10.1.2.3".parse().unwrap());
        let proxy: IpAddr = "10.0.0.5".parse().unwrap();
        let stranger: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(a.client_ip(proxy, &h), "198.51.100.7".parse::<IpAddr>().unwrap());
        assert_eq!(a.client_ip(stranger, &h), stranger);
        // A client cannot hide behind a forged left-most entry: the right-most untrusted hop counts.
        h.insert("x-forwarded-for", "1.1.1.1, 198.51.100.7".parse().unwrap());
        assert_eq!(a.client_ip(proxy, &h), "198.51.100.7".parse::<IpAddr>().unwrap());
        h.insert("x-forwarded-for", "garbage".parse().unwrap());
        assert_eq!(a.client_ip(proxy, &h), proxy);
    }

    #[test]
    fn failures_lock_out_for_the_rest_of_the_minute() {
        let l = FailureLimiter::new(3);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..2 {
            l.failed(ip);
        }
        assert!(l.locked(ip).is_none());
        l.failed(ip);
        assert!(l.locked(ip).is_some_and(|s| (1..=60).contains(&s)));
        assert!(l.locked("192.0.2.2".parse().unwrap()).is_none());
    }

    #[test]
    fn jwt_shape() {
        assert!(looks_like_jwt("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"));
        assert!(!looks_like_jwt("kotae_0123456789abcdef"));
        assert!(!looks_like_jwt("a.b.c.d"));
    }
}
