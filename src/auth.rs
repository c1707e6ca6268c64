//! Authorization with JWTs in Mercure's claim shape, so tokens minted for Mercure hubs work here:
//! `{"mercure": {"publish": ["news", "*"], "subscribe": ["user.42"]}}`.
//!
//! Keys come only from configuration; only allow-listed algorithms are accepted, so `alg: none` and
//! algorithm-confusion tokens are refused. `exp`, `nbf` and (when configured) `aud` are checked with a
//! configurable leeway.

use std::collections::HashSet;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::AuthSettings;
use crate::domain::TopicName;
use crate::selector;

mod details;

use details::TokenSelector;

/// The claims Herald reads; anything else in the token is ignored.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Claims {
    #[serde(default)]
    pub mercure: MercureClaim,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
}

/// `aud` is one string or an array of them (RFC 7519 § 4.1.3); the signature library checks it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

/// What a request does with its topics; every route that touches a topic names one and calls
/// [`Auth::authorize`], so the rule for each lives in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Subscribing or reading history: private topics need a token listing them.
    Read,
    /// Publishing: a token allowing the topic, unless anonymous publishing is on.
    Write,
    /// Seeing the node's status (`/status.json`, which names topics): a publisher's token (one that may
    /// publish to some topic), unless anonymous publishing is on.
    Status,
    /// Reading who is subscribed (the subscriptions API): a token whose subscribe selectors match every
    /// topic given (the request's own path, as Mercure asks); never anonymous.
    Presence,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct MercureClaim {
    /// Topic selectors the bearer may publish to: a topic, `prefix*`, or `*` for all.
    #[serde(default)]
    pub publish: Vec<String>,
    /// Topic selectors the bearer may subscribe to (needed for private topics only).
    #[serde(default)]
    pub subscribe: Vec<String>,
    /// What the hub shows of the subscriber to those who may see who is subscribed (presence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
}

/// What a token carries, in either shape: Mercure's legacy claims, or a 1.0 access token's
/// `authorization_details` (read by `details`).
#[derive(Debug, Deserialize)]
struct TokenClaims {
    #[serde(default)]
    mercure: MercureClaim,
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    authorization_details: Option<serde_json::Value>,
}

/// A verified token: what it allows.
#[derive(Debug, Clone)]
pub struct Grant {
    expires_at: Option<u64>,
    publish: Vec<TokenSelector>,
    subscribe: Vec<TokenSelector>,
    /// The token's payloads, shown by presence: a 1.0 token's subscribe details' (each with its
    /// detail's topics), or the legacy `mercure.payload` (for every subscription).
    payloads: details::Payloads,
}

impl Grant {
    /// The payload of a subscription whose own matcher is `selector`: the first detail whose topics
    /// match it, read as a topic (Mercure's rule; a detail listing `*` serves as a default).
    pub fn payload_for(&self, selector: &str) -> Option<&serde_json::Value> {
        self.payloads
            .iter()
            .find(|(topics, _)| topics.iter().any(|t| t.matches(selector)))
            .map(|(_, payload)| payload)
    }

    /// When the token stops being valid (seconds since the epoch), if it says.
    pub fn expires_at(&self) -> Option<u64> {
        self.expires_at
    }
}

/// Whether the token's header says it is an RFC 9068 access token (`at+jwt`, or its media type).
fn is_access_token(typ: Option<&str>) -> bool {
    typ.is_some_and(|t| {
        let t = t.to_ascii_lowercase();
        t == "at+jwt" || t == "application/at+jwt"
    })
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("{0} needs a token: send `Authorization: Bearer <jwt>`, the auth cookie, or ?authorization=")]
    Missing(&'static str),
    #[error("the token was refused: {0}")]
    Invalid(String),
    #[error("the token does not allow {action} on topic `{topic}`")]
    Forbidden { action: &'static str, topic: String },
    #[error("the token allows no publishing; the node's status is shown to publishers only")]
    NotPublisher,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error("auth.{key}: cannot read {path}: {source}")]
    Read {
        key: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("auth.{key}: {path} is not a usable PEM public key: {source}")]
    Key {
        key: &'static str,
        path: String,
        source: jsonwebtoken::errors::Error,
    },
    #[error("auth.algorithms: `{0}` is not one of HS256, HS384, HS512, RS256, RS384, RS512, ES256, ES384")]
    Algorithm(String),
}

pub struct Auth {
    keys: Vec<(Algorithm, DecodingKey)>,
    anonymous_publish: bool,
    private_topics: Vec<String>,
    audience: Option<String>,
    issuer: Option<String>,
    leeway_secs: u64,
    pub cookie_name: String,
}

/// `topic` matched by one of a token's `selectors`, or refused for `action`.
fn allowed_by(selectors: &[TokenSelector], topic: &TopicName, action: &'static str) -> Result<(), AuthError> {
    if selectors.iter().any(|s| s.matches(topic.as_str())) {
        Ok(())
    } else {
        Err(AuthError::Forbidden {
            action,
            topic: topic.to_string(),
        })
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn parse_algorithm(name: &str) -> Result<Algorithm, AuthConfigError> {
    Ok(match name {
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        other => return Err(AuthConfigError::Algorithm(other.to_string())),
    })
}

impl Auth {
    pub fn from_settings(s: &AuthSettings) -> Result<Auth, AuthConfigError> {
        // A PEM public key file named by setting `key`, parsed by `parse` (RSA or EC).
        let pem_key =
            |key: &'static str, path: &str, parse: fn(&[u8]) -> jsonwebtoken::errors::Result<DecodingKey>| {
                let pem = std::fs::read(path).map_err(|source| AuthConfigError::Read {
                    key,
                    path: path.to_string(),
                    source,
                })?;
                parse(&pem).map_err(|source| AuthConfigError::Key {
                    key,
                    path: path.to_string(),
                    source,
                })
            };
        let mut keys = Vec::new();
        for name in &s.algorithms {
            let alg = parse_algorithm(name)?;
            let key = match alg {
                Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 if !s.hs_secret.is_empty() => {
                    Some(DecodingKey::from_secret(s.hs_secret.expose().as_bytes()))
                }
                Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512
                    if !s.rsa_public_key_file.is_empty() =>
                {
                    Some(pem_key(
                        "rsa_public_key_file",
                        &s.rsa_public_key_file,
                        DecodingKey::from_rsa_pem,
                    )?)
                }
                Algorithm::ES256 | Algorithm::ES384 if !s.ec_public_key_file.is_empty() => Some(pem_key(
                    "ec_public_key_file",
                    &s.ec_public_key_file,
                    DecodingKey::from_ec_pem,
                )?),
                _ => None,
            };
            // An allowed algorithm whose key is not configured accepts no token.
            if let Some(key) = key {
                keys.push((alg, key));
            }
        }
        Ok(Auth {
            keys,
            anonymous_publish: s.anonymous_publish,
            private_topics: s.private_topics.clone(),
            audience: (!s.audience.is_empty()).then(|| s.audience.clone()),
            issuer: (!s.issuer.is_empty()).then(|| s.issuer.clone()),
            leeway_secs: s.leeway_secs.as_secs(),
            cookie_name: s.cookie_name.clone(),
        })
    }

    pub fn is_private(&self, topic: &TopicName) -> bool {
        self.private_topics
            .iter()
            .any(|p| selector::matches(p, topic.as_str()))
    }

    /// Verifies signature, algorithm, `exp`, `nbf` and `aud`.
    pub fn verify(&self, token: &str) -> Result<Grant, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| refusal(&e))?;
        // RFC 7515 § 4.1.11: a token whose `crit` names extensions we do not implement must be refused.
        if let Some(crit) = &header.crit {
            return Err(AuthError::Invalid(format!(
                "the token's `crit` header names extensions this hub does not understand ({})",
                crit.join(", ")
            )));
        }
        let key = self
            .keys
            .iter()
            .find(|(alg, _)| *alg == header.alg)
            .map(|(_, key)| key)
            .ok_or_else(|| {
                AuthError::Invalid(format!(
                    "algorithm {:?} is not accepted by this hub (see auth.algorithms and its keys)",
                    header.alg
                ))
            })?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.leeway_secs;
        validation.validate_nbf = true;
        // Mercure tokens often carry no `exp`; when present it is enforced. A configured audience must be
        // present in the token, not merely not contradicted.
        validation.required_spec_claims = HashSet::new();
        match &self.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                validation.required_spec_claims.insert("aud".to_string());
            }
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".to_string());
        }
        // A 1.0 access token must say when it ends (RFC 9068), and grants only what its details say.
        let access_token = is_access_token(header.typ.as_deref());
        if access_token {
            validation.required_spec_claims.insert("exp".to_string());
        }
        let claims = jsonwebtoken::decode::<TokenClaims>(token, key, &validation)
            .map_err(|e| refusal(&e))?
            .claims;
        let legacy = |list: Vec<String>| list.into_iter().map(TokenSelector::Legacy).collect();
        let (publish, subscribe, payloads) = if access_token {
            details::read(claims.authorization_details.as_ref())?
        } else {
            (
                legacy(claims.mercure.publish),
                legacy(claims.mercure.subscribe),
                claims
                    .mercure
                    .payload
                    .map(|p| vec![(vec![TokenSelector::Legacy("*".into())], p)])
                    .unwrap_or_default(),
            )
        };
        Ok(Grant {
            expires_at: claims.exp,
            publish,
            subscribe,
            payloads,
        })
    }

    /// The one access rule: may the bearer of `token` (if any) do `access` on every one of `topics`?
    /// Answers the verified grant (for its expiry), if a token was sent. A token that is sent is always
    /// verified, even where none is needed.
    pub fn authorize(
        &self,
        access: Access,
        token: Option<&str>,
        topics: &[TopicName],
    ) -> Result<Option<Grant>, AuthError> {
        match access {
            Access::Read => self.authorize_read(token, topics),
            Access::Write => {
                let grant = self.publisher(token, "publishing")?;
                self.check_publish(grant.as_ref(), topics)?;
                Ok(grant)
            }
            Access::Status => {
                let grant = self.publisher(token, "the node's status")?;
                // A publish list that can match no topic (`[]`, `[""]`) makes no publisher.
                if grant
                    .as_ref()
                    .is_some_and(|g| !g.publish.iter().any(TokenSelector::can_match))
                {
                    return Err(AuthError::NotPublisher);
                }
                Ok(grant)
            }
            Access::Presence => {
                let token = token.ok_or(AuthError::Missing("seeing who is subscribed"))?;
                let grant = self.verify(token)?;
                topics
                    .iter()
                    .try_for_each(|topic| allowed_by(&grant.subscribe, topic, "subscribing"))?;
                Ok(Some(grant))
            }
        }
    }

    /// A publisher's verified token; none is needed (`Ok(None)`) only with anonymous publishing on.
    fn publisher(&self, token: Option<&str>, what: &'static str) -> Result<Option<Grant>, AuthError> {
        match token {
            Some(token) => Ok(Some(self.verify(token)?)),
            None if self.anonymous_publish => Ok(None),
            None => Err(AuthError::Missing(what)),
        }
    }

    /// The write rule for a publisher already verified (`Access::Write` without topics, say, before a
    /// body that names them is read): every topic allowed by its token, or none needed.
    pub fn check_publish(&self, grant: Option<&Grant>, topics: &[TopicName]) -> Result<(), AuthError> {
        match grant {
            Some(grant) => topics
                .iter()
                .try_for_each(|topic| allowed_by(&grant.publish, topic, "publishing")),
            None if self.anonymous_publish => Ok(()),
            None => Err(AuthError::Missing("publishing")),
        }
    }

    /// Reading `topics`: private ones need a token listing them; a token, when sent, must be valid.
    fn authorize_read(&self, token: Option<&str>, topics: &[TopicName]) -> Result<Option<Grant>, AuthError> {
        let grant = token.map(|t| self.verify(t)).transpose()?;
        for topic in topics {
            self.check_read(grant.as_ref(), topic)?;
        }
        Ok(grant)
    }

    /// Whether the bearer of `grant` (none: an anonymous caller) may read `topic`: the read rule, for
    /// pages that list topics (`/status.json` names only those its caller could subscribe to).
    pub fn may_read(&self, grant: Option<&Grant>, topic: &TopicName) -> bool {
        self.check_read(grant, topic).is_ok()
    }

    fn check_read(&self, grant: Option<&Grant>, topic: &TopicName) -> Result<(), AuthError> {
        if !self.is_private(topic) {
            return Ok(());
        }
        let Some(grant) = grant else {
            return Err(AuthError::Missing("a private topic"));
        };
        allowed_by(&grant.subscribe, topic, "subscribing")
    }
}

/// Whether the bearer of `grant` may receive a private update of `topics` (Mercure's rule: its
/// subscribe selectors match one of them); an anonymous subscriber receives public updates only.
pub fn may_receive(grant: Option<&Grant>, topics: &[TopicName]) -> bool {
    grant.is_some_and(|g| {
        topics
            .iter()
            .any(|t| g.subscribe.iter().any(|s| s.matches(t.as_str())))
    })
}

/// The signature library's refusal, in words of ours: its own texts name its internals.
fn refusal(e: &jsonwebtoken::errors::Error) -> AuthError {
    use jsonwebtoken::errors::ErrorKind;
    let why = match e.kind() {
        ErrorKind::InvalidToken | ErrorKind::Base64(_) | ErrorKind::Utf8(_) => {
            "it is not a well-formed JWT (three base64url parts: header, claims, signature)"
        }
        ErrorKind::Json(_) => {
            "its header or claims could not be read (an unlisted `alg` such as `none` is refused here too)"
        }
        ErrorKind::InvalidSignature => "its signature does not match this hub's key",
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            "its algorithm is not accepted by this hub (see auth.algorithms and its keys)"
        }
        ErrorKind::ExpiredSignature => "it has expired (exp)",
        ErrorKind::ImmatureSignature => "it is not valid yet (nbf)",
        ErrorKind::InvalidAudience => "it is for another audience (aud)",
        ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => {
            "it names no audience (aud), and this hub requires one"
        }
        ErrorKind::MissingRequiredClaim(_) => "it lacks a required claim",
        _ => "it could not be verified",
    };
    AuthError::Invalid(why.to_string())
}

/// Mints an HS256 token (for `herald token`, tests and scripts).
pub fn mint(secret: &str, claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
}

/// Claims for `publish`/`subscribe` selectors valid for `ttl_secs` from now.
pub fn claims(
    publish: Vec<String>,
    subscribe: Vec<String>,
    ttl_secs: u64,
    audience: Option<String>,
) -> Claims {
    Claims {
        mercure: MercureClaim {
            publish,
            subscribe,
            payload: None,
        },
        exp: Some(now_secs().saturating_add(ttl_secs)),
        aud: audience.map(Audience::One),
    }
}
