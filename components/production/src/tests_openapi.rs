//! The OpenAPI fragment ([`crate::OPENAPI`], what the `api-description`
//! export returns and the host merges into `GET /openapi.json`): well
//! formed for the host (JSON with `paths`, every path under `/productions`,
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
use props::openapi::{Fragment, Owner};

/// What production's fragment may name: paths under its route, schemas
/// `Production*`, operation ids `production_*`.
const OWNER: Owner = Owner {
    route: crate::api::PREFIX,
    schemas: "Production",
    operations: "production_",
};

/// The fragment, parsed and checked once (panics listing every problem).
pub(crate) static API: LazyLock<Fragment> = LazyLock::new(|| {
    Fragment::parse(crate::OPENAPI, OWNER).unwrap_or_else(|problems| panic!("{problems:#?}"))
});

#[test]
fn the_fragment_is_well_formed_and_documents_every_route() {
    let api = Fragment::parse(crate::OPENAPI, OWNER).unwrap_or_else(|p| panic!("{p:#?}"));
    let expected: BTreeMap<String, BTreeSet<String>> = [
        ("/productions", &["GET"][..]),
        ("/productions/{orderId}", &["GET"][..]),
    ]
    .into_iter()
    .map(|(path, methods)| {
        let methods = methods.iter().map(|m| (*m).to_owned()).collect();
        (path.to_owned(), methods)
    })
    .collect();
    assert_eq!(api.methods(), expected);
}

/// With the production of order 1 registered.
#[test]
fn every_documented_route_is_served_as_documented() {
    let p = MemPlatform::new();
    let order = serde_json::json!({"id": 1, "custNm": "Hwang", "cafeId": 5, "cafeNm": "Coldbrew",
                                   "chkDate": "20210713", "qty": 1, "status": "REQUESTED", "version": 1});
    crate::event(&p, "order.requested", order.to_string().as_bytes())
        .unwrap_or_else(|e| panic!("{e:?}"));
    p.finish(true);
    props::openapi::check_routes(&API, "1", |method, path, _| {
        let r = crate::http(&p, method, path, "");
        p.finish(r.status < 400);
        r
    })
    .unwrap_or_else(|e| panic!("{e}"));
}
