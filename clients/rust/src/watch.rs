//! A local copy of a session kept in sync by the bridge's change notices
//! (`stuisession serve --notify ENDPOINT`; `docs/notifications.md`).
//!
//! Notices are hints, deltas are truth: a notice only says that the session
//! changed and its new revision; the copy is brought up to date with one
//! `restore_session` + `since_revision` per burst of notices (a full restore
//! when the change log no longer reaches back, or the lineage changed). A
//! dropped notice, a gap in revisions or a lost subscription costs nothing
//! more than that one restore. Mirrors `SessionWatch` of the Python client.

use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::client::Client;
use crate::error::ClientError;

/// Members of a `restore_session` reply that are not state sections: the
/// session record, the delta fields, credentials, and the change log
/// `changes` (which deltas do not carry).
pub const RECORD_MEMBERS: &[&str] = &[
    "session_id",
    "client_id",
    "created_at",
    "last_modified",
    "timeout",
    "is_active",
    "revision",
    "lineage",
    "time_until_expiry",
    "delta",
    "since_revision",
    "session_id_rotated",
    "resume_token",
    "client_token",
    "changes",
];

/// Notices after which the session can not be followed any further.
pub const FINAL_EVENTS: &[&str] = &["closed", "expired", "deleted"];

/// Apply `restore_session` delta operations (`{"path": [..], "value": v}`
/// sets, `{"path": [..], "delete": true}` deletes; paths of object keys over
/// the wire form) to `state` in place. A set creates the objects on its path
/// (replacing a non-object in the way). Fails with
/// [`ClientError::Protocol`] on an operation of another shape; the
/// operations before it stay applied.
pub fn apply_changes(state: &mut Map<String, Value>, ops: &[Value]) -> Result<(), ClientError> {
    for op in ops {
        let bad = || ClientError::Protocol(format!("not a delta operation: {}", op));
        let path: Vec<&str> = op
            .get("path")
            .and_then(Value::as_array)
            .ok_or_else(bad)?
            .iter()
            .map(|k| k.as_str().ok_or_else(bad))
            .collect::<Result<_, _>>()?;
        let (last, parents) = path.split_last().ok_or_else(bad)?;
        let delete = op.get("delete") == Some(&Value::Bool(true));
        if !delete && op.get("value").is_none() {
            return Err(bad());
        }
        if delete {
            // nothing to delete when the path is not there
            let mut doc: Option<&mut Map<String, Value>> = Some(&mut *state);
            for key in parents {
                doc = doc
                    .and_then(|d| d.get_mut(*key))
                    .and_then(Value::as_object_mut);
            }
            if let Some(doc) = doc {
                doc.remove(*last);
            }
        } else {
            let mut doc = &mut *state;
            for key in parents {
                let child = doc
                    .entry(key.to_string())
                    .or_insert_with(|| Value::Object(Map::new()));
                if !child.is_object() {
                    *child = Value::Object(Map::new());
                }
                doc = child.as_object_mut().expect("made an object above");
            }
            doc.insert(last.to_string(), op["value"].clone());
        }
    }
    Ok(())
}

fn millis(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

/// A local copy of one session, kept in sync by change notices.
///
/// ```no_run
/// use std::time::Duration;
/// use stuisession_client::{Client, Watch};
///
/// # fn main() -> Result<(), stuisession_client::ClientError> {
/// let client = Client::new("tcp://127.0.0.1:5555")?;
/// let mut watch = Watch::new(client, "tcp://127.0.0.1:5556", "session_…").client_id("alice");
/// watch.start()?; // watch_session, subscribe, full restore
/// loop {
///     if watch.poll(Duration::from_secs(1))? {
///         println!("now at revision {:?}: {}", watch.revision(), watch.state()["session_state"]);
///     }
///     if watch.ended().is_some() {
///         break; // closed, expired or deleted
///     }
/// }
/// # Ok(()) }
/// ```
///
/// The watch owns a [`Client`] (its REQ socket sends `watch_session` and the
/// `restore_session` calls; [`Watch::client_mut`] lends it for other calls)
/// and opens a SUB socket in the same ZeroMQ context, with the client's
/// CURVE keys when it has them (a bridge with CURVE makes its notice socket a
/// CURVE server too).
pub struct Watch {
    // declared before `client`: the SUB socket closes before the client's context
    sub: Option<zmq::Socket>,
    client: Client,
    endpoint: String,
    session_id: String,
    client_id: Option<String>,
    resume_token: Option<String>,
    subscription: Option<String>,
    topic: Option<String>,
    state: Map<String, Value>,
    revision: Option<u64>,
    lineage: Option<String>,
    ended: Option<String>,
    syncs: u64,
    full_syncs: u64,
    notices: u64,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // never print the subscription token or the resume token
        f.debug_struct("Watch")
            .field("endpoint", &self.endpoint)
            .field("session_id", &self.session_id)
            .field("subscribed", &self.sub.is_some())
            .field("revision", &self.revision)
            .field("lineage", &self.lineage)
            .field("ended", &self.ended)
            .finish()
    }
}

impl Watch {
    /// A watch of `session_id` through `client`, on the bridge's `--notify`
    /// endpoint `notify_endpoint` (e.g. `tcp://127.0.0.1:5556`). Nothing is
    /// sent until [`Watch::start`].
    pub fn new(client: Client, notify_endpoint: impl Into<String>, session_id: &str) -> Watch {
        Watch {
            sub: None,
            client,
            endpoint: notify_endpoint.into(),
            session_id: session_id.to_string(),
            client_id: None,
            resume_token: None,
            subscription: None,
            topic: None,
            state: Map::new(),
            revision: None,
            lineage: None,
            ended: None,
            syncs: 0,
            full_syncs: 0,
            notices: 0,
        }
    }

    /// Send this `client_id` with every call (the owner check).
    pub fn client_id(mut self, client_id: &str) -> Watch {
        self.client_id = Some(client_id.to_string());
        self
    }

    /// Send this `resume_token` with every call (needed in strict mode).
    pub fn resume_token(mut self, resume_token: &str) -> Watch {
        self.resume_token = Some(resume_token.to_string());
        self
    }

    fn credentials(&self) -> Map<String, Value> {
        let mut params = Map::new();
        params.insert("session_id".into(), json!(self.session_id));
        if let Some(c) = &self.client_id {
            params.insert("client_id".into(), json!(c));
        }
        if let Some(t) = &self.resume_token {
            params.insert("resume_token".into(), json!(t));
        }
        params
    }

    /// Ask for a subscription token (`watch_session`), subscribe, and restore
    /// in full. Fails with [`ClientError::Server`] (`SessionNotFound` for a
    /// session the caller may not watch, or one not active),
    /// [`ClientError::Timeout`], [`ClientError::Zmq`] (bad endpoint), or
    /// [`ClientError::Protocol`] (a result without `subscription`/`topic`).
    pub fn start(&mut self) -> Result<(), ClientError> {
        let result = self
            .client
            .call_value("watch_session", Value::Object(self.credentials()))?;
        let field = |name: &str| -> Result<String, ClientError> {
            result
                .get(name)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| {
                    ClientError::Protocol(format!("watch_session result has no {}", name))
                })
        };
        self.subscription = Some(field("subscription")?);
        self.topic = Some(field("topic")?);
        self.subscribe()?;
        self.sync(true)?;
        Ok(())
    }

    fn subscribe(&mut self) -> Result<(), ClientError> {
        let (token, topic) = match (&self.subscription, &self.topic) {
            (Some(s), Some(t)) => (s.clone(), t.clone()),
            _ => return Err(ClientError::Config("the watch is not started".into())),
        };
        let sub = self.client.context().socket(zmq::SUB)?;
        sub.set_linger(0)?;
        if let Some([server, public, secret]) = self.client.curve_keys() {
            sub.set_curve_serverkey(server)?;
            sub.set_curve_publickey(public)?;
            sub.set_curve_secretkey(secret)?;
        }
        sub.connect(&self.endpoint)?;
        // the token is the proof (the bridge subscribes this connection to the
        // topic); the topic opens this socket's own filter (a SUB filters too)
        sub.set_subscribe(token.as_bytes())?;
        sub.set_subscribe(topic.as_bytes())?;
        self.sub = Some(sub);
        Ok(())
    }

    fn restore(&mut self, since: Option<u64>) -> Result<Map<String, Value>, ClientError> {
        let mut params = self.credentials();
        if let Some(since) = since {
            params.insert("since_revision".into(), json!(since));
            if let Some(lineage) = &self.lineage {
                params.insert("lineage".into(), json!(lineage));
            }
        }
        let result = self
            .client
            .call_value("restore_session", Value::Object(params))?;
        let result = match result {
            Value::Object(map) => map,
            other => {
                return Err(ClientError::Protocol(format!(
                    "restore_session result is not an object: {}",
                    other
                )))
            }
        };
        // strict mode rotates the id and the resume token on restore: follow them
        if let Some(id) = result.get("session_id").and_then(Value::as_str) {
            self.session_id = id.to_string();
        }
        if let Some(token) = result.get("resume_token").and_then(Value::as_str) {
            self.resume_token = Some(token.to_string());
        }
        Ok(result)
    }

    /// Bring the copy up to date now: `restore_session` with
    /// `since_revision` = the copy's revision (and its `lineage`), applying
    /// the delta; a full restore when `full`, when the copy is empty, when
    /// the reply is not a delta, or when the reply's lineage differs from the
    /// copy's. True when the revision changed. Fails as
    /// [`Client::call_value`] does, or with [`ClientError::Protocol`] for a
    /// reply without `revision` or with malformed `changes`.
    pub fn sync(&mut self, full: bool) -> Result<bool, ClientError> {
        let since = if full { None } else { self.revision };
        let mut result = self.restore(since)?;
        let lineage_of =
            |r: &Map<String, Value>| r.get("lineage").and_then(Value::as_str).map(str::to_string);
        let mut lineage = lineage_of(&result);
        if since.is_some() && lineage != self.lineage {
            // another history: the delta is against a revision this copy never had
            result = self.restore(None)?;
            lineage = lineage_of(&result);
        }
        let revision = result
            .get("revision")
            .and_then(Value::as_u64)
            .ok_or_else(|| {
                ClientError::Protocol("restore_session result has no revision".into())
            })?;
        self.syncs += 1;
        if result.get("delta") == Some(&Value::Bool(true)) {
            let ops = match result.get("changes") {
                Some(Value::Array(ops)) => ops.as_slice(),
                None | Some(Value::Null) => &[],
                Some(other) => {
                    return Err(ClientError::Protocol(format!(
                        "delta changes is not a list: {}",
                        other
                    )))
                }
            };
            apply_changes(&mut self.state, ops)?;
        } else {
            self.full_syncs += 1;
            self.state = result
                .into_iter()
                .filter(|(k, _)| !RECORD_MEMBERS.contains(&k.as_str()))
                .collect();
        }
        let before = self.revision;
        self.revision = Some(revision);
        self.lineage = lineage;
        Ok(self.revision != before)
    }

    /// Wait up to `timeout` for notices, take every one queued, and sync once
    /// if any says the copy is behind (another revision or lineage) and the
    /// session has not ended. True when it synced. Frames that are not a
    /// notice (not two frames, not the JSON `{"event", "revision"}`) are
    /// skipped. Fails with [`ClientError::Config`] when the watch is not
    /// subscribed, else as [`Watch::sync`].
    pub fn poll(&mut self, timeout: Duration) -> Result<bool, ClientError> {
        let sub = match &self.sub {
            Some(s) => s,
            None => return Err(ClientError::Config("the watch is not subscribed".into())),
        };
        if sub.poll(zmq::POLLIN, millis(timeout))? == 0 {
            return Ok(false);
        }
        let mut behind = false;
        loop {
            let frames = match sub.recv_multipart(zmq::DONTWAIT) {
                Ok(frames) => frames,
                Err(zmq::Error::EAGAIN) => break,
                Err(e) => return Err(e.into()),
            };
            if frames.len() != 2 {
                continue; // not a notice of ours
            }
            self.notices += 1;
            let notice: Value = match serde_json::from_slice(&frames[1]) {
                Ok(v) => v,
                Err(_) => continue,
            };
            let (event, revision) = match (
                notice.get("event").and_then(Value::as_str),
                notice.get("revision").and_then(Value::as_u64),
            ) {
                (Some(e), Some(r)) => (e, r),
                _ => continue,
            };
            if FINAL_EVENTS.contains(&event) {
                self.ended = Some(event.to_string());
            }
            let lineage_differs = match notice.get("lineage") {
                None => false, // a notice without lineage says nothing about it
                Some(l) => l.as_str() != self.lineage.as_deref(),
            };
            if self.revision != Some(revision) || lineage_differs {
                behind = true;
            }
        }
        if behind && self.ended.is_none() {
            self.sync(false)?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Drop the SUB socket, subscribe again on a new one (same token), and
    /// catch up with one sync. Fails as [`Watch::sync`]; a token revoked by
    /// `rotate_credentials` gets no notices: call [`Watch::start`] again.
    pub fn resubscribe(&mut self) -> Result<(), ClientError> {
        self.sub = None;
        self.subscribe()?;
        self.sync(false)?;
        Ok(())
    }

    /// Close the SUB socket (no more notices; [`Watch::resubscribe`] opens a new one).
    pub fn close(&mut self) {
        self.sub = None;
    }

    /// The session's state sections as a full `restore_session` returns them
    /// (`session_state`, `workspace_context`, `metadata`, ...), without the
    /// record members and the change log ([`RECORD_MEMBERS`]).
    pub fn state(&self) -> &Map<String, Value> {
        &self.state
    }

    /// The revision the copy is at (`None` before the first sync).
    pub fn revision(&self) -> Option<u64> {
        self.revision
    }

    /// The session's lineage, when the session record has one.
    pub fn lineage(&self) -> Option<&str> {
        self.lineage.as_deref()
    }

    /// `Some("closed" | "expired" | "deleted")` once such a notice came.
    pub fn ended(&self) -> Option<&str> {
        self.ended.as_deref()
    }

    /// The session id (follows a rotation in strict mode).
    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// The session's opaque notice topic (after [`Watch::start`]).
    pub fn topic(&self) -> Option<&str> {
        self.topic.as_deref()
    }

    /// Syncs done, full restores among them, notices received.
    pub fn counts(&self) -> (u64, u64, u64) {
        (self.syncs, self.full_syncs, self.notices)
    }

    /// The client, for other calls.
    pub fn client_mut(&mut self) -> &mut Client {
        &mut self.client
    }

    /// Close the SUB socket and give the client back.
    pub fn into_client(mut self) -> Client {
        self.sub = None;
        // `Watch` has no Drop impl, so the client can be moved out
        self.client
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn apply_changes_sets_creates_and_deletes() {
        let mut state = map(json!({"session_state": {"a": 1, "b": {"c": 2}}, "metadata": 5}));
        apply_changes(
            &mut state,
            &[
                json!({"path": ["session_state", "a"], "value": [1, 2]}),
                json!({"path": ["session_state", "b", "c"], "delete": true}),
                json!({"path": ["metadata", "updates"], "value": 3}),
                json!({"path": ["new", "deep", "x"], "value": null}),
                json!({"path": ["gone", "x"], "delete": true}),
            ],
        )
        .unwrap();
        assert_eq!(
            Value::Object(state),
            json!({"session_state": {"a": [1, 2], "b": {}}, "metadata": {"updates": 3},
                   "new": {"deep": {"x": null}}})
        );
    }

    #[test]
    fn apply_changes_refuses_malformed_operations() {
        for op in [
            json!({"path": [], "value": 1}),
            json!({"path": ["a", 0], "value": 1}),
            json!({"path": ["a"]}),
            json!({"value": 1}),
            json!("set a"),
        ] {
            let mut state = Map::new();
            assert!(
                matches!(
                    apply_changes(&mut state, std::slice::from_ref(&op)),
                    Err(ClientError::Protocol(_))
                ),
                "{}",
                op
            );
        }
    }
}
