//! The seven session commands, the error mapping and the reconnect flow,
//! against a real `stuisession serve`.

mod common;

use common::{client, unique_client_id, Bridge};
use serde_json::{json, Value};
use stuisession_client::{
    ClientError, Envelope, ErrorType, Reconnected, RestoreSessionRequest, ServerError,
};

/// Nested JSON with unicode, astral characters, 64-bit extremes and floats.
fn rich_state() -> Value {
    json!({
        "workspace": "x := 3 + 4. \"ünïcödé\" 日本語 Ελληνικά 😀 𝄞 🧑‍💻",
        "emoji 😀 key": {"nested": [1, [2, [3, {"deep": {"deeper": [true, false, null]}}]]]},
        "i64_max": i64::MAX,
        "i64_min": i64::MIN,
        "u64_max": u64::MAX,
        "zero": 0,
        "minus_one": -1,
        "floats": [0.1, -2.5e-300, 1.7976931348623157e308, 5e-324, std::f64::consts::PI,
                   1e21, 123456789.125, -0.5, 2.220446049250313e-16],
        "escapes": "quote \" backslash \\ newline \n tab \t nul \u{0} ctrl \u{1f} del \u{7f}",
        "empty_object": {},
        "empty_array": [],
        "variables": ["x", "y", "😀"],
        "inspector": {"selected_object": "obj_7"}
    })
}

fn server_error(result: Result<impl std::fmt::Debug, ClientError>) -> ServerError {
    match result {
        Err(ClientError::Server(e)) => *e,
        other => panic!("expected an error reply, got {:?}", other),
    }
}

/// A well-formed id of this bridge's format that no session has.
fn unknown_session_id() -> String {
    format!("session_{}", "A".repeat(43))
}

/// An id in the format the Pharo backend issues.
const UPSTREAM_FORMAT_ID: &str = "session_4_1756713600_0000000042";

#[test]
fn create_update_restore_info_list_statistics_close() {
    let bridge = Bridge::start();
    let mut c = client(&bridge);
    let client_id = unique_client_id("lifecycle");

    // create
    let created = c.create_session(&client_id).expect("create_session");
    assert_eq!(created.client_id, client_id);
    assert!(created.is_active);
    assert_eq!(created.timeout, 3600);
    assert!(!created.session_id.is_empty());
    assert!(created.created_at.ends_with('Z'), "{}", created.created_at);
    let id = created.session_id.clone();

    // a new session restores with an empty state
    let fresh = c
        .restore_session(&RestoreSessionRequest::new(id.as_str()))
        .expect("restore of a new session");
    assert_eq!(fresh.session_state, json!({}));

    // update with nested JSON
    let state = rich_state();
    let updated = c
        .update_session_state(&id, state.clone())
        .expect("update_session_state");
    assert!(updated.update_successful);
    assert_eq!(updated.session_id, id);
    assert_eq!(updated.session_state, state);

    // restore: equal, extremes exact
    let restored = c
        .restore_session(&RestoreSessionRequest {
            session_id: id.clone(),
            client_id: Some(client_id.clone()),
            ..Default::default()
        })
        .expect("restore_session");
    assert_eq!(restored.session_id, id);
    assert_eq!(restored.client_id, client_id);
    assert!(restored.is_active);
    assert_eq!(restored.session_state, state);
    assert_eq!(restored.session_state["i64_min"].as_i64(), Some(i64::MIN));
    assert_eq!(restored.session_state["u64_max"].as_u64(), Some(u64::MAX));
    assert_eq!(restored.session_state["floats"][3].as_f64(), Some(5e-324));
    assert_eq!(
        restored.session_state["workspace"].as_str(),
        state["workspace"].as_str()
    );

    // info
    let info = c.get_session_info(&id).expect("get_session_info");
    assert_eq!(info.session_id, id);
    assert_eq!(info.client_id, client_id);
    assert!(info.is_active);
    assert!(!info.is_expired);
    assert!(info.time_until_expiry > 0 && info.time_until_expiry <= 3600);

    // list: needs the proof of the client that create_session handed out
    let token = created
        .client_token()
        .expect("create_session returns a client_token")
        .to_string();
    let e = server_error(c.list_client_sessions(&client_id));
    assert_eq!(e.error_type, ErrorType::SessionError, "{}", e);
    assert_eq!(e.error_code.as_deref(), Some("AccessDenied"), "{}", e);
    let listed = c
        .list_client_sessions_with_token(&client_id, &token)
        .expect("list_client_sessions");
    assert_eq!(listed.client_id, client_id);
    assert_eq!(listed.session_count, 1);
    assert_eq!(listed.sessions.len(), 1);
    assert_eq!(listed.sessions[0].session_id, id);
    assert!(listed.sessions[0].is_active);

    // statistics
    let stats = c.get_session_statistics().expect("get_session_statistics");
    assert!(stats.total_sessions >= 1);
    assert!(stats.active_clients >= 1);
    assert_eq!(stats.max_sessions_per_client, 5);
    assert_eq!(stats.default_timeout, 3600);
    assert_eq!(stats.cleanup_interval, 300);

    // close
    let closed = c.close_session(&id).expect("close_session");
    assert!(closed.closed);
    assert_eq!(closed.session_id, id);
    let listed = c
        .list_client_sessions_with_token(&client_id, &token)
        .expect("list after close");
    assert_eq!(listed.session_count, 0);
    assert!(listed.sessions.is_empty());

    // a closed session is gone for restore: SessionNotFound, and the flow creates anew
    let e = server_error(c.restore_session(&RestoreSessionRequest::new(id.as_str())));
    assert_eq!(e.error_type, ErrorType::SessionNotFound, "{}", e);
    match c
        .restore_or_create(&client_id, Some(&id))
        .expect("reconnect")
    {
        Reconnected::Created { session, not_found } => {
            assert_ne!(session.session_id, id);
            assert!(not_found
                .expect("the restore's error")
                .is_session_not_found());
        }
        other => panic!("expected a new session, got {:?}", other),
    }
}

#[test]
fn reconnect_flow_restores_a_live_session() {
    let bridge = Bridge::start();
    let mut c = client(&bridge);
    let client_id = unique_client_id("reconnect");

    // nothing stored: create
    let first = c.restore_or_create(&client_id, None).expect("first start");
    assert!(!first.was_restored());
    let id = first.session_id().to_string();
    c.update_session_state(&id, json!({"workspace": "a := 1."}))
        .expect("update");

    // stored id of a live session: restore (a new client, as after a restart of the TUI)
    let mut again = client(&bridge);
    match again
        .restore_or_create(&client_id, Some(&id))
        .expect("reconnect")
    {
        Reconnected::Restored(r) => {
            assert_eq!(r.session_id, id);
            assert_eq!(r.session_state, json!({"workspace": "a := 1."}));
        }
        other => panic!("expected the session back, got {:?}", other),
    }

    // the optional restore parameters are accepted: a lineage of another history
    // gets the full state (delta false), the session's own lineage a delta
    let full = again
        .restore_session(&RestoreSessionRequest {
            session_id: id.clone(),
            client_id: Some(client_id.clone()),
            since_revision: Some(0),
            lineage: Some(json!("another-history")),
        })
        .expect("restore with since_revision and a foreign lineage");
    assert_eq!(full.session_id, id);
    assert_eq!(full.extra["delta"], json!(false), "{:?}", full.extra);
    let lineage = full.extra["lineage"].clone();
    assert!(lineage.is_string(), "{:?}", full.extra);
    let revision = full.extra["revision"].as_u64().expect("revision");
    let delta = again
        .restore_session(&RestoreSessionRequest {
            session_id: id.clone(),
            client_id: Some(client_id.clone()),
            since_revision: Some(revision),
            lineage: Some(lineage),
        })
        .expect("restore with since_revision and the session's lineage");
    assert_eq!(delta.extra["delta"], json!(true), "{:?}", delta.extra);
}

/// Send `command` for `session_id` (with `client_id` when given); the error reply.
fn error_for(
    c: &mut stuisession_client::Client,
    command: &str,
    session_id: &str,
    client_id: Option<&str>,
) -> ServerError {
    let mut parameters = json!({"session_id": session_id});
    if let Some(client_id) = client_id {
        parameters["client_id"] = json!(client_id);
    }
    if command == "update_session_state" {
        parameters["state_data"] = json!({"k": 1});
    }
    server_error(c.call_value(command, parameters))
}

const SESSION_COMMANDS: [&str; 4] = [
    "restore_session",
    "update_session_state",
    "close_session",
    "get_session_info",
];

#[test]
fn unknown_session_id_is_session_not_found_and_reconnect_creates() {
    let bridge = Bridge::start();
    let mut c = client(&bridge);
    let client_id = unique_client_id("unknown");
    let unknown = unknown_session_id();

    for command in SESSION_COMMANDS {
        for cid in [None, Some(client_id.as_str())] {
            let e = error_for(&mut c, command, &unknown, cid);
            assert_eq!(
                e.error_type,
                ErrorType::SessionNotFound,
                "{} of an unknown id (client_id {:?}): {} (error_code {:?})",
                command,
                cid,
                e,
                e.error_code
            );
        }
    }

    let reconnected = c
        .restore_or_create(&client_id, Some(&unknown))
        .expect("the reconnect flow must fall back to create_session");
    match reconnected {
        Reconnected::Created { session, not_found } => {
            assert_eq!(session.client_id, client_id);
            assert_ne!(session.session_id, unknown);
            assert!(not_found
                .expect("the restore's error")
                .is_session_not_found());
        }
        other => panic!("expected a new session, got {:?}", other),
    }
}

#[test]
fn foreign_session_id_is_session_not_found_and_reconnect_creates() {
    let bridge = Bridge::start();
    let mut c = client(&bridge);
    let owner = unique_client_id("owner");
    let intruder = unique_client_id("intruder");
    let theirs = c
        .create_session(&owner)
        .expect("owner's session")
        .session_id;
    c.update_session_state(&theirs, json!({"secret": "owner's"}))
        .expect("owner's update");

    for command in SESSION_COMMANDS {
        let foreign = error_for(&mut c, command, &theirs, Some(&intruder));
        assert_eq!(
            foreign.error_type,
            ErrorType::SessionNotFound,
            "{} of another client's session: {} (error_code {:?})",
            command,
            foreign,
            foreign.error_code
        );
        // one identical reply for "foreign" and "unknown": probing reveals nothing
        let unknown = error_for(&mut c, command, &unknown_session_id(), Some(&intruder));
        assert_eq!(
            (&foreign.message, &foreign.error_code, &foreign.details),
            (&unknown.message, &unknown.error_code, &unknown.details),
            "{}: a foreign id must answer like an unknown one",
            command
        );
    }

    match c
        .restore_or_create(&intruder, Some(&theirs))
        .expect("the reconnect flow must fall back to create_session")
    {
        Reconnected::Created { session, .. } => {
            assert_eq!(session.client_id, intruder);
            assert_ne!(session.session_id, theirs);
        }
        other => panic!("expected a new session, got {:?}", other),
    }
    // the owner's session is untouched
    let owners = c
        .restore_session(&RestoreSessionRequest {
            session_id: theirs.clone(),
            client_id: Some(owner.clone()),
            ..Default::default()
        })
        .expect("the owner still restores it");
    assert_eq!(owners.session_state, json!({"secret": "owner's"}));
}

#[test]
fn upstream_format_session_id_is_session_not_found_and_reconnect_creates() {
    let bridge = Bridge::start();
    let mut c = client(&bridge);
    let client_id = unique_client_id("pharo-id");

    for command in SESSION_COMMANDS {
        for cid in [None, Some(client_id.as_str())] {
            let e = error_for(&mut c, command, UPSTREAM_FORMAT_ID, cid);
            assert_eq!(
                e.error_type,
                ErrorType::SessionNotFound,
                "{} of an upstream-format id (client_id {:?}): {} (error_code {:?})",
                command,
                cid,
                e,
                e.error_code
            );
        }
    }

    match c
        .restore_or_create(&client_id, Some(UPSTREAM_FORMAT_ID))
        .expect("the reconnect flow must fall back to create_session")
    {
        Reconnected::Created { session, not_found } => {
            assert_eq!(session.client_id, client_id);
            assert!(not_found
                .expect("the restore's error")
                .is_session_not_found());
        }
        other => panic!("expected a new session, got {:?}", other),
    }
}

#[test]
fn other_errors_do_not_trigger_the_fallback() {
    // an invalid request (empty client id) is not SessionNotFound: the flow
    // returns the error instead of creating a session
    let bridge = Bridge::start();
    let mut c = client(&bridge);
    let e = match c.restore_or_create("", Some(&unknown_session_id())) {
        Err(ClientError::Server(e)) => *e,
        other => panic!("expected an error reply, got {:?}", other),
    };
    assert_ne!(e.error_type, ErrorType::SessionNotFound, "{}", e);
    assert!(!e.message.is_empty());
    let e = server_error(c.create_session(""));
    assert_ne!(e.error_type, ErrorType::SessionNotFound, "{}", e);
}

#[test]
fn resent_request_with_the_same_id_is_not_applied_twice() {
    let bridge = Bridge::start();
    let mut c = client(&bridge);
    let client_id = unique_client_id("resend");
    let id = c.create_session(&client_id).expect("create").session_id;
    let before = c.get_session_info(&id).expect("info").extra["revision"].clone();

    let envelope = Envelope {
        id: c.next_request_id(),
        command: "update_session_state".into(),
        parameters: json!({"session_id": id, "state_data": {"n": 1, "text": "😀"}}),
    };
    let first = c.roundtrip(&envelope).expect("first copy");
    assert!(first.is_success(), "{:?}", first);
    let second = c.roundtrip(&envelope).expect("resent copy");
    assert_eq!(first.result, second.result, "a resend gets the first reply");

    let after = c.get_session_info(&id).expect("info").extra["revision"].clone();
    assert_eq!(
        after.as_u64(),
        before.as_u64().map(|r| r + 1),
        "applied exactly once"
    );
}

#[test]
fn integers_beyond_64_bits_come_back_as_f64() {
    let bridge = Bridge::start();
    let mut c = client(&bridge);
    let id = c
        .create_session(&unique_client_id("bigint"))
        .expect("create")
        .session_id;

    // another client (not this crate: it can not write such numbers) stores big integers
    let request_id = c.next_request_id();
    let body = format!(
        r#"{{"id":"{rid}","command":"update_session_state","parameters":{{"session_id":"{sid}","state_data":{{
            "u64_max":18446744073709551615,"i64_min":-9223372036854775808,
            "two_pow_64":18446744073709551616,"below_i64_min":-9223372036854775809,
            "ten_pow_30":1000000000000000000000000000000,
            "odd_big":123456789012345678901234567890123}}}}}}"#,
        rid = request_id,
        sid = id
    );
    let reply = c
        .roundtrip_text("update_session_state", &request_id, &body)
        .expect("raw update");
    assert!(reply.contains("\"success\""), "{}", reply);

    let state = c
        .restore_session(&RestoreSessionRequest::new(id.as_str()))
        .expect("restore")
        .session_state;
    // within 64 bits: exact
    assert_eq!(state["u64_max"].as_u64(), Some(u64::MAX));
    assert_eq!(state["i64_min"].as_i64(), Some(i64::MIN));
    // beyond: the nearest f64
    for (key, expected) in [
        ("two_pow_64", 18446744073709551616.0_f64),
        ("below_i64_min", -9223372036854775809.0_f64),
        ("ten_pow_30", 1e30_f64),
        ("odd_big", 123456789012345678901234567890123.0_f64),
    ] {
        let n = state[key].as_f64().expect("a number");
        assert!(state[key].is_f64(), "{} must come back as f64", key);
        assert!(state[key].as_u64().is_none() && state[key].as_i64().is_none());
        assert_eq!(n.to_bits(), expected.to_bits(), "{}", key);
    }

    // the raw reply text keeps every digit
    let restore_id = c.next_request_id();
    let text = c
        .roundtrip_text(
            "restore_session",
            &restore_id,
            &json!({"id": restore_id, "command": "restore_session",
                    "parameters": {"session_id": id}})
            .to_string(),
        )
        .expect("raw restore");
    assert!(
        text.contains("123456789012345678901234567890123"),
        "{}",
        text
    );

    // an integer beyond f64's range: the reply can not be decoded -> Protocol error
    let huge = format!("1{}", "0".repeat(400));
    let request_id = c.next_request_id();
    let body = format!(
        r#"{{"id":"{}","command":"update_session_state","parameters":{{"session_id":"{}","state_data":{{"huge":{}}}}}}}"#,
        request_id, id, huge
    );
    let reply = c
        .roundtrip_text("update_session_state", &request_id, &body)
        .expect("raw update");
    assert!(
        reply.contains(&huge),
        "the bridge keeps the digits: {}",
        reply
    );
    match c.restore_session(&RestoreSessionRequest::new(id.as_str())) {
        Err(ClientError::Protocol(message)) => {
            assert!(message.contains("out of range"), "{}", message)
        }
        other => panic!("expected a Protocol error, got {:?}", other),
    }
    // the client is still usable afterwards
    c.get_session_info(&id).expect("info after a bad reply");
}
