//! What the front door makes of a complete first head: httparse's verdict, the checks actix-http would
//! answer with a bare 400 (target, `Host`, message framing), and whether the lean path serves it.

use actix_web::http::{StatusCode, Uri};

use super::lean::OwnedHead;

/// The largest first request head accepted, in bytes up to and including its blank line; a longer one
/// is answered 431.
pub(super) const MAX_HEAD: usize = 32 * 1024;
/// Headers per request (as actix-http's own limit); more are answered 431.
const MAX_HEADERS: usize = 96;

/// How a connection's first head reads.
pub(super) enum First {
    /// Anything for actix-web.
    Pass,
    /// A stream request for the lean path (see `lean::ROUTES`): the head's length and what the stream
    /// logic reads of it.
    Stream(usize, Box<OwnedHead>),
    /// A head no route will see: answered here, then the connection is closed.
    Refuse(StatusCode, &'static str, String),
    /// The client left, or sent nothing before the head timeout.
    Gone,
}

/// What a complete (or broken) head says, or `None` if httparse still finds it incomplete. Not async:
/// the parser's header array (3 KiB) lives on the stack for the call only, never in a connection's
/// future.
pub(super) fn read_head(bytes: &[u8], lean: bool) -> Option<First> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    Some(match req.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => match check_framing(&req) {
            Err(refusal) => refusal,
            Ok(uri) => match lean.then(|| OwnedHead::for_stream(&req, &uri)).flatten() {
                Some(head) => First::Stream(len, Box::new(head)),
                None => First::Pass,
            },
        },
        Ok(httparse::Status::Partial) => return None,
        Err(httparse::Error::TooManyHeaders) => First::Refuse(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers-too-large",
            format!("the request has more than {MAX_HEADERS} header fields; send fewer"),
        ),
        Err(httparse::Error::Version) if !names_another_version(bytes) => {
            malformed("the request line must be: method, one space, target, one space, HTTP/1.1")
        }
        Err(httparse::Error::Version) => First::Refuse(
            StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            "http-version-not-supported",
            "this listener speaks HTTP/1.0 and HTTP/1.1 (HTTP/2 is offered over HTTPS, by ALPN)".into(),
        ),
        Err(e) => malformed(&format!("{e}; check the request line and header syntax")),
    })
}

/// The checks actix-web's parser makes of a complete head, which it would answer with a bare 400: a bad
/// target, a missing or repeated `Host`, and message framing a request could be smuggled through.
fn check_framing(req: &httparse::Request<'_, '_>) -> Result<Uri, First> {
    let bad = |code: &'static str, detail: &str| {
        Err(First::Refuse(StatusCode::BAD_REQUEST, code, detail.to_string()))
    };
    let target = req.path.unwrap_or("");
    let Ok(uri) = Uri::try_from(target) else {
        return bad(
            "bad-target",
            "the request target is not a valid URI; percent-encode reserved characters (a topic in a path as %2F for /)",
        );
    };
    // Asterisk and authority forms (`OPTIONS *`, `CONNECT host:443`) name no resource here: actix would
    // answer them a bare 404.
    if !target.starts_with('/') && uri.scheme().is_none() {
        return bad(
            "bad-target",
            "the request target must be a path such as /events?topic=news (or an absolute URI); this hub serves no `*` or host:port targets",
        );
    }
    let http11 = req.version == Some(1);
    let count = |name: &str| {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .count()
    };
    match count("host") {
        0 if http11 => return bad("missing-host", "an HTTP/1.1 request must carry a Host header"),
        0 | 1 => {}
        _ => return bad("bad-host", "the request has more than one Host header; send one"),
    }
    let value = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
    };
    let content_length = value("content-length");
    if count("content-length") > 1
        || content_length
            .as_deref()
            .is_some_and(|v| v.starts_with('+') || v.parse::<u64>().is_err())
    {
        return bad(
            "bad-content-length",
            "Content-Length must appear once, as a decimal number of bytes",
        );
    }
    if let Some(coding) = value("transfer-encoding") {
        if !http11 {
            return bad(
                "bad-transfer-encoding",
                "HTTP/1.0 has no Transfer-Encoding; send Content-Length",
            );
        }
        // `identity` is no transfer coding (RFC 9112 dropped it); actix-http would answer it a bare 400.
        if count("transfer-encoding") > 1 || !coding.eq_ignore_ascii_case("chunked") {
            return bad(
                "bad-transfer-encoding",
                "Transfer-Encoding must appear once, as chunked (identity is no transfer coding); or send Content-Length instead",
            );
        }
        if content_length.is_some() {
            return bad(
                "bad-transfer-encoding",
                "send Content-Length or Transfer-Encoding, not both",
            );
        }
    }
    if !http11 && req.method == Some("POST") && content_length.is_none() {
        return Err(First::Refuse(
            StatusCode::LENGTH_REQUIRED,
            "length-required",
            "an HTTP/1.0 POST must say its body's length in Content-Length".into(),
        ));
    }
    Ok(uri)
}

pub(super) fn malformed(why: &str) -> First {
    First::Refuse(
        StatusCode::BAD_REQUEST,
        "malformed-request",
        format!("the request head is not valid HTTP/1.1: {why}"),
    )
}

/// Whether a request line is well formed but for its version (`GET / HTTP/2.0`): that is 505, while a
/// line that merely fails to end in a version (a space in the target) is malformed.
fn names_another_version(head: &[u8]) -> bool {
    let line = head.split(|&b| b == b'\r' || b == b'\n').next().unwrap_or(&[]);
    let parts: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    match parts.as_slice() {
        [_, _, version] => version
            .strip_prefix(b"HTTP/")
            .is_some_and(|v| !v.is_empty() && v.iter().all(|b| b.is_ascii_digit() || *b == b'.')),
        _ => false,
    }
}

pub(super) fn head_too_large() -> First {
    First::Refuse(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "headers-too-large",
        format!(
            "the request head is over {} KiB; send shorter headers (a long token belongs in a cookie or the body, not in many headers)",
            MAX_HEAD / 1024
        ),
    )
}
