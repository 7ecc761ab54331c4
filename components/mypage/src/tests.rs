//! Native tests of the read model: every delivery order and duplicates give
//! the same row.

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

fn order(id: u64, cust: &str, status: &str, version: u64) -> Value {
    json!({"id":id,"custNm":cust,"cafeId":5,"cafeNm":"Coldbrew","chkDate":"20210713","qty":1,"status":status,"version":version})
}

fn production(id: u64, status: &str, version: u64) -> Value {
    json!({"id":id,"orderId":id,"custNm":"Hwang","cafeId":5,"cafeNm":"Coldbrew","chkDate":"20210713","qty":1,"status":status,"version":version})
}

/// The life of order 7: requested, registered, ordered, canceled.
fn history() -> Vec<(&'static str, Value)> {
    vec![
        ("order.requested", order(7, "Hwang", "REQUESTED", 1)),
        ("production.registered", production(7, "REGISTERED", 1)),
        ("order.ordered", order(7, "Hwang", "ORDERED", 2)),
        ("order.canceled", order(7, "Hwang", "CANCELED", 3)),
        ("production.canceled", production(7, "CANCELED", 2)),
    ]
}

fn permutations(n: usize) -> Vec<Vec<usize>> {
    if n == 0 {
        return vec![vec![]];
    }
    let mut out = Vec::new();
    for p in permutations(n - 1) {
        for i in 0..=p.len() {
            let mut q = p.clone();
            q.insert(i, n - 1);
            out.push(q);
        }
    }
    out
}

#[test]
fn in_order_history_gives_the_final_row() {
    let p = MemPlatform::new();
    for (topic, payload) in history() {
        event(&p, topic, &payload).unwrap();
    }
    let (s, v) = get(&p, "/myPages/7");
    assert_eq!(s, 200);
    assert_eq!(
        v,
        json!({"id":7,"orderId":7,"custNm":"Hwang","cafeId":5,"cafeNm":"Coldbrew","chkDate":"20210713","qty":1,
               "status":"CANCELED","orderVersion":3,"productionStatus":"CANCELED","productionVersion":2})
    );
}

#[test]
fn every_delivery_order_with_duplicates_converges() {
    let reference = MemPlatform::new();
    for (topic, payload) in history() {
        event(&reference, topic, &payload).unwrap();
    }
    let expected = get(&reference, "/myPages/7").1;
    let h = history();
    for perm in permutations(h.len()) {
        let p = MemPlatform::new();
        for &i in perm.iter().chain(perm.iter().rev()) {
            event(&p, h[i].0, &h[i].1).unwrap();
        }
        assert_eq!(get(&p, "/myPages/7").1, expected, "order {perm:?}");
    }
}

#[test]
fn production_first_creates_a_partial_row() {
    let p = MemPlatform::new();
    event(
        &p,
        "production.registered",
        &json!({"orderId":8,"status":"REGISTERED","version":1}),
    )
    .unwrap();
    let (s, v) = get(&p, "/myPages/8");
    assert_eq!(s, 200);
    assert_eq!(v["status"], Value::Null);
    assert_eq!(v["orderVersion"], Value::Null);
    assert_eq!(v["custNm"], Value::Null);
    assert_eq!(v["productionStatus"], "REGISTERED");
    event(&p, "order.requested", &order(8, "Kim", "REQUESTED", 1)).unwrap();
    let v = get(&p, "/myPages/8").1;
    assert_eq!(
        (v["status"].as_str(), v["custNm"].as_str()),
        (Some("REQUESTED"), Some("Kim"))
    );
    assert_eq!(v["productionStatus"], "REGISTERED");
}

#[test]
fn list_filters_by_customer() {
    let p = MemPlatform::new();
    event(&p, "order.requested", &order(10, "Hwang", "REQUESTED", 1)).unwrap();
    event(&p, "order.requested", &order(9, "Kim", "REQUESTED", 1)).unwrap();
    event(&p, "order.requested", &order(2, "Hwang", "REQUESTED", 1)).unwrap();
    let ids = |target: &str| -> Vec<u64> {
        get(&p, target)
            .1
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["orderId"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(ids("/myPages"), vec![2, 9, 10]);
    assert_eq!(ids("/myPages?custNm=Hwang"), vec![2, 10]);
    assert_eq!(ids("/myPages?custNm=Nobody"), Vec::<u64>::new());
}

#[test]
fn errors_are_json() {
    let p = MemPlatform::new();
    assert_eq!(get(&p, "/myPages/1").1["error"], "my_page_not_found");
    assert_eq!(get(&p, "/myPages/abc").0, 400);
    assert_eq!(get(&p, "/myPages/1/2").0, 404);
    let r = api::handle(&p, "POST", "/myPages", "");
    assert_eq!((r.status, r.header("allow")), (405, Some("GET")));
    assert!(matches!(
        event(&p, "order.requested", &json!({"id":1})),
        Err(EventError::Invalid(_))
    ));
    assert_eq!(event(&p, "cafe.deleted", &json!({"cafeId":1})), Ok(()));
    assert_eq!(events::subscriptions().len(), 7);
}
