//! CurveZMQ end to end: keys made by `stuisession keys curve-server` /
//! `curve-client`, a `stuisession serve --curve-secret --curve-clients`
//! bridge, and this crate's `ClientOptions::curve`.
//!
//! The allow-list binds alice's key to alice's client id and bob's key to
//! bob's; mallory's key is on no list.

mod common;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{run_cli, unique_client_id, Bridge, Setup, TempDir};
use serde_json::json;
use stuisession_client::{
    Client, ClientError, ClientOptions, CurveKeys, ErrorType, RestoreSessionRequest, Watch,
};

/// The value of `name = "..."` in a ZeroMQ certificate file (`zmq.auth` format).
fn cert_field(path: &Path, name: &str) -> String {
    let text = fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("could not read {}: {}", path.display(), e));
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix(name) {
            let value = rest.trim_start().trim_start_matches('=').trim();
            let value = value.trim_matches('"');
            assert_eq!(
                value.len(),
                40,
                "{} in {}: {:?}",
                name,
                path.display(),
                value
            );
            return value.to_string();
        }
    }
    panic!("no {} in {}:\n{}", name, path.display(), text);
}

/// Keys of one client made by `stuisession keys curve-client --name <name>`.
fn client_keys(dir: &Path, server_public_key: &str, name: &str) -> CurveKeys {
    run_cli(&[
        "keys",
        "curve-client",
        "--out",
        dir.to_str().unwrap(),
        "--name",
        name,
    ]);
    let secret_file = dir.join(format!("{}.key_secret", name));
    CurveKeys {
        server_public_key: server_public_key.to_string(),
        public_key: cert_field(&secret_file, "public-key"),
        secret_key: cert_field(&secret_file, "secret-key"),
    }
}

fn curve_client(bridge: &Bridge, keys: &CurveKeys, timeout_ms: u64, tries: u32) -> Client {
    Client::with_options(
        ClientOptions::new(bridge.endpoint())
            .timeout(Duration::from_millis(timeout_ms))
            .linger(Duration::from_millis(0))
            .max_tries(tries)
            .retry_delay(Duration::from_millis(100))
            .curve(keys.clone()),
    )
    .expect("client")
}

fn error_type<T: std::fmt::Debug>(result: Result<T, ClientError>) -> ErrorType {
    match result {
        Err(ClientError::Server(e)) => e.error_type,
        other => panic!("expected an error reply, got {:?}", other),
    }
}

#[test]
fn curve_keys_from_the_cli_act_only_as_their_bound_client_ids() {
    let keys = TempDir::new();
    let dir = keys.0.as_path();
    run_cli(&["keys", "curve-server", "--out", dir.to_str().unwrap()]);
    let server_public = cert_field(&dir.join("server.key"), "public-key");
    let alice = client_keys(dir, &server_public, "alice");
    let bob = client_keys(dir, &server_public, "bob");
    let mallory = client_keys(dir, &server_public, "mallory");
    let alice_id = unique_client_id("curve-alice");
    let bob_id = unique_client_id("curve-bob");
    let allow_list = dir.join("clients.toml");
    fs::write(
        &allow_list,
        format!(
            "[[client]]\npublic_key = \"{}\"\nclient_ids = [\"{}\"]\n\n\
             [[client]]\npublic_key = \"{}\"\nclient_ids = [\"{}\"]\n",
            alice.public_key, alice_id, bob.public_key, bob_id
        ),
    )
    .unwrap();

    let bridge = Bridge::start_with(Setup {
        args: vec![
            "--curve-secret".into(),
            dir.join("server.key_secret").to_str().unwrap().into(),
            "--curve-clients".into(),
            allow_list.to_str().unwrap().into(),
        ],
        probe_curve: Some(alice.clone()),
        notify: true,
    });

    // alice, with her bound key: create / update / restore as her client id
    let mut a = curve_client(&bridge, &alice, 5000, 3);
    let created = a
        .create_session(&alice_id)
        .expect("create_session with a bound key");
    assert_eq!(created.client_id, alice_id);
    let id = created.session_id.clone();
    let state = json!({"workspace": "x := 3 + 4.", "variables": ["x"], "ünï": "😀"});
    let updated = a.update_session_state(&id, state.clone()).expect("update");
    assert!(updated.update_successful);
    let restored = a
        .restore_session(&RestoreSessionRequest {
            session_id: id.clone(),
            client_id: Some(alice_id.clone()),
            ..Default::default()
        })
        .expect("restore with a bound key");
    assert_eq!(restored.client_id, alice_id);
    assert_eq!(restored.session_state, state);
    assert_eq!(
        a.list_client_sessions(&alice_id)
            .expect("list with a bound key")
            .session_count,
        1
    );
    // ... and only as her client id
    assert_eq!(
        error_type(a.create_session(&bob_id)),
        ErrorType::SessionError,
        "a key may not create sessions for a client id it is not bound to"
    );

    // mallory's key is on no list: refused at the handshake, so no reply at
    // all; the call ends in a clean timeout after its tries
    let mut m = curve_client(&bridge, &mallory, 700, 2);
    match m.create_session(&alice_id) {
        Err(ClientError::Timeout { tries, command, .. }) => {
            assert_eq!(tries, 2);
            assert_eq!(command, "create_session");
        }
        other => panic!("an unknown key must get no reply, got {:?}", other),
    }
    match m.restore_session(&RestoreSessionRequest::new(id.as_str())) {
        Err(ClientError::Timeout { .. }) => {}
        other => panic!("an unknown key must get no reply, got {:?}", other),
    }
    // a plaintext client gets nothing either
    let mut plain = Client::with_options(
        ClientOptions::new(bridge.endpoint())
            .timeout(Duration::from_millis(700))
            .linger(Duration::from_millis(0))
            .max_tries(1),
    )
    .unwrap();
    assert!(matches!(
        plain.get_session_statistics(),
        Err(ClientError::Timeout { .. })
    ));

    // bob's key is bound to bob: alice's session does not exist for him,
    // whichever client id he sends
    let mut b = curve_client(&bridge, &bob, 5000, 3);
    for client_id in [None, Some(bob_id.clone()), Some(alice_id.clone())] {
        let request = RestoreSessionRequest {
            session_id: id.clone(),
            client_id: client_id.clone(),
            ..Default::default()
        };
        assert_eq!(
            error_type(b.restore_session(&request)),
            ErrorType::SessionNotFound,
            "restore of another client's session by bob (client_id {:?})",
            client_id
        );
    }
    assert_eq!(
        error_type(b.update_session_state(&id, json!({"stolen": true}))),
        ErrorType::SessionNotFound
    );
    // bob's own sessions work
    let own = b
        .create_session(&bob_id)
        .expect("bob creates his own session");
    assert_eq!(own.client_id, bob_id);

    // the notice socket is a CURVE server too: alice's watch subscribes with
    // her keys and follows her update; bob may not watch her session
    let mut watch = Watch::new(
        curve_client(&bridge, &alice, 5000, 3),
        bridge.notify_endpoint(),
        &id,
    )
    .client_id(&alice_id);
    watch.start().expect("alice watches her session over CURVE");
    let newer = json!({"workspace": "y := 5."});
    let revision = a
        .update_session_state(&id, newer.clone())
        .expect("update")
        .extra["revision"]
        .as_u64()
        .expect("revision");
    let deadline = Instant::now() + Duration::from_secs(30);
    while watch.revision() != Some(revision) {
        assert!(
            Instant::now() < deadline,
            "no notice over CURVE: {:?}",
            watch
        );
        watch.poll(Duration::from_millis(500)).expect("poll");
    }
    assert_eq!(watch.state()["session_state"], newer);
    let state = newer;
    let mut bob_watch = Watch::new(
        curve_client(&bridge, &bob, 5000, 3),
        bridge.notify_endpoint(),
        &id,
    )
    .client_id(&bob_id);
    assert_eq!(error_type(bob_watch.start()), ErrorType::SessionNotFound);

    // the refusals left alice's session and the bridge as they were
    let again = a
        .restore_session(&RestoreSessionRequest::new(id.as_str()))
        .expect("alice still restores");
    assert_eq!(again.session_state, state);
}
