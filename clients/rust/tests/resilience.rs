//! The lazy-pirate pattern against a bridge that is killed, stopped, or not there.

mod common;

use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{free_port, unique_client_id, Bridge};
use serde_json::{json, Value};
use stuisession_client::{Client, ClientError, ClientOptions, Reconnected};

fn state(n: u64) -> Value {
    json!({
        "n": n,
        "history": (0..=n).collect::<Vec<u64>>(),
        "workspace": format!("x := {}. \"😀 ünïcödé\"", n),
        "float": n as f64 / 3.0,
    })
}

fn revision(value: &serde_json::Map<String, Value>) -> u64 {
    value
        .get("revision")
        .and_then(Value::as_u64)
        .expect("the bridge reports revision")
}

fn options(bridge: &Bridge) -> ClientOptions {
    // upstream's 5 s timeout and 3 tries; a short pause between tries
    ClientOptions::new(bridge.endpoint()).retry_delay(Duration::from_millis(300))
}

#[test]
fn sigkill_and_restart_on_the_same_store_keeps_every_acknowledged_update() {
    let mut bridge = Bridge::start();
    let mut c = Client::with_options(options(&bridge)).expect("client");
    let client_id = unique_client_id("sigkill");
    let id = c.create_session(&client_id).expect("create").session_id;

    // acknowledged updates, then SIGKILL between two requests
    let mut last_ack = 0;
    let mut last_revision = 0;
    for n in 1..=10 {
        let r = c.update_session_state(&id, state(n)).expect("update");
        assert_eq!(r.session_state, state(n));
        last_ack = n;
        last_revision = revision(&r.extra);
    }
    bridge.kill();
    bridge.spawn(); // same port and store; not waiting: the client's retries do

    // the next update is sent while the bridge starts; the lazy pirate gets it through
    let r = c
        .update_session_state(&id, state(last_ack + 1))
        .expect("update across the restart");
    last_ack += 1;
    assert_eq!(
        revision(&r.extra),
        last_revision + 1,
        "the update sent around the restart is applied once"
    );
    last_revision += 1;

    // every acknowledged update is there after the restart
    let restored = match c
        .restore_or_create(&client_id, Some(&id))
        .expect("reconnect")
    {
        Reconnected::Restored(r) => r,
        other => panic!(
            "expected the session back after the restart, got {:?}",
            other
        ),
    };
    assert_eq!(restored.session_state, state(last_ack));
    assert_eq!(revision(&restored.extra), last_revision);

    // SIGKILL in the middle of a stream of updates, from another thread, then restart
    let bridge = Arc::new(Mutex::new(bridge));
    let killer = {
        let bridge = Arc::clone(&bridge);
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(400));
            let mut b = bridge.lock().unwrap_or_else(|e| e.into_inner());
            b.kill();
            b.spawn();
        })
    };
    let mut outcomes = Vec::new();
    let started = last_ack + 1;
    for n in started..started + 40 {
        match c.update_session_state(&id, state(n)) {
            Ok(r) => {
                outcomes.push((n, Ok(r.session_state == state(n))));
                last_ack = n;
            }
            Err(e) => outcomes.push((n, Err(e.to_string()))),
        }
        thread::sleep(Duration::from_millis(20));
    }
    killer.join().expect("killer thread");
    let mut bridge = Arc::try_unwrap(bridge)
        .unwrap_or_else(|_| panic!("bridge still shared"))
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());
    bridge.wait_ready();

    for (n, outcome) in &outcomes {
        match outcome {
            Ok(equal) => assert!(equal, "update {} answered another state", n),
            // a try that outlived the restart window is unacknowledged, never wrong
            Err(e) => assert!(e.contains("no reply"), "update {}: {}", n, e),
        }
    }
    let restored = c
        .restore_or_create(&client_id, Some(&id))
        .expect("reconnect after the second kill");
    let restored = match restored {
        Reconnected::Restored(r) => r,
        other => panic!("expected the session back, got {:?}", other),
    };
    let n = restored.session_state["n"].as_u64().expect("n");
    // the last acknowledged update, or one sent after it that was applied
    // but whose reply was lost with the killed process
    assert!(
        n >= last_ack,
        "acknowledged update {} lost: restored {}",
        last_ack,
        n
    );
    assert_eq!(restored.session_state, state(n));
    drop(bridge);
}

#[test]
fn a_resend_after_a_timeout_is_applied_once() {
    // The bridge is stopped (SIGSTOP) so the first copy waits in its socket
    // buffer; the client times out, reconnects and resends the same request;
    // after SIGCONT the bridge sees both copies and applies one.
    let bridge = Bridge::start();
    let mut c = Client::with_options(
        ClientOptions::new(bridge.endpoint())
            .timeout(Duration::from_millis(2000))
            .retry_delay(Duration::from_millis(100)),
    )
    .expect("client");
    let client_id = unique_client_id("sigstop");
    let id = c.create_session(&client_id).expect("create").session_id;
    let first = c.update_session_state(&id, state(1)).expect("update 1");
    let base = revision(&first.extra);

    let served_before = c.get_session_statistics().expect("statistics").extra["requests_served"]
        .as_u64()
        .expect("the bridge reports requests_served");
    bridge.signal(libc::SIGSTOP);
    let pid = bridge.pid();
    let resumer = thread::spawn(move || {
        thread::sleep(Duration::from_millis(2500));
        unsafe { libc::kill(pid, libc::SIGCONT) };
    });
    let started = Instant::now();
    let result = c.update_session_state(&id, state(2));
    resumer.join().expect("resumer thread");
    let second = result.expect("update 2 across the stop");
    assert!(
        started.elapsed() >= Duration::from_millis(2000),
        "the first try must have timed out"
    );
    assert_eq!(second.session_state, state(2));
    assert_eq!(revision(&second.extra), base + 1, "applied once");

    // give a late copy time to arrive, then check nothing was applied again
    thread::sleep(Duration::from_millis(500));
    let info = c.get_session_info(&id).expect("info");
    assert_eq!(revision(&info.extra), base + 1, "applied once");
    // and the bridge did see both copies: statistics, copy 1, copy 2, info
    let served_after = c.get_session_statistics().expect("statistics").extra["requests_served"]
        .as_u64()
        .expect("requests_served");
    assert!(
        served_after >= served_before + 4,
        "the duplicate never reached the bridge ({} -> {})",
        served_before,
        served_after
    );
}

#[test]
fn no_server_gives_a_clean_timeout_after_three_tries() {
    let port = free_port(); // nothing listens there
    let endpoint = format!("tcp://127.0.0.1:{}", port);
    let timeout = Duration::from_millis(300);
    let mut c = Client::with_options(
        ClientOptions::new(endpoint.clone())
            .timeout(timeout)
            .retry_delay(Duration::from_millis(50)),
    )
    .expect("client (ZeroMQ connects in the background)");
    assert_eq!(c.options().max_tries, 3, "upstream's default");
    let started = Instant::now();
    let err = c
        .create_session("nobody-home")
        .expect_err("no server, no reply");
    let elapsed = started.elapsed();
    match &err {
        ClientError::Timeout {
            endpoint: e,
            command,
            tries,
            timeout: t,
            request_id,
        } => {
            assert_eq!(e, &endpoint);
            assert_eq!(command, "create_session");
            assert_eq!(*tries, 3);
            assert_eq!(*t, timeout);
            assert!(!request_id.is_empty());
        }
        other => panic!("expected a timeout, got {:?}", other),
    }
    assert!(err.is_timeout());
    assert!(!err.is_session_not_found());
    let message = err.to_string();
    assert!(message.contains("after 3 tries"), "{}", message);
    assert!(
        elapsed >= timeout * 3,
        "3 tries of {:?} took only {:?}",
        timeout,
        elapsed
    );
    assert!(elapsed < Duration::from_secs(10), "took {:?}", elapsed);

    // the reconnect flow reports the same clean timeout
    let err = c
        .restore_or_create("nobody-home", Some("session_x"))
        .expect_err("no server");
    assert!(err.is_timeout(), "{:?}", err);
}
