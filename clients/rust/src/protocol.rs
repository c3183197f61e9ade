//! Typed requests and responses of the STUI flat session protocol.
//!
//! Field names are upstream STUI's, byte for byte. Every request struct
//! implements [`Command`], which names the wire command and the type of its
//! `result`. Optional request fields are left out of the JSON when `None`.
//! Every result struct keeps the fields the bridge adds (e.g. `revision`,
//! `resume_token`) in `extra`, so nothing of a reply is lost.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One request on the wire: `{"id", "command", "parameters"}` (the flat
/// envelope). The reply echoes `id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Caller-chosen request id; a resend after a timeout reuses it.
    pub id: String,
    /// The command name, e.g. `"create_session"`.
    pub command: String,
    /// Named arguments; `{}` when there are none.
    pub parameters: Value,
}

/// One reply on the wire.
///
/// Success: `id`, `status: "success"`, `result`, `timestamp`.
/// Error: `id`, `status: "error"`, `error`, `error_type`, `timestamp`, and
/// the additive `error_code` and `details` when the bridge sends them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// The request's id (`null` when the bridge could not read one).
    #[serde(default)]
    pub id: Value,
    /// `"success"` or `"error"`.
    pub status: String,
    /// The command's result (success only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// Human-readable message (errors only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// One of upstream's `SessionError`, `SessionNotFound`, `RuntimeError`,
    /// `Error` (errors only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_type: Option<String>,
    /// Additive: the bridge's finer error type, e.g. `ValidationError`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    /// Additive: machine-readable facts about an error (e.g. `reason`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
    /// ISO-8601 UTC time of the reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
}

impl Response {
    /// True when `status` is `"success"`.
    pub fn is_success(&self) -> bool {
        self.status == "success"
    }
}

/// A request type: its wire command name and the type of its `result`.
pub trait Command: Serialize {
    /// The `command` field, e.g. `"create_session"`.
    const NAME: &'static str;
    /// What the `result` of a success reply decodes into.
    type Response: DeserializeOwned;
}

fn is_none<T>(v: &Option<T>) -> bool {
    v.is_none()
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}

// --------------------------------------------------------------------------------------
// create_session

/// `create_session`: a new session for `client_id`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CreateSessionRequest {
    /// The client's id (required).
    pub client_id: String,
    /// Optional client version (kept in the session's metadata).
    #[serde(skip_serializing_if = "is_none")]
    pub client_version: Option<String>,
    /// Optional client description (platform, version, capabilities...).
    #[serde(skip_serializing_if = "is_none")]
    pub client_info: Option<Value>,
    /// Optional client configuration.
    #[serde(skip_serializing_if = "is_none")]
    pub config: Option<Value>,
}

impl CreateSessionRequest {
    /// A request with only the required `client_id`.
    pub fn new(client_id: impl Into<String>) -> Self {
        CreateSessionRequest {
            client_id: client_id.into(),
            ..Default::default()
        }
    }
}

/// Result of `create_session`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateSessionResponse {
    pub session_id: String,
    pub client_id: String,
    pub created_at: String,
    /// Idle timeout in seconds.
    pub timeout: u64,
    pub is_active: bool,
    /// Additive fields (`revision`, `resume_token`, `client_token`, ...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl CreateSessionResponse {
    /// The additive `client_token`: the proof of the client that
    /// `list_client_sessions` asks for (when the bridge issued one).
    pub fn client_token(&self) -> Option<&str> {
        self.extra.get("client_token").and_then(Value::as_str)
    }
}

impl Command for CreateSessionRequest {
    const NAME: &'static str = "create_session";
    type Response = CreateSessionResponse;
}

// --------------------------------------------------------------------------------------
// restore_session

/// `restore_session`: the session's record and state.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RestoreSessionRequest {
    /// The session to restore (required).
    pub session_id: String,
    /// The caller's client id (upstream's Rust struct carries it). A session
    /// of another client answers `SessionNotFound`, like an unknown one.
    #[serde(skip_serializing_if = "is_none")]
    pub client_id: Option<String>,
    /// Additive: ask for only the changes since this revision
    /// (the result then has `delta: true` and `changes`).
    #[serde(skip_serializing_if = "is_none")]
    pub since_revision: Option<u64>,
    /// Passed through verbatim when set; the bridge in this repository does
    /// not read it yet (unknown parameters are ignored).
    #[serde(skip_serializing_if = "is_none")]
    pub lineage: Option<Value>,
}

impl RestoreSessionRequest {
    /// A request with only the required `session_id`.
    pub fn new(session_id: impl Into<String>) -> Self {
        RestoreSessionRequest {
            session_id: session_id.into(),
            ..Default::default()
        }
    }
}

/// Result of `restore_session`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestoreSessionResponse {
    pub session_id: String,
    pub client_id: String,
    pub created_at: String,
    pub last_modified: String,
    pub timeout: u64,
    pub is_active: bool,
    /// The state last written by `update_session_state`; `{}` when the
    /// reply leaves it out (a session never updated, or a delta reply).
    #[serde(default = "empty_object")]
    pub session_state: Value,
    /// `{}` when the reply leaves it out.
    #[serde(default = "empty_object")]
    pub workspace_context: Value,
    /// `{}` when the reply leaves it out.
    #[serde(default = "empty_object")]
    pub inspector_state: Value,
    /// `{}` when the reply leaves it out.
    #[serde(default = "empty_object")]
    pub object_registry: Value,
    /// Additive fields (`revision`, `delta`, `changes`, `time_until_expiry`, ...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Command for RestoreSessionRequest {
    const NAME: &'static str = "restore_session";
    type Response = RestoreSessionResponse;
}

// --------------------------------------------------------------------------------------
// update_session_state

/// `update_session_state`: replace the session's state with `state_data`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UpdateSessionStateRequest {
    /// The session (required).
    pub session_id: String,
    /// The new state: a JSON object (required).
    pub state_data: Value,
    /// The caller's client id (owner check).
    #[serde(skip_serializing_if = "is_none")]
    pub client_id: Option<String>,
}

impl UpdateSessionStateRequest {
    pub fn new(session_id: impl Into<String>, state_data: Value) -> Self {
        UpdateSessionStateRequest {
            session_id: session_id.into(),
            state_data,
            client_id: None,
        }
    }
}

/// Result of `update_session_state`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateSessionStateResponse {
    pub session_id: String,
    pub last_modified: String,
    /// The state as stored.
    pub session_state: Value,
    pub update_successful: bool,
    /// Additive fields (`revision`, ...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Command for UpdateSessionStateRequest {
    const NAME: &'static str = "update_session_state";
    type Response = UpdateSessionStateResponse;
}

// --------------------------------------------------------------------------------------
// close_session

/// `close_session`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CloseSessionRequest {
    pub session_id: String,
    #[serde(skip_serializing_if = "is_none")]
    pub client_id: Option<String>,
    /// Upstream's Rust struct has it; the bridge always keeps the state until
    /// the next sweep.
    #[serde(skip_serializing_if = "is_none")]
    pub save_state: Option<bool>,
}

impl CloseSessionRequest {
    pub fn new(session_id: impl Into<String>) -> Self {
        CloseSessionRequest {
            session_id: session_id.into(),
            ..Default::default()
        }
    }
}

/// Result of `close_session`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CloseSessionResponse {
    pub session_id: String,
    pub closed: bool,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Command for CloseSessionRequest {
    const NAME: &'static str = "close_session";
    type Response = CloseSessionResponse;
}

// --------------------------------------------------------------------------------------
// get_session_info

/// `get_session_info`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GetSessionInfoRequest {
    pub session_id: String,
    #[serde(skip_serializing_if = "is_none")]
    pub client_id: Option<String>,
}

impl GetSessionInfoRequest {
    pub fn new(session_id: impl Into<String>) -> Self {
        GetSessionInfoRequest {
            session_id: session_id.into(),
            client_id: None,
        }
    }
}

/// Result of `get_session_info`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GetSessionInfoResponse {
    pub session_id: String,
    pub client_id: String,
    pub created_at: String,
    pub last_modified: String,
    pub timeout: u64,
    pub is_active: bool,
    /// Seconds until the session expires when idle.
    pub time_until_expiry: i64,
    pub is_expired: bool,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Command for GetSessionInfoRequest {
    const NAME: &'static str = "get_session_info";
    type Response = GetSessionInfoResponse;
}

// --------------------------------------------------------------------------------------
// list_client_sessions

/// `list_client_sessions`: the client's open sessions.
///
/// The bridge lists a client only for a caller that proves it is that
/// client: the additive `client_token` that `create_session` returned
/// (`CreateSessionResponse::client_token`), or a CURVE key bound to the
/// client id. Without either it answers `SessionError` (`error_code`
/// `AccessDenied`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ListClientSessionsRequest {
    pub client_id: String,
    /// Additive: the proof of the client (from `create_session`).
    #[serde(skip_serializing_if = "is_none")]
    pub client_token: Option<String>,
}

impl ListClientSessionsRequest {
    pub fn new(client_id: impl Into<String>) -> Self {
        ListClientSessionsRequest {
            client_id: client_id.into(),
            client_token: None,
        }
    }

    /// Send this `client_token` as the proof of the client.
    pub fn client_token(mut self, token: impl Into<String>) -> Self {
        self.client_token = Some(token.into());
        self
    }
}

/// One entry of `list_client_sessions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionSummary {
    pub session_id: String,
    pub created_at: String,
    pub last_modified: String,
    pub timeout: u64,
    pub is_active: bool,
    pub time_until_expiry: i64,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Result of `list_client_sessions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListClientSessionsResponse {
    pub client_id: String,
    pub session_count: u64,
    pub sessions: Vec<SessionSummary>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Command for ListClientSessionsRequest {
    const NAME: &'static str = "list_client_sessions";
    type Response = ListClientSessionsResponse;
}

// --------------------------------------------------------------------------------------
// get_session_statistics

/// `get_session_statistics` (no parameters: sends `{}`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct GetSessionStatisticsRequest {}

/// Result of `get_session_statistics`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GetSessionStatisticsResponse {
    pub total_sessions: u64,
    pub active_clients: u64,
    pub max_sessions_per_client: u64,
    /// Seconds.
    pub default_timeout: u64,
    /// Seconds.
    pub cleanup_interval: u64,
    /// Additive fields (`active_sessions`, bridge counters, ...).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Command for GetSessionStatisticsRequest {
    const NAME: &'static str = "get_session_statistics";
    type Response = GetSessionStatisticsResponse;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn wire<C: Command>(request: &C) -> Value {
        serde_json::to_value(Envelope {
            id: "req-1".into(),
            command: C::NAME.into(),
            parameters: serde_json::to_value(request).unwrap(),
        })
        .unwrap()
    }

    #[test]
    fn requests_use_the_upstream_field_names_and_leave_out_unset_options() {
        assert_eq!(
            wire(&CreateSessionRequest::new("tui-1")),
            json!({"id": "req-1", "command": "create_session",
                   "parameters": {"client_id": "tui-1"}})
        );
        assert_eq!(
            wire(&RestoreSessionRequest {
                session_id: "s".into(),
                client_id: Some("c".into()),
                since_revision: Some(7),
                lineage: Some(json!("l")),
            }),
            json!({"id": "req-1", "command": "restore_session",
                   "parameters": {"session_id": "s", "client_id": "c",
                                  "since_revision": 7, "lineage": "l"}})
        );
        assert_eq!(
            wire(&RestoreSessionRequest::new("s"))["parameters"],
            json!({"session_id": "s"})
        );
        assert_eq!(
            wire(&UpdateSessionStateRequest::new("s", json!({"a": [1]})))["parameters"],
            json!({"session_id": "s", "state_data": {"a": [1]}})
        );
        assert_eq!(
            wire(&CloseSessionRequest::new("s"))["command"],
            json!("close_session")
        );
        assert_eq!(
            wire(&GetSessionInfoRequest::new("s"))["command"],
            json!("get_session_info")
        );
        assert_eq!(
            wire(&ListClientSessionsRequest::new("c"))["parameters"],
            json!({"client_id": "c"})
        );
        assert_eq!(
            wire(&ListClientSessionsRequest::new("c").client_token("t"))["parameters"],
            json!({"client_id": "c", "client_token": "t"})
        );
        // statistics sends an empty object, as upstream's example
        assert_eq!(
            wire(&GetSessionStatisticsRequest::default()),
            json!({"id": "req-1", "command": "get_session_statistics", "parameters": {}})
        );
    }

    #[test]
    fn error_replies_keep_the_additive_fields() {
        let r: Response = serde_json::from_str(
            r#"{"id":"r1","status":"error","error":"Session not found",
                "error_type":"SessionNotFound","error_code":"AccessDenied",
                "details":{"reason":"closed"},"timestamp":"2025-09-01T08:00:05Z"}"#,
        )
        .unwrap();
        assert!(!r.is_success());
        assert_eq!(r.error_type.as_deref(), Some("SessionNotFound"));
        assert_eq!(r.error_code.as_deref(), Some("AccessDenied"));
        assert_eq!(r.details, Some(json!({"reason": "closed"})));
        assert_eq!(r.result, None);

        // upstream's reply without the additive fields
        let r: Response = serde_json::from_str(
            r#"{"id":"r1","status":"error","error":"Session not found",
                "error_type":"SessionNotFound","timestamp":"2025-09-01T08:00:05Z"}"#,
        )
        .unwrap();
        assert_eq!(r.error_code, None);
        assert_eq!(r.details, None);
    }

    #[test]
    fn results_decode_upstream_examples_and_keep_extra_fields() {
        let restored: RestoreSessionResponse = serde_json::from_value(json!({
            "session_id": "session_4_1756713600_0000000042", "client_id": "tui-laptop-01",
            "created_at": "2025-09-01T08:00:00Z", "last_modified": "2025-09-01T08:40:00Z",
            "timeout": 3600, "is_active": true,
            "session_state": {"workspace": "x := 3 + 4.", "inspector": "open"},
            "workspace_context": {"variables": ["x"]},
            "inspector_state": {"selected_object": "obj_7"},
            "object_registry": {"obj_7": "a SmallInteger(7)"},
            "revision": 4
        }))
        .unwrap();
        assert_eq!(restored.session_state["workspace"], "x := 3 + 4.");
        assert_eq!(restored.extra["revision"], 4);

        // a restore without state sections: empty objects
        let bare: RestoreSessionResponse = serde_json::from_value(json!({
            "session_id": "s", "client_id": "c", "created_at": "t", "last_modified": "t",
            "timeout": 3600, "is_active": true
        }))
        .unwrap();
        assert_eq!(bare.session_state, json!({}));
        assert_eq!(bare.object_registry, json!({}));

        let stats: GetSessionStatisticsResponse = serde_json::from_value(json!({
            "total_sessions": 2, "active_clients": 1, "max_sessions_per_client": 5,
            "default_timeout": 3600, "cleanup_interval": 300
        }))
        .unwrap();
        assert_eq!(stats.max_sessions_per_client, 5);
        assert!(stats.extra.is_empty());
    }

    #[test]
    fn integers_in_state_decode_as_documented() {
        let v: Value = serde_json::from_str(
            r#"{"u":18446744073709551615,"i":-9223372036854775808,"big":18446744073709551616}"#,
        )
        .unwrap();
        assert_eq!(v["u"].as_u64(), Some(u64::MAX));
        assert_eq!(v["i"].as_i64(), Some(i64::MIN));
        assert!(v["big"].is_f64());
        assert_eq!(v["big"].as_f64(), Some(18446744073709551616.0));
        let huge = format!("[1{}]", "0".repeat(400));
        let err = serde_json::from_str::<Value>(&huge).unwrap_err();
        assert!(err.to_string().contains("out of range"), "{}", err);
        // float_roundtrip: the exact f64 comes back
        for f in [
            0.1_f64,
            5e-324,
            1.7976931348623157e308,
            2.220446049250313e-16,
        ] {
            let back: f64 = serde_json::from_str(&serde_json::to_string(&f).unwrap()).unwrap();
            assert_eq!(back.to_bits(), f.to_bits());
        }
    }
}
