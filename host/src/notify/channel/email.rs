//! The email channel: SMTP through lettre, over implicit TLS, STARTTLS
//! (required or opportunistic) or plain text to a loopback relay, with the
//! password read at send time.

use crate::config::{read_secret, EmailConfig, SmtpSecurity};
use crate::notify::send::{DeliveryClass, Letter, SendError};

/// Adds `X-Gitpulse-Event` and `X-Gitpulse-Delivery` to mail.
mod headers {
    use lettre::message::header::{Header, HeaderName, HeaderValue};

    macro_rules! text_header {
        ($ty:ident, $name:literal) => {
            #[derive(Debug, Clone)]
            pub struct $ty(pub String);
            impl Header for $ty {
                fn name() -> HeaderName {
                    HeaderName::new_from_ascii_str($name)
                }
                fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
                    Ok($ty(s.to_string()))
                }
                fn display(&self) -> HeaderValue {
                    HeaderValue::new(Self::name(), self.0.clone())
                }
            }
        };
    }
    text_header!(Event, "X-Gitpulse-Event");
    text_header!(Delivery, "X-Gitpulse-Delivery");
}

/// Sends `letter` by SMTP; the server's answer.
pub(crate) fn send(email: &EmailConfig, letter: &Letter<'_>) -> Result<String, SendError> {
    use lettre::message::{Mailbox, MultiPart};
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
    use lettre::{Message, SmtpTransport, Transport};

    let bad_address = |what: &str, a: &str| {
        SendError::new(
            DeliveryClass::Rejected,
            format!("{what}: `{a}` is not an email address"),
        )
    };
    let mut builder = Message::builder()
        .from(
            email
                .from
                .parse::<Mailbox>()
                .map_err(|_| bad_address("from", &email.from))?,
        )
        .subject(letter.subject)
        .header(headers::Event(letter.kind.to_string()))
        .header(headers::Delivery(letter.delivery_id.to_string()));
    for to in &email.to {
        builder = builder.to(to.parse().map_err(|_| bad_address("to", to))?);
    }
    for cc in &email.cc {
        builder = builder.cc(cc.parse().map_err(|_| bad_address("cc", cc))?);
    }
    let message = match letter.html {
        Some(html) => builder.multipart(MultiPart::alternative_plain_html(
            letter.body.to_string(),
            html.to_string(),
        )),
        None => builder.body(letter.body.to_string()),
    }
    .map_err(|e| {
        SendError::new(
            DeliveryClass::Rejected,
            format!("building the message: {e}"),
        )
    })?;

    let tls_error = |e: lettre::transport::smtp::Error| {
        SendError::new(DeliveryClass::Tls, format!("TLS setup: {e}"))
    };
    let tls = if email.security == SmtpSecurity::Plain {
        Tls::None
    } else {
        let mut params = TlsParameters::builder(email.host.clone());
        if let Some(ca) = &email.ca_file {
            let pem = std::fs::read(ca).map_err(|e| {
                SendError::new(DeliveryClass::Tls, format!("{}: {e}", ca.display()))
            })?;
            let cert = Certificate::from_pem(&pem).map_err(tls_error)?;
            params = params.add_root_certificate(cert);
        }
        let params = params.build_rustls().map_err(tls_error)?;
        match email.security {
            SmtpSecurity::Implicit => Tls::Wrapper(params),
            SmtpSecurity::StartTlsRequired => Tls::Required(params),
            _ => Tls::Opportunistic(params),
        }
    };
    let mut transport = SmtpTransport::builder_dangerous(&email.host)
        .port(email.port)
        .tls(tls)
        .timeout(Some(email.timeout));
    let required = email.security == SmtpSecurity::StartTlsRequired;
    let smtp_error = |e: lettre::transport::smtp::Error| {
        let mut failure = smtp_error(e);
        // lettre says "internal client error" when the server offers no
        // STARTTLS and TLS is required: say what happened and what to do.
        if required && failure.message.contains("internal client") {
            failure.message = "the server does not offer STARTTLS and this notifier has \
                               starttls = \"required\": nothing was sent; use smtps:// if \
                               the server speaks TLS from the start"
                .into();
        }
        failure
    };
    if let (Some(user), Some(password)) = (&email.username, &email.password) {
        let password = read_secret(password).map_err(|e| SendError::new(DeliveryClass::Auth, e))?;
        transport = transport.credentials(Credentials::new(
            user.clone(),
            password.expose().to_string(),
        ));
    }
    let response = transport.build().send(&message).map_err(smtp_error)?;
    Ok(format!(
        "{} {}",
        response.code(),
        response.message().collect::<Vec<_>>().join(" ")
    ))
}

fn smtp_error(e: lettre::transport::smtp::Error) -> SendError {
    let code = e.status().map(|c| c.to_string());
    let text = e.to_string().to_ascii_lowercase();
    // With implicit TLS a refused certificate surfaces as a network error.
    let tls_text = ["certificate", "handshake", "tls"]
        .iter()
        .any(|w| text.contains(w));
    let class = if e.is_timeout() {
        DeliveryClass::Timeout
    } else if e.is_tls() || (tls_text && e.status().is_none()) {
        DeliveryClass::Tls
    } else if e.is_transient() {
        DeliveryClass::Unavailable
    } else if e.is_permanent() {
        match code.as_deref() {
            Some("530" | "534" | "535") => DeliveryClass::Auth,
            _ => DeliveryClass::Rejected,
        }
    } else {
        DeliveryClass::Connect
    };
    // lettre's text can quote the server, never our password.
    SendError::new(class, format!("SMTP: {e}"))
}
