//! TLS to PostgreSQL, by libpq's `sslmode` in the URL (rustls; no OpenSSL linked):
//!
//! | `sslmode` | encrypted | server certificate |
//! |---|---|---|
//! | `disable` (also when absent) | no | — |
//! | `prefer` | if the server offers it, else plain | not checked |
//! | `require` | yes, or the connection fails | not checked (as libpq without a root file) |
//! | `verify-ca` | yes | chains to the CA (`--postgres-ca-file`, else the system's roots) |
//! | `verify-full` | yes | chains to the CA and names the host connected to |
//!
//! tokio-postgres knows only `disable`, `prefer` and `require`, so the mode is taken out of the
//! URL here and the two verifying modes run as `require` with a verifying connector. A required
//! TLS connection never falls back to plain text.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::config::SslMode as PgSslMode;

/// libpq's `sslmode` (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Result<SslMode, String> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            "allow" => return Err("sslmode=allow is not supported; use prefer or require".into()),
            other => return Err(format!("unknown sslmode {other:?}")),
        })
    }
}

/// `url` without its `sslmode` parameter, and the mode (`disable` when absent).
pub fn split_sslmode(url: &str) -> Result<(String, SslMode), String> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_string(), SslMode::Disable));
    };
    let mut mode = SslMode::Disable;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("sslmode", v)) => mode = SslMode::parse(v)?,
            _ => kept.push(pair),
        }
    }
    let url = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((url, mode))
}

/// A connection's TLS: the mode tokio-postgres should use, and the rustls configuration.
pub(crate) fn client_config(
    mode: SslMode,
    ca: Option<&[u8]>,
) -> Result<Option<(PgSslMode, ClientConfig)>, String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pg_mode = match mode {
        SslMode::Disable => return Ok(None),
        SslMode::Prefer => PgSslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => PgSslMode::Require,
    };
    let config = match mode {
        SslMode::VerifyFull => ClientConfig::builder()
            .with_root_certificates(Arc::new(roots(ca)?))
            .with_no_client_auth(),
        _ => {
            // Roots only where a chain is checked: `require` and `prefer` need none.
            let chain = match mode {
                SslMode::VerifyCa => Some(
                    WebPkiServerVerifier::builder(Arc::new(roots(ca)?))
                        .build()
                        .map_err(|e| format!("cannot build the certificate verifier: {e}"))?,
                ),
                _ => None,
            };
            let algorithms =
                rustls::crypto::ring::default_provider().signature_verification_algorithms;
            ClientConfig::builder()
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Verifier { chain, algorithms }))
                .with_no_client_auth()
        }
    };
    Ok(Some((pg_mode, config)))
}

/// The CA file's certificates, or the system's roots.
fn roots(ca: Option<&[u8]>) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    match ca {
        Some(pem) => {
            let mut reader = std::io::Cursor::new(pem);
            for cert in rustls_pemfile_certs(&mut reader)? {
                store
                    .add(cert)
                    .map_err(|e| format!("the PostgreSQL CA file holds a bad certificate: {e}"))?;
            }
            if store.is_empty() {
                return Err("the PostgreSQL CA file holds no certificate".into());
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = store.add(cert);
            }
        }
    }
    Ok(store)
}

/// The PEM certificates of `reader`.
fn rustls_pemfile_certs(
    reader: &mut std::io::Cursor<&[u8]>,
) -> Result<Vec<CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_reader_iter(reader)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the PostgreSQL CA file is not PEM certificates: {e}"))
}

/// `require` (no certificate check) and `verify-ca` (the chain, not the name). The handshake's
/// signatures are checked either way.
#[derive(Debug)]
struct Verifier {
    /// `verify-ca`: the chain is checked with this (the name is not).
    chain: Option<Arc<WebPkiServerVerifier>>,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_is_taken_out_of_the_url() {
        let (url, mode) = split_sslmode("postgres://u@h/db?sslmode=verify-full").unwrap();
        assert_eq!(
            (url.as_str(), mode),
            ("postgres://u@h/db", SslMode::VerifyFull)
        );
        let (url, mode) =
            split_sslmode("postgres://u@h/db?application_name=x&sslmode=require").unwrap();
        assert_eq!(
            (url.as_str(), mode),
            ("postgres://u@h/db?application_name=x", SslMode::Require)
        );
        assert_eq!(
            split_sslmode("postgres://u@h/db").unwrap().1,
            SslMode::Disable
        );
        assert!(split_sslmode("postgres://u@h/db?sslmode=bogus").is_err());
    }
}
