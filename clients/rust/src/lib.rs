//! A ZeroMQ client of the STUI flat session protocol, built the way the
//! upstream STUI Rust client is: a `zmq` REQ socket, `serde_json`, upstream's
//! request/response field names, the lazy-pirate retry pattern and the
//! "restore, else create" reconnect flow. It talks to the `stuisession`
//! bridge (`stuisession serve`) or any server of the same protocol.
//!
//! ```no_run
//! use serde_json::json;
//! use stuisession_client::{Client, ClientOptions};
//!
//! # fn main() -> Result<(), stuisession_client::ClientError> {
//! let mut client = Client::with_options(ClientOptions::new("tcp://127.0.0.1:5555"))?;
//! // restore the session id kept from last time, or create a new one
//! let stored: Option<String> = None;
//! let session = client.restore_or_create("tui-laptop-01", stored.as_deref())?;
//! let id = session.session_id().to_string();
//! client.update_session_state(&id, json!({"workspace": "x := 3 + 4."}))?;
//! let restored = client.restore_session(&stuisession_client::RestoreSessionRequest::new(id))?;
//! assert_eq!(restored.session_state["workspace"], "x := 3 + 4.");
//! # Ok(()) }
//! ```
//!
//! # Wire format
//!
//! One JSON text per ZeroMQ frame, one reply per request. Request:
//! `{"id", "command", "parameters"}` ([`Envelope`]). Reply ([`Response`]):
//! `id` (echoed), `status` (`"success"` or `"error"`), then `result`, or
//! `error` + `error_type`, and `timestamp`. Error replies may carry the
//! additive `error_code` (the bridge's finer type) and `details`.
//!
//! # Socket and retries
//!
//! Defaults, as upstream: endpoint `tcp://localhost:5555`, `RCVTIMEO` and
//! `SNDTIMEO` 5000 ms, `LINGER` 1000 ms, 3 tries 1 s apart; all in
//! [`ClientOptions`]. On a timeout the REQ socket is closed, a new one
//! connects and the same request (same `id`, same bytes) is resent; after
//! the last try the call fails with [`ClientError::Timeout`]. The bridge
//! remembers the reply of every state-changing request for five minutes and
//! answers a resend with it, so a resend is not applied twice. (That memory
//! lives in the bridge process: a copy that was applied just before the
//! bridge was killed and is resent to the restarted bridge is applied again.
//! For `update_session_state`, which replaces the state, the state is the
//! same either way; only the additive `revision` counts it twice.)
//!
//! # Error mapping
//!
//! | reply / failure | [`ClientError`] | what to do |
//! |---|---|---|
//! | `error_type: "SessionNotFound"` (unknown, another client's, expired, closed, or an id in a format the bridge does not issue) | `Server` with [`ErrorType::SessionNotFound`] | create a new session ([`Client::restore_or_create`] does) |
//! | `error_type: "SessionError"` (missing or invalid parameter, session limit, refused client) | `Server` with [`ErrorType::SessionError`] | fix the request; see `error_code` (`ValidationError`, `RateLimited`, ...) |
//! | `error_type: "RuntimeError"` (internal failure) | `Server` with [`ErrorType::RuntimeError`] | retry later |
//! | `error_type: "Error"` or missing | `Server` with [`ErrorType::Error`] | generic |
//! | any other `error_type` (a bridge older than the upstream mapping) | `Server` with [`ErrorType::Other`] | look at the string |
//! | no reply after every try | `Timeout` | the server is down or unreachable |
//! | reply not UTF-8 / not JSON / other id / result missing fields | `Protocol` | a bug or a foreign server |
//! | ZeroMQ refused a call (bad endpoint, ...) | `Zmq` | |
//! | bad options (CURVE key not 40 Z85 characters) | `Config` | |
//!
//! Only `SessionNotFound` makes [`Client::restore_or_create`] create a new
//! session; every other error is returned.
//!
//! # Integers beyond 64 bits
//!
//! The session state is a [`serde_json::Value`]. This crate builds
//! `serde_json` without `arbitrary_precision` (and with `float_roundtrip`,
//! so every float comes back as the exact `f64` that was stored). What that
//! means for integers a client of another language may have stored:
//!
//! * every integer from `i64::MIN` to `u64::MAX` comes back exactly
//!   (`Number::as_i64` / `as_u64`);
//! * an integer outside that range but within `f64`'s range comes back as
//!   the nearest `f64` (`Number::is_f64()` is true, digits are lost:
//!   `18446744073709551616` reads as `1.8446744073709552e19`);
//! * an integer beyond `f64`'s range (about 309 digits or more) makes the
//!   whole reply undecodable: the call fails with [`ClientError::Protocol`].
//!
//! Writing such a value back through this crate stores the `f64`, not the
//! original integer. To keep big integers exact, read the reply text with
//! [`Client::roundtrip_text`] and parse it with a parser that keeps them
//! (e.g. `serde_json` with `arbitrary_precision`).
//!
//! # CURVE
//!
//! [`ClientOptions::curve`] sets `CURVE_SERVERKEY`, `CURVE_PUBLICKEY` and
//! `CURVE_SECRETKEY` (40-character Z85 keys) on every socket. The bridge must
//! be started with CURVE (`stuisession serve --curve-secret FILE
//! --curve-clients FILE`, keys from `stuisession keys curve-server` /
//! `curve-client`). A key on no allow-list is refused at the handshake, so
//! calls end in [`ClientError::Timeout`]; a key acts only as the client ids
//! it is bound to, and another client's session answers `SessionNotFound`.
//!
//! # Watching a session
//!
//! [`Watch`] keeps a local copy of a session in sync with the bridge's change
//! notices (`stuisession serve --notify ENDPOINT`): a SUB socket subscribed
//! with the token of `watch_session`, and one `restore_session` with
//! `since_revision` per burst of notices (see the [`watch`] module).
//!
//! # Building offline
//!
//! The crate builds from Debian's crate packages, without crates.io:
//! `install-deps.sh` installs them (into `/usr/share/cargo/registry`) and
//! `.cargo/config.toml` replaces crates.io with that directory and sets
//! `offline = true`. See `README.md`.

// compile (not run) the README's Rust examples with `cargo test`
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

mod client;
mod error;
pub mod protocol;
pub mod watch;

pub use client::{
    Client, ClientOptions, CurveKeys, Reconnected, DEFAULT_ENDPOINT, DEFAULT_LINGER,
    DEFAULT_MAX_TRIES, DEFAULT_RETRY_DELAY, DEFAULT_TIMEOUT,
};
pub use error::{ClientError, ErrorType, ServerError};
pub use protocol::{
    CloseSessionRequest, CloseSessionResponse, Command, CreateSessionRequest,
    CreateSessionResponse, Envelope, GetSessionInfoRequest, GetSessionInfoResponse,
    GetSessionStatisticsRequest, GetSessionStatisticsResponse, ListClientSessionsRequest,
    ListClientSessionsResponse, Response, RestoreSessionRequest, RestoreSessionResponse,
    SessionSummary, UpdateSessionStateRequest, UpdateSessionStateResponse,
};
pub use watch::Watch;
