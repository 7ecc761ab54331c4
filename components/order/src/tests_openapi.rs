//! The OpenAPI fragment ([`crate::OPENAPI`], what the `api-description`
//! export returns and the host merges into `GET /openapi.json`): well
//! formed for the host (JSON with `paths`, every path under `/orders`,
//! every `$ref` resolving to its own `components.schemas` or to the host's
//! `#/components/schemas/Error`, names prefixed) and true to the routes:
//! every documented operation is served, any other method on a documented
//! path is a 405 whose `allow` lists exactly the documented ones, the
//! request examples are accepted, and every answer has a declared status
//! and a body valid against the declared schema (also every answer of the
//! property tests in `tests_fuzz.rs`, through [`API`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

use kit::MemPlatform;
use kit::stock::{Reserved, Stock, StockFailure};
use props::openapi::{Fragment, Owner};

/// What order's fragment may name: paths under its route, schemas
/// `Order*`, operation ids `order_*`.
const OWNER: Owner = Owner {
    route: crate::api::PREFIX,
    schemas: "Order",
    operations: "order_",
};

/// The fragment, parsed and checked once (panics listing every problem).
pub(crate) static API: LazyLock<Fragment> = LazyLock::new(|| {
    Fragment::parse(crate::OPENAPI, OWNER).unwrap_or_else(|problems| panic!("{problems:#?}"))
});

#[test]
fn the_fragment_is_well_formed_and_documents_every_route() {
    let api = Fragment::parse(crate::OPENAPI, OWNER).unwrap_or_else(|p| panic!("{p:#?}"));
    let expected: BTreeMap<String, BTreeSet<String>> = [
        ("/orders", &["GET", "POST"][..]),
        ("/orders/{orderId}", &["GET", "PUT"][..]),
        ("/orders/{orderId}/cancel", &["POST"][..]),
    ]
    .into_iter()
    .map(|(path, methods)| {
        let methods = methods.iter().map(|m| (*m).to_owned()).collect();
        (path.to_owned(), methods)
    })
    .collect();
    assert_eq!(api.methods(), expected);
}

/// A stock that has every item: Coldbrew on 20210713, like the examples.
struct EveryItem;

impl Stock for EveryItem {
    fn reserve(&self, order_id: &str, cafe_id: u64, qty: u32) -> Result<Reserved, StockFailure> {
        Ok(Reserved {
            order_id: order_id.to_owned(),
            cafe_id,
            cafe_nm: "Coldbrew".into(),
            chk_date: "20210713".into(),
            qty,
            remaining: 100,
        })
    }
}

/// On an empty platform: the POST examples place orders 1 and 2, then
/// order 1 is read and canceled (the PUT example, then the cancel route).
#[test]
fn every_documented_route_is_served_as_documented() {
    let p = MemPlatform::new();
    props::openapi::check_routes(&API, "1", |method, path, body| {
        let r = crate::http(&p, &EveryItem, method, path, "", body);
        p.finish(r.status < 400);
        r
    })
    .unwrap_or_else(|e| panic!("{e}"));
}
