//! TLS to the database server: what the URL's `sslmode` asks for, and a
//! certificate verified whenever TLS is used — against the bundled web
//! roots, the operating system's store (`SSL_CERT_FILE`/`SSL_CERT_DIR`
//! included) and `[store] ca_file`. Unlike libpq's `prefer`/`require`, a
//! certificate nobody vouches for is refused, not used unverified.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio_postgres_rustls::MakeRustlsConnect;

/// The connector for every connection of a store; `ca_file` (PEM) is
/// trusted besides the usual roots.
pub(super) fn connector(ca_file: Option<&Path>) -> Result<MakeRustlsConnect, String> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    // A store that cannot be read adds nothing; the web roots and ca_file
    // still apply.
    let native = rustls_native_certs::load_native_certs();
    let _ = roots.add_parsable_certificates(native.certs);
    if let Some(file) = ca_file {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(file)
            .map_err(|e| format!("ca_file {}: {e}", file.display()))?
            .collect::<Result<_, _>>()
            .map_err(|e| format!("ca_file {}: {e}", file.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "ca_file {}: no PEM certificate in it",
                file.display()
            ));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("ca_file {}: {e}", file.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// What to add to a failed connection's message when the certificate was
/// the problem.
pub(super) fn hint(message: &str) -> &'static str {
    if message.contains("certificate") {
        " (the server's certificate is not trusted: give its CA with [store] ca_file; for a server on this host, sslmode=disable in the URL turns TLS off)"
    } else {
        ""
    }
}
