//! `[auth]`: who may publish and subscribe, and how tokens are checked.

use std::time::Duration;

use serde::Deserialize;

use super::{check, seconds, ConfigError, Secret};

#[derive(Debug, Clone, Deserialize)]
pub struct AuthSettings {
    pub anonymous_publish: bool,
    pub private_topics: Vec<String>,
    pub hs_secret: Secret,
    pub rsa_public_key_file: String,
    pub ec_public_key_file: String,
    pub algorithms: Vec<String>,
    pub audience: String,
    /// When set, tokens must carry this `iss` (Mercure 1.0 access tokens name their issuer).
    pub issuer: String,
    #[serde(deserialize_with = "seconds")]
    pub leeway_secs: Duration,
    pub cookie_name: String,
}

impl AuthSettings {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        check(
            self.hs_secret.is_empty() || self.hs_secret.expose().len() >= 32,
            "auth.hs_secret",
            "(hidden)",
            "use at least 32 random bytes (e.g. `openssl rand -base64 48`)",
        )?;
        let has_key = !self.hs_secret.is_empty()
            || !self.rsa_public_key_file.is_empty()
            || !self.ec_public_key_file.is_empty();
        check(
            self.anonymous_publish || has_key,
            "auth.anonymous_publish",
            false,
            "nobody could publish: configure auth.hs_secret or a public key file, or allow anonymous publishing",
        )?;
        check(
            self.leeway_secs <= Duration::from_secs(600),
            "auth.leeway_secs",
            self.leeway_secs.as_secs(),
            "use 0 to 600 seconds",
        )?;
        check(
            !self.cookie_name.is_empty()
                && self
                    .cookie_name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
            "auth.cookie_name",
            &self.cookie_name,
            "use letters, digits, _ and -",
        )?;
        Ok(())
    }
}
