//! `[mercure]`: Herald as a Mercure hub (`/.well-known/mercure`).

use serde::Deserialize;

use super::{check, ConfigError};

#[derive(Debug, Clone, Deserialize)]
pub struct MercureSettings {
    /// The hub's URL as browsers reach it, named in the `Link: <…>; rel="mercure"` header of native
    /// answers about a topic; empty: the hub path on the request's own origin.
    pub public_url: String,
}

impl MercureSettings {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let url = &self.public_url;
        check(
            url.is_empty()
                || ((url.starts_with("https://") || url.starts_with("http://"))
                    && !url.contains(['<', '>', '"', ' ', ','])
                    && !url.chars().any(char::is_control)),
            "mercure.public_url",
            url,
            "use an absolute http(s) URL such as https://hub.example.com/.well-known/mercure, or leave it empty",
        )
    }
}
