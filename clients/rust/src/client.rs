//! The REQ-socket client with the lazy-pirate pattern and the reconnect flow.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::thread;
use std::time::Duration;

use serde_json::Value;

use crate::error::{ClientError, ServerError};
use crate::protocol::{
    CloseSessionRequest, CloseSessionResponse, Command, CreateSessionRequest,
    CreateSessionResponse, Envelope, GetSessionInfoRequest, GetSessionInfoResponse,
    GetSessionStatisticsRequest, GetSessionStatisticsResponse, ListClientSessionsRequest,
    ListClientSessionsResponse, Response, RestoreSessionRequest, RestoreSessionResponse,
    UpdateSessionStateRequest, UpdateSessionStateResponse,
};

/// Upstream's default endpoint.
pub const DEFAULT_ENDPOINT: &str = "tcp://localhost:5555";
/// Upstream's request timeout (`RCVTIMEO` and `SNDTIMEO`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(5000);
/// Upstream's `LINGER`.
pub const DEFAULT_LINGER: Duration = Duration::from_millis(1000);
/// Upstream's number of tries before giving up.
pub const DEFAULT_MAX_TRIES: u32 = 3;
/// Upstream's pause between two tries.
pub const DEFAULT_RETRY_DELAY: Duration = Duration::from_millis(1000);

/// CURVE keys of the client, each 40 characters of Z85 (as `zmq_curve_keypair`
/// and `stuisession` key files print them).
#[derive(Clone, PartialEq, Eq)]
pub struct CurveKeys {
    /// The server's long-term public key.
    pub server_public_key: String,
    /// This client's public key.
    pub public_key: String,
    /// This client's secret key.
    pub secret_key: String,
}

impl std::fmt::Debug for CurveKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // never print the secret key
        f.debug_struct("CurveKeys")
            .field("server_public_key", &self.server_public_key)
            .field("public_key", &self.public_key)
            .field("secret_key", &"<redacted>")
            .finish()
    }
}

/// Connection options; [`Default`] gives upstream's values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOptions {
    /// Where the bridge listens (default `tcp://localhost:5555`).
    pub endpoint: String,
    /// `RCVTIMEO`/`SNDTIMEO` of each try (default 5000 ms).
    pub timeout: Duration,
    /// `LINGER` of each socket (default 1000 ms).
    pub linger: Duration,
    /// Tries per request, the first included (default 3).
    pub max_tries: u32,
    /// Pause between two tries (default 1000 ms).
    pub retry_delay: Duration,
    /// CURVE encryption and authentication (default off).
    pub curve: Option<CurveKeys>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            endpoint: DEFAULT_ENDPOINT.to_string(),
            timeout: DEFAULT_TIMEOUT,
            linger: DEFAULT_LINGER,
            max_tries: DEFAULT_MAX_TRIES,
            retry_delay: DEFAULT_RETRY_DELAY,
            curve: None,
        }
    }
}

impl ClientOptions {
    /// Upstream's defaults with another endpoint.
    pub fn new(endpoint: impl Into<String>) -> Self {
        ClientOptions {
            endpoint: endpoint.into(),
            ..Default::default()
        }
    }

    /// Set the per-try timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Set `LINGER`.
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// Set the number of tries (at least 1).
    pub fn max_tries(mut self, tries: u32) -> Self {
        self.max_tries = tries;
        self
    }

    /// Set the pause between tries.
    pub fn retry_delay(mut self, delay: Duration) -> Self {
        self.retry_delay = delay;
        self
    }

    /// Turn on CURVE with these keys.
    pub fn curve(mut self, keys: CurveKeys) -> Self {
        self.curve = Some(keys);
        self
    }
}

/// What [`Client::restore_or_create`] ended with.
#[derive(Debug, Clone, PartialEq)]
pub enum Reconnected {
    /// The stored session was restored.
    Restored(RestoreSessionResponse),
    /// A new session was created: there was no stored id (`not_found` is
    /// `None`), or restoring it answered `SessionNotFound` (that reply).
    Created {
        session: CreateSessionResponse,
        not_found: Option<ServerError>,
    },
}

impl Reconnected {
    /// The session id to keep using.
    pub fn session_id(&self) -> &str {
        match self {
            Reconnected::Restored(r) => &r.session_id,
            Reconnected::Created { session, .. } => &session.session_id,
        }
    }

    /// True when the stored session came back.
    pub fn was_restored(&self) -> bool {
        matches!(self, Reconnected::Restored(_))
    }
}

/// A client of the STUI session protocol over one ZeroMQ REQ socket.
///
/// Every call is one request and one reply. When no reply comes within
/// [`ClientOptions::timeout`], the socket (unusable after a lost reply) is
/// closed, a new one connects, and the *same* request with the *same* id is
/// sent again, up to [`ClientOptions::max_tries`] tries in all; then the call
/// fails with [`ClientError::Timeout`]. The bridge answers a resent
/// state-changing request with the first copy's reply, so a resend is never
/// applied twice.
pub struct Client {
    // declared before `context`: sockets close before the context terminates
    socket: Option<zmq::Socket>,
    context: zmq::Context,
    options: ClientOptions,
    curve: Option<[Vec<u8>; 3]>,
    prefix: String,
    counter: u64,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("options", &self.options)
            .field("connected", &self.socket.is_some())
            .finish()
    }
}

fn decode_key(name: &str, key: &str) -> Result<Vec<u8>, ClientError> {
    if key.len() != 40 {
        return Err(ClientError::Config(format!(
            "CURVE {} must be 40 Z85 characters, not {}",
            name,
            key.len()
        )));
    }
    let bytes = zmq::z85_decode(key)
        .map_err(|e| ClientError::Config(format!("CURVE {} is not Z85: {}", name, e)))?;
    if bytes.len() != 32 {
        return Err(ClientError::Config(format!(
            "CURVE {} decodes to {} bytes, not 32",
            name,
            bytes.len()
        )));
    }
    Ok(bytes)
}

fn millis(d: Duration) -> i32 {
    d.as_millis().min(i32::MAX as u128) as i32
}

impl Client {
    /// A client with upstream's defaults for `endpoint`.
    pub fn new(endpoint: impl Into<String>) -> Result<Client, ClientError> {
        Client::with_options(ClientOptions::new(endpoint))
    }

    /// A client with these options. Connects a first socket right away, so a
    /// malformed endpoint or CURVE key fails here (a server that is not there
    /// does not: ZeroMQ connects in the background).
    pub fn with_options(options: ClientOptions) -> Result<Client, ClientError> {
        if options.max_tries == 0 {
            return Err(ClientError::Config("max_tries must be at least 1".into()));
        }
        let curve = match &options.curve {
            None => None,
            Some(keys) => {
                if zmq::has("curve") == Some(false) {
                    return Err(ClientError::Config(
                        "this libzmq was built without CURVE support".into(),
                    ));
                }
                Some([
                    decode_key("server_public_key", &keys.server_public_key)?,
                    decode_key("public_key", &keys.public_key)?,
                    decode_key("secret_key", &keys.secret_key)?,
                ])
            }
        };
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        let prefix = format!("rs-{:016x}", hasher.finish());
        let mut client = Client {
            socket: None,
            context: zmq::Context::new(),
            options,
            curve,
            prefix,
            counter: 0,
        };
        client.socket = Some(client.open_socket()?);
        Ok(client)
    }

    /// The options in force.
    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// The ZeroMQ context (a [`crate::Watch`] opens its SUB socket in it).
    pub(crate) fn context(&self) -> &zmq::Context {
        &self.context
    }

    /// Decoded CURVE keys (server public, public, secret), when CURVE is on.
    pub(crate) fn curve_keys(&self) -> Option<&[Vec<u8>; 3]> {
        self.curve.as_ref()
    }

    /// A fresh request id (`rs-<random>-<counter>`), unique per client.
    pub fn next_request_id(&mut self) -> String {
        self.counter += 1;
        format!("{}-{}", self.prefix, self.counter)
    }

    fn open_socket(&self) -> Result<zmq::Socket, ClientError> {
        let socket = self.context.socket(zmq::REQ)?;
        socket.set_linger(millis(self.options.linger))?;
        socket.set_rcvtimeo(millis(self.options.timeout))?;
        socket.set_sndtimeo(millis(self.options.timeout))?;
        if let Some([server, public, secret]) = &self.curve {
            socket.set_curve_serverkey(server)?;
            socket.set_curve_publickey(public)?;
            socket.set_curve_secretkey(secret)?;
        }
        socket.connect(&self.options.endpoint)?;
        Ok(socket)
    }

    /// Send one request body and return the reply text, with the lazy-pirate
    /// retries. `command` and `request_id` only label a timeout error; the
    /// body is sent byte for byte on every try.
    ///
    /// Use this to read replies holding integers beyond 64 bits with a
    /// parser of your choice (see the crate docs).
    pub fn roundtrip_text(
        &mut self,
        command: &str,
        request_id: &str,
        body: &str,
    ) -> Result<String, ClientError> {
        for attempt in 1..=self.options.max_tries {
            let socket = match self.socket.take() {
                Some(s) => s,
                None => self.open_socket()?,
            };
            match socket.send(body.as_bytes(), 0) {
                Ok(()) => {}
                Err(zmq::Error::EAGAIN) => {
                    drop(socket);
                    if attempt < self.options.max_tries {
                        thread::sleep(self.options.retry_delay);
                    }
                    continue;
                }
                Err(e) => return Err(e.into()), // the socket is dropped: the next call starts clean
            }
            match socket.recv_bytes(0) {
                Ok(bytes) => {
                    self.socket = Some(socket);
                    return String::from_utf8(bytes)
                        .map_err(|_| ClientError::Protocol("reply is not valid UTF-8".into()));
                }
                Err(zmq::Error::EAGAIN) => {
                    // a REQ socket that lost its reply can not send again: drop it,
                    // reconnect on the next try and resend the same request
                    drop(socket);
                    if attempt < self.options.max_tries {
                        thread::sleep(self.options.retry_delay);
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(ClientError::Timeout {
            endpoint: self.options.endpoint.clone(),
            command: command.to_string(),
            request_id: request_id.to_string(),
            tries: self.options.max_tries,
            timeout: self.options.timeout,
        })
    }

    /// Send one envelope (lazy pirate) and decode the reply, success or error.
    /// Fails with [`ClientError::Protocol`] when the reply is not a JSON
    /// response or echoes another id.
    pub fn roundtrip(&mut self, envelope: &Envelope) -> Result<Response, ClientError> {
        let body = serde_json::to_string(envelope)
            .map_err(|e| ClientError::Protocol(format!("could not encode the request: {}", e)))?;
        let text = self.roundtrip_text(&envelope.command, &envelope.id, &body)?;
        let response: Response = serde_json::from_str(&text)
            .map_err(|e| ClientError::Protocol(format!("reply is not a JSON response: {}", e)))?;
        if response.id != Value::String(envelope.id.clone()) {
            return Err(ClientError::Protocol(format!(
                "reply id {} does not match request id {:?}",
                response.id, envelope.id
            )));
        }
        Ok(response)
    }

    /// Send `command` with `parameters` under a fresh id; the `result` of a
    /// success reply, or [`ClientError::Server`] for an error reply.
    pub fn call_value(&mut self, command: &str, parameters: Value) -> Result<Value, ClientError> {
        let envelope = Envelope {
            id: self.next_request_id(),
            command: command.to_string(),
            parameters,
        };
        let response = self.roundtrip(&envelope)?;
        if !response.is_success() {
            return Err(ClientError::Server(Box::new(ServerError::from_response(
                &response,
            ))));
        }
        response.result.ok_or_else(|| {
            ClientError::Protocol(format!("success reply to {} has no result", command))
        })
    }

    /// Send a typed request; its typed result.
    pub fn call<C: Command>(&mut self, request: &C) -> Result<C::Response, ClientError> {
        let parameters = serde_json::to_value(request)
            .map_err(|e| ClientError::Protocol(format!("could not encode the request: {}", e)))?;
        let result = self.call_value(C::NAME, parameters)?;
        serde_json::from_value(result)
            .map_err(|e| ClientError::Protocol(format!("unexpected result of {}: {}", C::NAME, e)))
    }

    // -- the seven session commands -------------------------------------------------

    /// `create_session` for `client_id`.
    pub fn create_session(
        &mut self,
        client_id: &str,
    ) -> Result<CreateSessionResponse, ClientError> {
        self.call(&CreateSessionRequest::new(client_id))
    }

    /// `restore_session` (set `client_id`, `since_revision`, `lineage` on the request as needed).
    pub fn restore_session(
        &mut self,
        request: &RestoreSessionRequest,
    ) -> Result<RestoreSessionResponse, ClientError> {
        self.call(request)
    }

    /// `update_session_state`: replace the state with `state_data` (a JSON object).
    pub fn update_session_state(
        &mut self,
        session_id: &str,
        state_data: Value,
    ) -> Result<UpdateSessionStateResponse, ClientError> {
        self.call(&UpdateSessionStateRequest::new(session_id, state_data))
    }

    /// `close_session`.
    pub fn close_session(&mut self, session_id: &str) -> Result<CloseSessionResponse, ClientError> {
        self.call(&CloseSessionRequest::new(session_id))
    }

    /// `get_session_info`.
    pub fn get_session_info(
        &mut self,
        session_id: &str,
    ) -> Result<GetSessionInfoResponse, ClientError> {
        self.call(&GetSessionInfoRequest::new(session_id))
    }

    /// `list_client_sessions` without a proof of the client: the bridge
    /// answers only over CURVE with a key bound to `client_id` (else
    /// `SessionError`, `error_code` `AccessDenied`); see
    /// [`Client::list_client_sessions_with_token`].
    pub fn list_client_sessions(
        &mut self,
        client_id: &str,
    ) -> Result<ListClientSessionsResponse, ClientError> {
        self.call(&ListClientSessionsRequest::new(client_id))
    }

    /// `list_client_sessions` with the `client_token` that `create_session`
    /// returned ([`CreateSessionResponse::client_token`]).
    pub fn list_client_sessions_with_token(
        &mut self,
        client_id: &str,
        client_token: &str,
    ) -> Result<ListClientSessionsResponse, ClientError> {
        self.call(&ListClientSessionsRequest::new(client_id).client_token(client_token))
    }

    /// `get_session_statistics`.
    pub fn get_session_statistics(&mut self) -> Result<GetSessionStatisticsResponse, ClientError> {
        self.call(&GetSessionStatisticsRequest::default())
    }

    // -- the reconnect flow -----------------------------------------------------------

    /// Upstream's reconnect flow: restore the stored session (sending
    /// `client_id` with it); when the server answers `SessionNotFound`, or
    /// there is no stored id, create a new session. Any other error, and a
    /// timeout, is returned as is.
    pub fn restore_or_create(
        &mut self,
        client_id: &str,
        stored_session_id: Option<&str>,
    ) -> Result<Reconnected, ClientError> {
        let mut not_found = None;
        if let Some(session_id) = stored_session_id {
            let request = RestoreSessionRequest {
                session_id: session_id.to_string(),
                client_id: Some(client_id.to_string()),
                ..Default::default()
            };
            match self.restore_session(&request) {
                Ok(restored) => return Ok(Reconnected::Restored(restored)),
                Err(ClientError::Server(e)) if e.is_session_not_found() => not_found = Some(*e),
                Err(e) => return Err(e),
            }
        }
        let session = self.create_session(client_id)?;
        Ok(Reconnected::Created { session, not_found })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_upstream_s() {
        let o = ClientOptions::default();
        assert_eq!(o.endpoint, "tcp://localhost:5555");
        assert_eq!(o.timeout, Duration::from_millis(5000));
        assert_eq!(o.linger, Duration::from_millis(1000));
        assert_eq!(o.max_tries, 3);
        assert_eq!(o.curve, None);
    }

    #[test]
    fn socket_options_are_applied() {
        let c = Client::with_options(
            ClientOptions::new("tcp://127.0.0.1:1")
                .timeout(Duration::from_millis(1234))
                .linger(Duration::from_millis(10)),
        )
        .unwrap();
        let s = c.socket.as_ref().unwrap();
        assert_eq!(s.get_socket_type().unwrap(), zmq::REQ);
        assert_eq!(s.get_rcvtimeo().unwrap(), 1234);
        assert_eq!(s.get_sndtimeo().unwrap(), 1234);
        assert_eq!(s.get_linger().unwrap(), 10);
    }

    #[test]
    fn request_ids_are_unique() {
        let mut a = Client::new("tcp://127.0.0.1:1").unwrap();
        let mut b = Client::new("tcp://127.0.0.1:1").unwrap();
        let ids = [
            a.next_request_id(),
            a.next_request_id(),
            b.next_request_id(),
        ];
        assert_ne!(ids[0], ids[1]);
        assert_ne!(ids[0], ids[2]);
    }

    #[test]
    fn bad_options_fail_early() {
        assert!(matches!(
            Client::with_options(ClientOptions::new("not an endpoint")),
            Err(ClientError::Zmq(_))
        ));
        assert!(matches!(
            Client::with_options(ClientOptions::new("tcp://127.0.0.1:1").max_tries(0)),
            Err(ClientError::Config(_))
        ));
    }

    #[test]
    fn curve_keys_are_checked_and_set() {
        if zmq::has("curve") != Some(true) {
            panic!("this libzmq has no CURVE support; the crate's CURVE option needs it");
        }
        let server = zmq::CurveKeyPair::new().unwrap();
        let client = zmq::CurveKeyPair::new().unwrap();
        let z85 = |k: &[u8]| zmq::z85_encode(k).unwrap();
        let keys = CurveKeys {
            server_public_key: z85(&server.public_key),
            public_key: z85(&client.public_key),
            secret_key: z85(&client.secret_key),
        };
        assert!(!format!("{:?}", keys).contains(&keys.secret_key));
        let c = Client::with_options(ClientOptions::new("tcp://127.0.0.1:1").curve(keys.clone()))
            .unwrap();
        let s = c.socket.as_ref().unwrap();
        assert_eq!(s.get_curve_serverkey().unwrap(), server.public_key.to_vec());
        assert_eq!(s.get_curve_publickey().unwrap(), client.public_key.to_vec());

        let mut bad = keys;
        bad.secret_key = "too short".into();
        match Client::with_options(ClientOptions::new("tcp://127.0.0.1:1").curve(bad)) {
            Err(ClientError::Config(m)) => assert!(m.contains("secret_key"), "{}", m),
            other => panic!("expected a Config error, got {:?}", other),
        }
    }
}
