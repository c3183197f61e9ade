//! Errors of the client, and how the bridge's error replies map onto them.

use std::fmt;
use std::time::Duration;

use serde_json::Value;

use crate::protocol::Response;

/// The four `error_type` values upstream STUI documents, plus anything else
/// a server may send (kept verbatim in [`ErrorType::Other`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ErrorType {
    /// Missing or invalid parameters, policy refusals (session limit,
    /// allow/deny list): fix the request; retrying it as is will not help.
    SessionError,
    /// The session is missing or can not be brought back (unknown, another
    /// client's, expired, closed, or an id in a format the bridge never
    /// issues): create a new session.
    SessionNotFound,
    /// An internal failure of the server.
    RuntimeError,
    /// Generic fallback.
    Error,
    /// Any other string (an older bridge, or a server that is not upstream-conformant).
    Other(String),
}

impl ErrorType {
    /// Parse a wire `error_type`.
    pub fn parse(s: &str) -> ErrorType {
        match s {
            "SessionError" => ErrorType::SessionError,
            "SessionNotFound" => ErrorType::SessionNotFound,
            "RuntimeError" => ErrorType::RuntimeError,
            "Error" => ErrorType::Error,
            other => ErrorType::Other(other.to_string()),
        }
    }

    /// The wire spelling.
    pub fn as_str(&self) -> &str {
        match self {
            ErrorType::SessionError => "SessionError",
            ErrorType::SessionNotFound => "SessionNotFound",
            ErrorType::RuntimeError => "RuntimeError",
            ErrorType::Error => "Error",
            ErrorType::Other(s) => s,
        }
    }

    /// True for the four types upstream documents.
    pub fn is_upstream(&self) -> bool {
        !matches!(self, ErrorType::Other(_))
    }
}

impl fmt::Display for ErrorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error reply of the server (`status: "error"`).
#[derive(Debug, Clone, PartialEq)]
pub struct ServerError {
    /// The request id the reply echoed.
    pub id: Value,
    /// `error`: the human-readable message.
    pub message: String,
    /// `error_type`, parsed.
    pub error_type: ErrorType,
    /// Additive `error_code`: the bridge's finer type (e.g. `ValidationError`,
    /// `AccessDenied`, `Conflict`, `RateLimited`), when sent.
    pub error_code: Option<String>,
    /// Additive `details` object, when sent.
    pub details: Option<Value>,
    /// `timestamp` of the reply.
    pub timestamp: Option<String>,
}

impl ServerError {
    /// Build from an error reply. A reply without `error_type` maps to
    /// [`ErrorType::Error`], upstream's generic fallback.
    pub fn from_response(response: &Response) -> ServerError {
        ServerError {
            id: response.id.clone(),
            message: response
                .error
                .clone()
                .unwrap_or_else(|| "error".to_string()),
            error_type: response
                .error_type
                .as_deref()
                .map(ErrorType::parse)
                .unwrap_or(ErrorType::Error),
            error_code: response.error_code.clone(),
            details: response.details.clone(),
            timestamp: response.timestamp.clone(),
        }
    }

    /// True when the reconnect flow should create a new session.
    pub fn is_session_not_found(&self) -> bool {
        self.error_type == ErrorType::SessionNotFound
    }
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.error_type, self.message)?;
        if let Some(code) = &self.error_code {
            write!(f, " ({})", code)?;
        }
        Ok(())
    }
}

/// Everything a call can fail with.
#[derive(Debug)]
pub enum ClientError {
    /// The server answered with an error reply (boxed: keeps `Result`s small).
    Server(Box<ServerError>),
    /// No reply after every try (the lazy-pirate pattern gave up). Each try
    /// used a fresh REQ socket and the same request id.
    Timeout {
        endpoint: String,
        command: String,
        request_id: String,
        tries: u32,
        timeout: Duration,
    },
    /// A ZeroMQ call failed (bad endpoint, bad CURVE key, ...).
    Zmq(zmq::Error),
    /// The reply could not be used: not UTF-8, not JSON, an id other than the
    /// request's, or a `result` that does not have the documented fields.
    /// Also raised when a reply holds an integer beyond the range of `f64`
    /// (see the crate docs on big integers).
    Protocol(String),
    /// Invalid client options (e.g. a CURVE key that is not 40 Z85 characters).
    Config(String),
}

impl ClientError {
    /// The server error, if this is one.
    pub fn server(&self) -> Option<&ServerError> {
        match self {
            ClientError::Server(e) => Some(&**e),
            _ => None,
        }
    }

    /// True for a server reply with `error_type == "SessionNotFound"`.
    pub fn is_session_not_found(&self) -> bool {
        self.server()
            .map_or(false, ServerError::is_session_not_found)
    }

    /// True when every try timed out.
    pub fn is_timeout(&self) -> bool {
        matches!(self, ClientError::Timeout { .. })
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Server(e) => write!(f, "server error: {}", e),
            ClientError::Timeout {
                endpoint,
                command,
                request_id,
                tries,
                timeout,
            } => write!(
                f,
                "no reply from {} to {} (request id {}) after {} tries of {} ms each",
                endpoint,
                command,
                request_id,
                tries,
                timeout.as_millis()
            ),
            ClientError::Zmq(e) => write!(f, "ZeroMQ error: {}", e),
            ClientError::Protocol(m) => write!(f, "protocol error: {}", m),
            ClientError::Config(m) => write!(f, "invalid client options: {}", m),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Zmq(e) => Some(e),
            _ => None,
        }
    }
}

impl From<zmq::Error> for ClientError {
    fn from(e: zmq::Error) -> Self {
        ClientError::Zmq(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(json: &str) -> ServerError {
        ServerError::from_response(&serde_json::from_str(json).unwrap())
    }

    #[test]
    fn the_four_upstream_types_parse_and_others_are_kept() {
        for (s, t) in [
            ("SessionError", ErrorType::SessionError),
            ("SessionNotFound", ErrorType::SessionNotFound),
            ("RuntimeError", ErrorType::RuntimeError),
            ("Error", ErrorType::Error),
        ] {
            assert_eq!(ErrorType::parse(s), t);
            assert_eq!(t.as_str(), s);
            assert!(t.is_upstream());
        }
        let other = ErrorType::parse("ValidationError");
        assert_eq!(other, ErrorType::Other("ValidationError".into()));
        assert!(!other.is_upstream());
        assert_eq!(other.to_string(), "ValidationError");
    }

    #[test]
    fn server_errors_map_from_replies() {
        let e = reply(
            r#"{"id":"r","status":"error","error":"gone","error_type":"SessionNotFound",
                "error_code":"AccessDenied","timestamp":"t"}"#,
        );
        assert!(e.is_session_not_found());
        assert_eq!(e.error_code.as_deref(), Some("AccessDenied"));
        assert_eq!(e.to_string(), "SessionNotFound: gone (AccessDenied)");
        let client_error = ClientError::Server(Box::new(e));
        assert!(client_error.is_session_not_found());
        assert!(!client_error.is_timeout());

        // no error_type at all: upstream's generic fallback
        let e = reply(r#"{"id":"r","status":"error"}"#);
        assert_eq!(e.error_type, ErrorType::Error);
        assert_eq!(e.message, "error");
        assert!(!e.is_session_not_found());
    }
}
