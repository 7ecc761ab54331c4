//! Native tests of the read model: every delivery order and duplicates give
//! the same row.

use kit::{EventError, MemPlatform, Traced, keys};
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

/// Every page of `target` (following `Link: rel="next"`): order ids per page.
fn pages(p: &impl kit::Platform, target: &str) -> Vec<Vec<u64>> {
    props::page_ids(target, "orderId", |path, query| {
        api::handle(p, "GET", path, query)
    })
}

#[test]
fn pages_cover_every_row_once_in_order_id_order() {
    let p = MemPlatform::new();
    let mut ids: Vec<u64> = (1..=27).map(|i| (i * 13) % 150 + 1).collect();
    for &id in &ids {
        event(&p, "order.requested", &order(id, "Hwang", "REQUESTED", 1)).unwrap();
    }
    ids.sort_unstable();
    let got = pages(&p, "/myPages?limit=10");
    assert_eq!(
        got.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![10, 10, 7]
    );
    assert_eq!(got.concat(), ids);
    assert_eq!(
        p.keys("views"),
        ids.iter().map(|i| keys::id(*i)).collect::<Vec<_>>()
    );
    for (q, name) in [("limit=x", "limit"), ("after=0", "after")] {
        let (s, v) = get(&p, &format!("/myPages?{q}"));
        assert_eq!((s, v["error"].as_str()), (400, Some("invalid_query")));
        assert!(v["message"].as_str().unwrap().starts_with(name));
    }
    let (s, v) = get(&p, &format!("/myPages?custNm={}", "k".repeat(201)));
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_query")));
}

#[test]
fn the_customer_filter_reads_its_index_which_follows_the_rows_name() {
    let p = MemPlatform::new();
    p.set_range_cap(30);
    for id in 1..=1200u64 {
        let cust = if id % 400 == 0 { "Kim Lee" } else { "Other" };
        event(&p, "order.requested", &order(id, cust, "REQUESTED", 1)).unwrap();
    }
    // a partial row (production first) is indexed under the name it carries
    event(
        &p,
        "production.registered",
        &production(2000, "REGISTERED", 1),
    )
    .unwrap();
    let t = Traced::new(&p);
    assert_eq!(
        pages(&t, "/myPages?custNm=Kim%20Lee").concat(),
        vec![400, 800, 1200]
    );
    assert_eq!(
        t.collections(),
        vec![
            format!("by-cust-{}", keys::text_hash("Kim Lee")),
            "views".into()
        ]
    );
    assert!(t.documents_read() <= 6);
    assert_eq!(pages(&p, "/myPages?custNm=Hwang").concat(), vec![2000]);
    // the order's own event names someone else: the row moves index
    event(&p, "order.requested", &order(2000, "Park", "REQUESTED", 1)).unwrap();
    assert_eq!(
        pages(&p, "/myPages?custNm=Hwang").concat(),
        Vec::<u64>::new()
    );
    assert_eq!(pages(&p, "/myPages?custNm=Park").concat(), vec![2000]);
    assert!(
        p.keys(&format!("by-cust-{}", keys::text_hash("Hwang")))
            .is_empty()
    );
    // an older production event does not move it back
    event(&p, "production.canceled", &production(2000, "CANCELED", 2)).unwrap();
    assert_eq!(pages(&p, "/myPages?custNm=Park").concat(), vec![2000]);
}
