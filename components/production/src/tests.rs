//! Native tests of the production logic, including events arriving in any
//! order and more than once.

use kit::{EventError, MemPlatform, Platform, Traced, keys};
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
fn force_cancel_after_register_and_final_states_never_change() {
    let p = MemPlatform::new();
    event(&p, "order.requested", &order(1, 5, "REQUESTED", 1)).unwrap();
    event(&p, "order.requested", &order(2, 5, "REQUESTED", 1)).unwrap();
    event(&p, "order.canceled", &order(2, 5, "CANCELED", 2)).unwrap();
    p.take_published();
    event(
        &p,
        "order.force-canceled",
        &order(1, 5, "FORCE_CANCELED", 2),
    )
    .unwrap();
    event(
        &p,
        "order.force-canceled",
        &order(1, 5, "FORCE_CANCELED", 2),
    )
    .unwrap();
    assert_eq!(state(&p, 1), ("FORCE_CANCELED".into(), 2));
    assert_eq!(topics(&p), vec!["production.force-canceled"]);
    // order never sends both, but even then a final record does not move
    event(&p, "order.canceled", &order(1, 5, "CANCELED", 2)).unwrap();
    event(
        &p,
        "order.force-canceled",
        &order(2, 5, "FORCE_CANCELED", 2),
    )
    .unwrap();
    event(&p, "order.requested", &order(1, 5, "REQUESTED", 1)).unwrap();
    assert_eq!(state(&p, 1), ("FORCE_CANCELED".into(), 2));
    assert_eq!(state(&p, 2), ("CANCELED".into(), 2));
    assert!(topics(&p).is_empty());
}

#[test]
fn force_cancel_before_request_is_not_resurrected() {
    let p = MemPlatform::new();
    event(
        &p,
        "order.force-canceled",
        &order(7, 5, "FORCE_CANCELED", 2),
    )
    .unwrap();
    event(&p, "order.requested", &order(7, 5, "REQUESTED", 1)).unwrap();
    assert_eq!(state(&p, 7), ("FORCE_CANCELED".into(), 1));
    assert_eq!(topics(&p), vec!["production.force-canceled"]);
}

#[test]
fn cafe_deleted_is_not_consumed_any_more() {
    let p = MemPlatform::new();
    event(&p, "order.requested", &order(1, 5, "REQUESTED", 1)).unwrap();
    p.take_published();
    let before = p.snapshot();
    event(&p, "cafe.deleted", &json!({"cafeId":5})).unwrap();
    assert_eq!(p.snapshot(), before);
    assert!(!crate::SUBSCRIPTIONS.contains(&"cafe.deleted"));
    // a request after the deletion is registered: only order decides
    event(&p, "order.requested", &order(2, 5, "REQUESTED", 1)).unwrap();
    assert_eq!(state(&p, 2), ("REGISTERED".into(), 1));
}

/// Which `by-status-*` collections hold each production.
fn status_index(p: &MemPlatform) -> Vec<(u64, &'static str)> {
    let mut out = Vec::new();
    for s in ["REGISTERED", "CANCELED", "FORCE_CANCELED"] {
        for k in p.keys(&format!("by-status-{s}")) {
            out.push((keys::parse_id(&k).unwrap(), s));
        }
    }
    out.sort_unstable();
    out
}

#[test]
fn every_record_is_indexed_under_its_item_and_its_current_status() {
    let p = MemPlatform::new();
    // REGISTERED
    event(&p, "order.requested", &order(1, 5, "REQUESTED", 1)).unwrap();
    // CANCELED: the cancel overtook the request
    event(&p, "order.canceled", &order(12, 5, "CANCELED", 2)).unwrap();
    event(&p, "order.requested", &order(12, 5, "REQUESTED", 1)).unwrap();
    // FORCE_CANCELED, created so
    event(
        &p,
        "order.force-canceled",
        &order(3, 6, "FORCE_CANCELED", 2),
    )
    .unwrap();
    // REGISTERED → CANCELED: the item index is not rewritten, the status one is
    event(&p, "order.requested", &order(4, 6, "REQUESTED", 1)).unwrap();
    event(&p, "order.canceled", &order(4, 6, "CANCELED", 2)).unwrap();
    assert_eq!(p.keys("by-cafe-5"), vec![keys::id(1), keys::id(12)]);
    assert_eq!(p.keys("by-cafe-6"), vec![keys::id(3), keys::id(4)]);
    assert_eq!(
        serde_json::from_slice::<Value>(&p.get("by-cafe-6", &keys::id(3)).unwrap()).unwrap(),
        json!({"orderId":3})
    );
    assert_eq!(
        status_index(&p),
        vec![
            (1, "REGISTERED"),
            (3, "FORCE_CANCELED"),
            (4, "CANCELED"),
            (12, "CANCELED")
        ]
    );
    assert_eq!(
        p.keys("productions"),
        vec![keys::id(1), keys::id(3), keys::id(4), keys::id(12)]
    );
    assert!(crate::model::by_cafe(u64::MAX).len() <= 256);
}

#[test]
fn an_event_reads_only_its_own_record() {
    let p = MemPlatform::new();
    for id in 1..=20 {
        event(&p, "order.requested", &order(id, 5, "REQUESTED", 1)).unwrap();
    }
    let t = Traced::new(&p);
    let r = events::handle(
        &t,
        "order.canceled",
        order(7, 5, "CANCELED", 2).to_string().as_bytes(),
    );
    p.finish(r.is_ok());
    r.unwrap();
    assert_eq!(t.collections(), vec!["productions"]);
    assert_eq!(t.gets_in("productions"), vec![keys::id(7)]);
}

#[test]
fn malformed_payloads_are_invalid_not_traps() {
    let p = MemPlatform::new();
    for (topic, payload) in [
        ("order.requested", json!({"id":"x"})),
        ("order.canceled", json!([])),
        ("order.force-canceled", json!({"id":0})),
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
    assert_eq!(
        ids("/productions?orderId=3&status=registered"),
        Vec::<u64>::new()
    );
    assert_eq!(ids("/productions?orderId=99"), Vec::<u64>::new());
    assert_eq!(ids("/productions?orderId=10&after=9"), vec![10]);
    assert_eq!(ids("/productions?orderId=10&after=10"), Vec::<u64>::new());
    assert_eq!(ids("/productions?cafeId=5&status=REGISTERED"), vec![2, 10]);
    for (q, name) in [
        ("status=x", "status"),
        ("orderId=x", "orderId"),
        ("cafeId=0", "cafeId"),
        ("limit=0", "limit"),
        ("after=-1", "after"),
    ] {
        let (s, v) = get(&p, &format!("/productions?{q}"));
        assert_eq!(
            (s, v["error"].as_str()),
            (400, Some("invalid_query")),
            "{q}"
        );
        assert!(v["message"].as_str().unwrap().starts_with(name), "{v}");
    }
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

/// Every page of `target` (following `Link: rel="next"`): ids per page.
fn pages(p: &impl kit::Platform, target: &str) -> Vec<Vec<u64>> {
    props::page_ids(target, "id", |path, query| {
        api::handle(p, "GET", path, query)
    })
}

#[test]
fn pages_cover_every_production_once_in_id_order() {
    let p = MemPlatform::new();
    // delivered out of order, ids across 9/10 and 99/100
    let mut ids: Vec<u64> = (1..=31).map(|i| (i * 17) % 120 + 1).collect();
    for &id in &ids {
        event(&p, "order.requested", &order(id, 5, "REQUESTED", 1)).unwrap();
    }
    ids.sort_unstable();
    let got = pages(&p, "/productions?limit=8");
    assert_eq!(
        got.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![8, 8, 8, 7]
    );
    assert_eq!(got.concat(), ids);
    assert_eq!(pages(&p, "/productions").len(), 1);
}

#[test]
fn filters_read_their_index_not_the_board() {
    let p = MemPlatform::new();
    p.set_range_cap(40);
    for id in 1..=1500u64 {
        let cafe = if id % 500 == 0 { 6 } else { 5 };
        event(&p, "order.requested", &order(id, cafe, "REQUESTED", 1)).unwrap();
    }
    event(&p, "order.canceled", &order(1000, 6, "CANCELED", 2)).unwrap();
    event(
        &p,
        "order.force-canceled",
        &order(77, 5, "FORCE_CANCELED", 2),
    )
    .unwrap();
    p.take_published();

    let t = Traced::new(&p);
    assert_eq!(
        pages(&t, "/productions?cafeId=6").concat(),
        vec![500, 1000, 1500]
    );
    assert_eq!(t.collections(), vec!["by-cafe-6", "productions"]);
    assert!(t.documents_read() <= 6);

    let t = Traced::new(&p);
    assert_eq!(
        pages(&t, "/productions?status=FORCE_CANCELED").concat(),
        vec![77]
    );
    assert_eq!(
        t.collections(),
        vec!["by-status-FORCE_CANCELED", "productions"]
    );
    assert!(t.documents_read() <= 2);

    let t = Traced::new(&p);
    assert_eq!(
        pages(&t, "/productions?cafeId=6&status=REGISTERED").concat(),
        vec![500, 1500]
    );
    assert_eq!(t.collections(), vec!["by-cafe-6", "productions"]);

    let t = Traced::new(&p);
    assert_eq!(
        pages(&t, "/productions?orderId=1000&cafeId=6").concat(),
        vec![1000]
    );
    assert_eq!(t.reads().len(), 1, "a direct get");

    // unfiltered: pages of at most `limit`, never the whole board at once
    let t = Traced::new(&p);
    let r = api::handle(&t, "GET", "/productions", "limit=10");
    assert!(r.header("link").is_some());
    assert!(t.documents_read() <= 11, "{}", t.documents_read());
}
