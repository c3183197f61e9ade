//! The watch API against a real `stuisession serve --notify`: two clients on
//! one session, A writes, B's local copy follows through notices and deltas.

mod common;

use std::time::{Duration, Instant};

use common::{client, unique_client_id, Bridge, Setup};
use serde_json::{json, Map, Value};
use stuisession_client::{Client, ClientError, ErrorType, Watch};

/// How long notices may take to arrive on a loaded machine (a bound, not a measurement).
const SETTLE: Duration = Duration::from_secs(30);

/// Poll until the copy is at `revision`; only notices make `poll` sync, so
/// this fails when the notices do not arrive.
fn settle(watch: &mut Watch, revision: u64) {
    let deadline = Instant::now() + SETTLE;
    while watch.revision() != Some(revision) {
        assert!(
            Instant::now() < deadline,
            "the watch is at revision {:?}, not {} after {:?} ({:?})",
            watch.revision(),
            revision,
            SETTLE,
            watch
        );
        watch.poll(Duration::from_millis(500)).expect("poll");
    }
}

/// The state sections of a full restore, as the test reads them: every
/// member of the result except the record fields listed here.
fn full_restore(c: &mut Client, session_id: &str, client_id: &str) -> (u64, Map<String, Value>) {
    let result = c
        .call_value(
            "restore_session",
            json!({"session_id": session_id, "client_id": client_id}),
        )
        .expect("full restore");
    assert_ne!(
        result.get("delta"),
        Some(&json!(true)),
        "asked for a full restore"
    );
    let revision = result["revision"].as_u64().expect("revision");
    let record = [
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
    let sections = result
        .as_object()
        .expect("an object")
        .iter()
        .filter(|(k, _)| !record.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    (revision, sections)
}

/// The i-th state A writes in full: keys come and go (a window of three).
fn state(i: u64) -> Value {
    let mut s = json!({
        "step": i,
        "workspace": format!("x := {} + 4. \"ünï 😀\"", i),
        "nested": {"list": (0..i % 5).collect::<Vec<u64>>(), "flag": i % 2 == 0},
    });
    for k in i.saturating_sub(2)..=i {
        s[format!("k{}", k)] = json!(k * 10);
    }
    s
}

/// The i-th merge patch A sends: sets, nested sets, and deletes (`null`), so
/// the deltas carry set and delete operations below the section.
fn patch(i: u64) -> Value {
    let mut p = json!({
        "step": i,
        "nested": {"flag": i % 2 == 0, "deeper": {"at": i, "gone": null}},
    });
    p[format!("k{}", i)] = json!(i * 10);
    p[format!("k{}", i.saturating_sub(2))] = Value::Null; // delete an older key
    if i % 4 == 0 {
        p["nested"]["deeper"]["gone"] = json!(["back", i]);
        p["workspace"] = Value::Null;
    }
    p
}

/// RFC 7386 JSON merge patch, written here so the expected state does not
/// come from the bridge.
fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(members) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().unwrap();
            for (k, v) in members {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// A writes step `i`: the first step of every other burst of ten replaces the
/// state (a delta then sets the whole section), the others merge a patch and
/// change the object registry (so a merge-only burst's delta carries set and
/// delete operations deep in the sections). Updates `expected` (the
/// `session_state`) and returns the new revision.
fn write(a: &mut Client, id: &str, i: u64, expected: &mut Value) -> u64 {
    let result = if i % 20 == 1 {
        *expected = state(i);
        a.call_value(
            "update_session_state",
            json!({"session_id": id, "state_data": state(i)}),
        )
    } else {
        merge(expected, &patch(i));
        let mut objects = json!({});
        objects[format!("o{}", i)] =
            json!({"class_name": "Point", "print_string": format!("{}@4", i)});
        objects[format!("o{}", i.saturating_sub(3))] = Value::Null;
        a.call_value(
            "update_session_state",
            json!({"session_id": id, "state_data": patch(i), "mode": "merge",
                   "changes": {"objects": objects}}),
        )
    }
    .expect("update");
    assert_eq!(&result["session_state"], expected, "step {}", i);
    result["revision"]
        .as_u64()
        .expect("update result has a revision")
}

fn revision_of(extra: &Map<String, Value>) -> u64 {
    extra
        .get("revision")
        .and_then(Value::as_u64)
        .expect("update result has a revision")
}

#[test]
fn watch_copy_equals_a_full_restore_after_each_burst() {
    let bridge = Bridge::start_with(Setup {
        notify: true,
        ..Default::default()
    });
    let client_id = unique_client_id("watch");
    let mut a = client(&bridge);
    let id = a.create_session(&client_id).expect("create").session_id;

    let mut watch =
        Watch::new(client(&bridge), bridge.notify_endpoint(), &id).client_id(&client_id);
    watch
        .start()
        .expect("watch_session + subscribe + full restore");
    let (rev0, sections0) = full_restore(&mut a, &id, &client_id);
    assert_eq!(watch.revision(), Some(rev0));
    assert_eq!(watch.state(), &sections0);
    assert!(
        watch.topic().map_or(false, |t| t.starts_with("n1.")),
        "{:?}",
        watch.topic()
    );

    const BURSTS: u64 = 8;
    const PER_BURST: u64 = 10;
    let mut step = 0;
    let mut expected = json!({});
    for burst in 0..BURSTS {
        let dropped = burst == 4;
        if dropped {
            // the subscription is lost for a whole burst: every notice missed
            watch.close();
        }
        let mut last = 0;
        for _ in 0..PER_BURST {
            step += 1;
            last = write(&mut a, &id, step, &mut expected);
        }
        if dropped {
            assert!(matches!(
                watch.poll(Duration::from_millis(0)),
                Err(ClientError::Config(_))
            ));
            watch.resubscribe().expect("resubscribe catches up");
            assert_eq!(watch.revision(), Some(last));
        } else {
            settle(&mut watch, last);
        }
        // the copy equals what A wrote and what a full restore returns
        assert_eq!(watch.state()["session_state"], expected, "burst {}", burst);
        let (revision, sections) = full_restore(&mut a, &id, &client_id);
        assert_eq!(revision, last);
        assert_eq!(watch.state(), &sections, "burst {}", burst);
    }
    let (syncs, full_syncs, notices) = watch.counts();
    assert_eq!(
        full_syncs,
        1,
        "only the first sync restores in full ({:?})",
        watch.counts()
    );
    assert!(
        syncs > BURSTS - 1,
        "one delta per burst at least: {:?}",
        watch.counts()
    );
    assert!(notices >= BURSTS - 1, "notices came: {:?}", watch.counts());

    // B writes through its own client too; the copy follows its own change
    let own = state(1000);
    let updated = watch
        .client_mut()
        .update_session_state(&id, own.clone())
        .expect("update through B");
    settle(&mut watch, revision_of(&updated.extra));
    assert_eq!(watch.state()["session_state"], own);

    // closing ends the watch
    a.close_session(&id).expect("close");
    let deadline = Instant::now() + SETTLE;
    while watch.ended().is_none() {
        assert!(Instant::now() < deadline, "no closed notice: {:?}", watch);
        watch.poll(Duration::from_millis(500)).expect("poll");
    }
    assert_eq!(watch.ended(), Some("closed"));
}

#[test]
fn watch_of_another_clients_session_answers_session_not_found() {
    let bridge = Bridge::start_with(Setup {
        notify: true,
        ..Default::default()
    });
    let owner = unique_client_id("watch-owner");
    let mut a = client(&bridge);
    let id = a.create_session(&owner).expect("create").session_id;
    let other = unique_client_id("watch-other");
    let mut watch = Watch::new(client(&bridge), bridge.notify_endpoint(), &id).client_id(&other);
    match watch.start() {
        Err(ClientError::Server(e)) => assert_eq!(e.error_type, ErrorType::SessionNotFound),
        other => panic!("expected SessionNotFound, got {:?}", other),
    }
    assert!(matches!(
        watch.poll(Duration::from_millis(0)),
        Err(ClientError::Config(_))
    ));
}
