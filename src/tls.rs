//! Serving HTTPS: the certificate and key from `server.tls_cert_file` / `server.tls_key_file` (PEM),
//! through rustls with ring; ALPN offers `h2` and `http/1.1`, so browsers multiplex every `EventSource`
//! of an origin over one connection. The pair is read again on SIGHUP: new handshakes use the new
//! certificate, while established connections (and their streams) carry on.

use std::sync::{Arc, RwLock};

use rustls::crypto::ring::default_provider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("server.tls_cert_file {path}: {reason}")]
    Certificate { path: String, reason: String },
    #[error("server.tls_key_file {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("server.tls_cert_file and server.tls_key_file do not go together: {0}")]
    Pair(String),
}

/// The certificate in use, swapped whole on reload.
#[derive(Debug)]
pub struct Certificates {
    cert_file: String,
    key_file: String,
    current: RwLock<Arc<CertifiedKey>>,
}

impl Certificates {
    pub fn load(cert_file: &str, key_file: &str) -> Result<Arc<Self>, TlsError> {
        Ok(Arc::new(Certificates {
            cert_file: cert_file.to_string(),
            key_file: key_file.to_string(),
            current: RwLock::new(Arc::new(read_pair(cert_file, key_file)?)),
        }))
    }

    /// Reads the files again; on any error the certificate in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let pair = Arc::new(read_pair(&self.cert_file, &self.key_file)?);
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = pair;
        Ok(())
    }

    pub fn server_config(self: &Arc<Self>) -> Result<ServerConfig, TlsError> {
        let config = ServerConfig::builder_with_provider(Arc::new(default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Pair(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        Ok(config)
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        ))
    }
}

fn read_pair(cert_file: &str, key_file: &str) -> Result<CertifiedKey, TlsError> {
    let cert_error = |reason: String| TlsError::Certificate {
        path: cert_file.to_string(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| cert_error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_error(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_error("holds no PEM certificate".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| TlsError::Key {
        path: key_file.to_string(),
        reason: e.to_string(),
    })?;
    let key = default_provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::Key {
            path: key_file.to_string(),
            reason: e.to_string(),
        })?;
    let pair = CertifiedKey::new(chain, key);
    pair.keys_match().map_err(|e| TlsError::Pair(e.to_string()))?;
    Ok(pair)
}
