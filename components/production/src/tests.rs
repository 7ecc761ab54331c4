//! Native tests of the production logic, including events arriving in any
//! order and more than once.

use std::cell::RefCell;
use std::collections::BTreeSet;

use kit::{EventError, MemPlatform, Platform};
use serde_json::{Value, json};

use crate::{api, events};

fn get(p: &MemPlatform, target: &str) -> (u16, Value) {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let r = api::handle(p, "GET", path, query);
    p.finish(r.status < 400);
    (r.status, serde_json::from_slice(&r.body).unwrap())
}

fn event(p: &MemPlatform, topic: &str, payload: &Value) -> Result<(), EventError> {
    let r = events::handle(p, topic, payload.to_string().as_bytes());
    p.finish(r.is_ok());
    r
}

fn order(id: u64, cafe: u64, status: &str, version: u64) -> Value {
    json!({"id":id,"custNm":"Hwang","cafeId":cafe,"cafeNm":"Coldbrew","chkDate":"20210713","qty":2,"status":status,"version":version})
}

fn state(p: &MemPlatform, id: u64) -> (String, u64) {
    let (s, v) = get(p, &format!("/productions/{id}"));
    assert_eq!(s, 200, "{v}");
    (
        v["status"].as_str().unwrap().to_owned(),
        v["version"].as_u64().unwrap(),
    )
}

fn topics(p: &MemPlatform) -> Vec<String> {
    p.take_published().into_iter().map(|e| e.topic).collect()
}

#[test]
fn order_requested_registers_once() {
    let p = MemPlatform::new();
    event(&p, "order.requested", &order(7, 5, "REQUESTED", 1)).unwrap();
    event(&p, "order.requested", &order(7, 5, "REQUESTED", 1)).unwrap();
    let (s, v) = get(&p, "/productions/7");
    assert_eq!(s, 200);
    assert_eq!(
        v,
        json!({"id":7,"orderId":7,"custNm":"Hwang","cafeId":5,"cafeNm":"Coldbrew","chkDate":"20210713","qty":2,"status":"REGISTERED","version":1})
    );
    let ev = p.take_published();
    assert_eq!(ev.len(), 1);
    assert_eq!(
        (ev[0].topic.as_str(), ev[0].key.as_str()),
        ("production.registered", "7")
    );
    assert_eq!(ev[0].json(), v);
}

#[test]
fn cancel_after_register() {
    let p = MemPlatform::new();
    event(&p, "order.requested", &order(7, 5, "REQUESTED", 1)).unwrap();
    event(&p, "order.canceled", &order(7, 5, "CANCELED", 2)).unwrap();
    event(&p, "order.canceled", &order(7, 5, "CANCELED", 2)).unwrap();
    assert_eq!(state(&p, 7), ("CANCELED".into(), 2));
    assert_eq!(
        topics(&p),
        vec!["production.registered", "production.canceled"]
    );
}

#[test]
fn cancel_before_request_is_not_resurrected() {
    let p = MemPlatform::new();
    event(&p, "order.canceled", &order(7, 5, "CANCELED", 2)).unwrap();
    event(&p, "order.requested", &order(7, 5, "REQUESTED", 1)).unwrap();
    assert_eq!(state(&p, 7), ("CANCELED".into(), 1));
    assert_eq!(topics(&p), vec!["production.canceled"]);
}

#[test]
fn cafe_deleted_force_cancels_registered_only() {
    let p = MemPlatform::new();
    event(&p, "order.requested", &order(1, 5, "REQUESTED", 1)).unwrap();
    event(&p, "order.requested", &order(2, 5, "REQUESTED", 1)).unwrap();
    event(&p, "order.requested", &order(3, 6, "REQUESTED", 1)).unwrap();
    event(&p, "order.canceled", &order(2, 5, "CANCELED", 2)).unwrap();
    p.take_published();
    let del = json!({"cafeId":"5","cafeNm":"Coldbrew","chkDate":"20210713"});
    event(&p, "cafe.deleted", &del).unwrap();
    event(&p, "cafe.deleted", &del).unwrap();
    assert_eq!(state(&p, 1), ("FORCE_CANCELED".into(), 2));
    assert_eq!(state(&p, 2), ("CANCELED".into(), 2));
    assert_eq!(state(&p, 3), ("REGISTERED".into(), 1));
    assert_eq!(topics(&p), vec!["production.force-canceled"]);
    // a cancel after the force-cancel changes nothing
    event(&p, "order.canceled", &order(1, 5, "CANCELED", 2)).unwrap();
    assert_eq!(state(&p, 1), ("FORCE_CANCELED".into(), 2));
}

#[test]
fn request_after_delete_is_force_canceled() {
    let p = MemPlatform::new();
    event(&p, "cafe.deleted", &json!({"cafeId":5})).unwrap();
    event(&p, "order.requested", &order(7, 5, "REQUESTED", 1)).unwrap();
    assert_eq!(state(&p, 7), ("FORCE_CANCELED".into(), 1));
    assert_eq!(topics(&p), vec!["production.force-canceled"]);
}

/// A platform that remembers what was read: `(collection, Some(key))` for a
/// get, `(collection, None)` for a list. The host version-checks exactly
/// those documents at commit.
struct Reads<'a> {
    p: &'a MemPlatform,
    read: RefCell<BTreeSet<(String, Option<String>)>>,
}

impl Platform for Reads<'_> {
    fn get(&self, collection: &str, key: &str) -> Option<Vec<u8>> {
        self.read
            .borrow_mut()
            .insert((collection.into(), Some(key.into())));
        self.p.get(collection, key)
    }
    fn put(&self, collection: &str, key: &str, value: &[u8]) {
        self.p.put(collection, key, value)
    }
    fn delete(&self, collection: &str, key: &str) {
        self.p.delete(collection, key)
    }
    fn list(&self, collection: &str) -> Vec<(String, Vec<u8>)> {
        self.read.borrow_mut().insert((collection.into(), None));
        self.p.list(collection)
    }
    fn next_id(&self, sequence: &str) -> u64 {
        self.p.next_id(sequence)
    }
    fn publish(&self, topic: &str, key: &str, payload: &[u8]) {
        self.p.publish(topic, key, payload)
    }
}

fn index(p: &MemPlatform, cafe: u64) -> Vec<String> {
    p.list(&format!("by-cafe-{cafe}"))
        .into_iter()
        .map(|(k, _)| k)
        .collect()
}

#[test]
fn every_created_record_is_indexed_under_its_item() {
    let p = MemPlatform::new();
    // REGISTERED
    event(&p, "order.requested", &order(1, 5, "REQUESTED", 1)).unwrap();
    // CANCELED: the cancel overtook the request
    event(&p, "order.canceled", &order(2, 5, "CANCELED", 2)).unwrap();
    event(&p, "order.requested", &order(2, 5, "REQUESTED", 1)).unwrap();
    // FORCE_CANCELED: requested after its item was deleted
    event(&p, "cafe.deleted", &json!({"cafeId":6})).unwrap();
    event(&p, "order.requested", &order(3, 6, "REQUESTED", 1)).unwrap();
    // changes do not rewrite the index
    event(&p, "order.canceled", &order(1, 5, "CANCELED", 2)).unwrap();
    assert_eq!(index(&p, 5), vec!["1", "2"]);
    assert_eq!(index(&p, 6), vec!["3"]);
    assert_eq!(
        serde_json::from_slice::<Value>(&p.get("by-cafe-6", "3").unwrap()).unwrap(),
        json!({"orderId":3})
    );
    assert_eq!(state(&p, 2), ("CANCELED".into(), 1));
    assert_eq!(state(&p, 3), ("FORCE_CANCELED".into(), 1));
    assert!(crate::model::by_cafe(u64::MAX).len() <= 256);
}

#[test]
fn cafe_deleted_reads_and_changes_only_that_items_productions() {
    let p = MemPlatform::new();
    // ids 1..=12 for item 5 (past 9: key order is not numeric order),
    // interleaved with 101..=103 for item 6
    for id in 1..=12 {
        event(&p, "order.requested", &order(id, 5, "REQUESTED", 1)).unwrap();
        if id % 4 == 0 {
            event(
                &p,
                "order.requested",
                &order(100 + id / 4, 6, "REQUESTED", 1),
            )
            .unwrap();
        }
    }
    event(&p, "order.canceled", &order(3, 5, "CANCELED", 2)).unwrap();
    event(&p, "order.canceled", &order(102, 6, "CANCELED", 2)).unwrap();
    p.take_published();
    let six = |p: &MemPlatform| -> Vec<Value> {
        (101..=103)
            .map(|id| get(p, &format!("/productions/{id}")).1)
            .collect()
    };
    let before = six(&p);

    let r = Reads {
        p: &p,
        read: RefCell::new(BTreeSet::new()),
    };
    let res = events::handle(&r, "cafe.deleted", br#"{"cafeId":5}"#);
    p.finish(res.is_ok());
    res.unwrap();

    let mut expected: BTreeSet<(String, Option<String>)> = (1..=12u64)
        .map(|id| ("productions".to_owned(), Some(id.to_string())))
        .collect();
    expected.insert(("by-cafe-5".into(), None));
    assert_eq!(*r.read.borrow(), expected);

    for id in 1..=12 {
        let want = if id == 3 {
            ("CANCELED".into(), 2)
        } else {
            ("FORCE_CANCELED".into(), 2)
        };
        assert_eq!(state(&p, id), want, "production {id}");
    }
    assert_eq!(six(&p), before);
    let ev = p.take_published();
    assert!(ev.iter().all(|e| e.topic == "production.force-canceled"));
    let mut keys: Vec<u64> = ev.iter().map(|e| e.key.parse().unwrap()).collect();
    keys.sort_unstable();
    assert_eq!(keys, (1..=12).filter(|&id| id != 3).collect::<Vec<_>>());

    // redelivery: nothing left to do
    event(&p, "cafe.deleted", &json!({"cafeId":5})).unwrap();
    assert!(p.take_published().is_empty());
    // the other item's turn
    event(&p, "cafe.deleted", &json!({"cafeId":6})).unwrap();
    assert_eq!(state(&p, 101), ("FORCE_CANCELED".into(), 2));
    assert_eq!(state(&p, 102), ("CANCELED".into(), 2));
    assert_eq!(state(&p, 103), ("FORCE_CANCELED".into(), 2));
    assert_eq!(topics(&p).len(), 2);
}

#[test]
fn malformed_payloads_are_invalid_not_traps() {
    let p = MemPlatform::new();
    for (topic, payload) in [
        ("order.requested", json!({"id":"x"})),
        ("order.canceled", json!([])),
        ("cafe.deleted", json!({"cafeId":0})),
    ] {
        assert!(
            matches!(event(&p, topic, &payload), Err(EventError::Invalid(_))),
            "{topic}"
        );
    }
    assert!(events::handle(&p, "order.requested", b"").is_err());
    assert_eq!(event(&p, "other", &json!(null)), Ok(()));
}

#[test]
fn list_filters_and_routes() {
    let p = MemPlatform::new();
    for (id, cafe) in [(10, 5), (2, 5), (3, 6)] {
        event(&p, "order.requested", &order(id, cafe, "REQUESTED", 1)).unwrap();
    }
    event(&p, "order.canceled", &order(3, 6, "CANCELED", 2)).unwrap();
    let ids = |target: &str| -> Vec<u64> {
        let (s, v) = get(&p, target);
        assert_eq!(s, 200, "{v}");
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x["id"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(ids("/productions"), vec![2, 3, 10]);
    assert_eq!(ids("/productions?cafeId=5"), vec![2, 10]);
    assert_eq!(ids("/productions?orderId=3"), vec![3]);
    assert_eq!(ids("/productions?status=CANCELED"), vec![3]);
    assert_eq!(get(&p, "/productions?status=x").0, 400);
    assert_eq!(
        get(&p, "/productions/99").1["error"],
        "production_not_found"
    );
    assert_eq!(get(&p, "/productions/x").0, 400);
    assert_eq!(get(&p, "/productions/1/2").0, 404);
    let r = api::handle(&p, "POST", "/productions", "");
    assert_eq!((r.status, r.header("allow")), (405, Some("GET")));
    assert_eq!(api::handle(&p, "DELETE", "/productions/2", "").status, 405);
}
