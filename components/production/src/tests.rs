//! Native tests of the production logic, including events arriving in any
//! order and more than once.

use kit::{EventError, MemPlatform};
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
