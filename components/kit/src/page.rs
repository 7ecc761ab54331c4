//! Paged list routes: one convention for every component.
//!
//! - Query: `limit` (1..=[`MAX_LIMIT`], default [`DEFAULT_LIMIT`]) and
//!   `after` (the id the previous page ended at; absent = from the start).
//! - Answer: a plain JSON array (what the seed's clients read), in ascending
//!   id order, and — when more may follow — a `Link: <...>; rel="next"`
//!   header whose URL repeats the query with `after` set.
//! - Keyset paging: `after` is an id, not an offset, so items inserted or
//!   removed meanwhile never make a page skip or repeat an item that was
//!   there all along.
//! - A filtered list scans one index and re-checks the other filters on
//!   each document; one request scans at most [`MAX_SCAN`] index entries, so
//!   a page can come back short (even empty) with a `next` link: follow it
//!   until there is none.

use crate::http::{ApiError, Response, echo_str, path_id, query_param};
use crate::keys;
use crate::platform::{Platform, StoreError};

/// Page size when the client gives none.
pub const DEFAULT_LIMIT: u32 = 100;
/// Largest page a client may ask for.
pub const MAX_LIMIT: u32 = 1000;
/// Most index entries one request examines (bounds the work of a filter
/// that matches little).
pub const MAX_SCAN: u32 = 5000;

/// What the client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    pub limit: u32,
    pub after: Option<u64>,
}

impl PageRequest {
    /// `limit` and `after` from a raw query string, or 400 `invalid_query`.
    pub fn parse(query: &str) -> Result<PageRequest, ApiError> {
        let limit = match query_param(query, "limit").filter(|s| !s.is_empty()) {
            None => DEFAULT_LIMIT,
            Some(raw) => match raw.parse::<u32>() {
                Ok(n)
                    if (1..=MAX_LIMIT).contains(&n) && raw.bytes().all(|b| b.is_ascii_digit()) =>
                {
                    n
                }
                _ => {
                    return Err(ApiError::bad_request(
                        "invalid_query",
                        format!(
                            "limit must be a whole number from 1 to {MAX_LIMIT}, got {}",
                            echo_str(&raw)
                        ),
                    ));
                }
            },
        };
        let after = match query_param(query, "after").filter(|s| !s.is_empty()) {
            None => None,
            Some(raw) => Some(path_id("after", &raw).map_err(|_| {
                ApiError::bad_request(
                    "invalid_query",
                    format!(
                        "after must be the positive integer id the previous page ended at, got {}",
                        echo_str(&raw)
                    ),
                )
            })?),
        };
        Ok(PageRequest { limit, after })
    }
}

/// A filter that must be a positive integer id (`cafeId`, `orderId`):
/// `None` when absent or empty, else the id or 400 `invalid_query` naming
/// the parameter.
pub fn id_param(query: &str, name: &str) -> Result<Option<u64>, ApiError> {
    match query_param(query, name).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(raw) => path_id(name, &raw).map(Some).map_err(|_| {
            ApiError::bad_request(
                "invalid_query",
                format!(
                    "{name} must be a positive integer id, got {}",
                    echo_str(&raw)
                ),
            )
        }),
    }
}

/// A free-text filter (`custNm`), trimmed like the stored value: `None` when
/// absent or blank, 400 `invalid_query` naming the parameter when longer
/// than [`MAX_TEXT`](crate::fields::MAX_TEXT) characters (no stored value
/// can match it).
pub fn text_param(query: &str, name: &str) -> Result<Option<String>, ApiError> {
    let Some(raw) = query_param(query, name) else {
        return Ok(None);
    };
    let text = raw.trim();
    if text.is_empty() {
        return Ok(None);
    }
    if text.chars().count() > crate::fields::MAX_TEXT {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!(
                "{name} must be at most {} characters, got {}",
                crate::fields::MAX_TEXT,
                echo_str(text)
            ),
        ));
    }
    Ok(Some(text.to_owned()))
}

/// A filter with a fixed set of values (`status`): `None` when absent or
/// empty, `parse(raw)` when it knows the value, else 400 `invalid_query`
/// naming the parameter and listing `allowed`.
pub fn enum_param<T>(
    query: &str,
    name: &str,
    allowed: &[&str],
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Option<T>, ApiError> {
    match query_param(query, name).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(raw) => parse(&raw).map(Some).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_query",
                format!(
                    "{name} must be one of {}, got {}",
                    allowed.join(", "),
                    echo_str(&raw)
                ),
            )
        }),
    }
}

/// One page of results and where the next one starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// The `after` of the next page; `None` when this is the last one.
    pub next: Option<u64>,
}

impl<T> Page<T> {
    /// The page holding at most one item found by a direct `get` (a filter
    /// on the key itself): `item` if it is after `req.after`, and no next page.
    pub fn single(req: PageRequest, id: u64, item: Option<T>) -> Page<T> {
        let after_cursor = req.after.is_none_or(|a| id > a);
        Page {
            items: item.filter(|_| after_cursor).into_iter().collect(),
            next: None,
        }
    }
}

/// Walk `collection` (keys made by [`keys::id`]) after `req.after`, keeping
/// what `pick` returns, until `req.limit` items are kept, the collection
/// ends, or [`MAX_SCAN`] entries were examined.
///
/// `pick` gets the id and the stored bytes of each entry (for an index, the
/// entry; it may `get` the document itself) and returns the item or `None`
/// to skip it.
pub fn scan<P, T, F>(
    p: &P,
    collection: &str,
    req: PageRequest,
    mut pick: F,
) -> Result<Page<T>, StoreError>
where
    P: Platform + ?Sized,
    F: FnMut(u64, &[u8]) -> Result<Option<T>, StoreError>,
{
    let mut items = Vec::new();
    let mut cursor = req.after.map(keys::id);
    let mut scanned: u32 = 0;
    loop {
        let want = req.limit - items.len() as u32;
        // One extra entry tells whether anything follows the last kept item.
        let batch = (want + 1).min(MAX_SCAN - scanned).max(1);
        let page = p.range(collection, cursor.as_deref(), batch);
        let mut entries = page.entries.into_iter().peekable();
        while let Some((key, bytes)) = entries.next() {
            let Some(id) = keys::parse_id(&key) else {
                return Err(StoreError {
                    collection: collection.to_owned(),
                    key,
                    reason: "key is not a 20-digit id".to_owned(),
                });
            };
            if items.len() as u32 == req.limit {
                // Full, and `key` exists after the last kept item.
                return Ok(Page {
                    items,
                    next: cursor.as_deref().and_then(keys::parse_id),
                });
            }
            scanned += 1;
            cursor = Some(key);
            if let Some(item) = pick(id, &bytes)? {
                items.push(item);
            }
            if scanned >= MAX_SCAN && (entries.peek().is_some() || page.more) {
                return Ok(Page {
                    items,
                    next: Some(id),
                });
            }
        }
        if !page.more {
            return Ok(Page { items, next: None });
        }
    }
}

/// 200 with `page.items` as a JSON array and, when there is a next page, a
/// `Link` header to it (`path` and the client's `query`, `after` replaced).
pub fn respond<T: serde::Serialize>(path: &str, query: &str, page: &Page<T>) -> Response {
    let mut r = Response::ok(&page.items);
    if let Some(next) = page.next {
        r.headers.push((
            "link".to_owned(),
            format!("<{}>; rel=\"next\"", next_url(path, query, next)),
        ));
    }
    r
}

/// `path?query` with `after=next` (other parameters kept as the client sent them).
fn next_url(path: &str, query: &str, next: u64) -> String {
    let query = query.strip_prefix('?').unwrap_or(query);
    let mut parts: Vec<String> = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .filter(|pair| {
            let name = pair.split_once('=').map_or(*pair, |(k, _)| k);
            name != "after"
        })
        .map(str::to_owned)
        .collect();
    parts.push(format!("after={next}"));
    format!("{path}?{}", parts.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemPlatform;

    fn seed(p: &MemPlatform, ids: impl IntoIterator<Item = u64>) {
        for id in ids {
            p.put("c", &keys::id(id), id.to_string().as_bytes());
        }
        p.finish(true);
    }

    fn all_pages(p: &MemPlatform, limit: u32, keep: impl Fn(u64) -> bool) -> Vec<Vec<u64>> {
        let mut pages = Vec::new();
        let mut after = None;
        loop {
            let page = scan(p, "c", PageRequest { limit, after }, |id, _| {
                Ok(keep(id).then_some(id))
            })
            .unwrap();
            pages.push(page.items);
            match page.next {
                Some(n) => after = Some(n),
                None => return pages,
            }
        }
    }

    #[test]
    fn pages_cover_everything_once_in_order() {
        let p = MemPlatform::new();
        seed(&p, 1..=25);
        let pages = all_pages(&p, 10, |_| true);
        assert_eq!(
            pages.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![10, 10, 5]
        );
        assert_eq!(pages.concat(), (1..=25).collect::<Vec<_>>());
        // an exact multiple ends without an empty trailing page
        let p = MemPlatform::new();
        seed(&p, 1..=20);
        assert_eq!(all_pages(&p, 10, |_| true).len(), 2);
    }

    #[test]
    fn a_small_host_cap_does_not_end_the_page_early() {
        let p = MemPlatform::new();
        seed(&p, 1..=25);
        p.set_range_cap(3);
        assert_eq!(
            all_pages(&p, 10, |_| true).concat(),
            (1..=25).collect::<Vec<_>>()
        );
    }

    #[test]
    fn sparse_filters_stop_after_max_scan_with_a_next_link() {
        let p = MemPlatform::new();
        seed(&p, 1..=(u64::from(MAX_SCAN) * 2 + 7));
        let last = u64::from(MAX_SCAN) * 2 + 7;
        let pages = all_pages(&p, 10, |id| id == 3 || id == last);
        assert_eq!(pages.concat(), vec![3, last]);
        assert_eq!(
            pages.len(),
            3,
            "each request examined at most MAX_SCAN entries"
        );
    }

    #[test]
    fn inserts_between_pages_neither_skip_nor_repeat_existing_items() {
        let p = MemPlatform::new();
        seed(&p, (2..=40).step_by(2));
        let first = scan(
            &p,
            "c",
            PageRequest {
                limit: 5,
                after: None,
            },
            |id, _| Ok(Some(id)),
        )
        .unwrap();
        seed(&p, [1, 3, 41]);
        let second = scan(
            &p,
            "c",
            PageRequest {
                limit: 5,
                after: first.next,
            },
            |id, _| Ok(Some(id)),
        )
        .unwrap();
        assert_eq!(first.items, vec![2, 4, 6, 8, 10]);
        assert_eq!(second.items, vec![12, 14, 16, 18, 20]);
    }

    #[test]
    fn filters_are_validated_naming_the_parameter() {
        assert_eq!(id_param("cafeId=5&x=1", "cafeId").unwrap(), Some(5));
        assert_eq!(id_param("cafeId=", "cafeId").unwrap(), None);
        assert_eq!(id_param("", "cafeId").unwrap(), None);
        for bad in ["cafeId=x", "cafeId=0", "cafeId=-2", "cafeId=1.5"] {
            let e = id_param(bad, "cafeId").unwrap_err();
            assert_eq!((e.status, e.kind.as_str()), (400, "invalid_query"), "{bad}");
            assert!(e.message.starts_with("cafeId must be"), "{}", e.message);
        }
        assert_eq!(
            text_param("custNm=Kim+Lee", "custNm").unwrap(),
            Some("Kim Lee".into())
        );
        assert_eq!(
            text_param("custNm=%20Kim%20", "custNm").unwrap(),
            Some("Kim".into())
        );
        assert_eq!(text_param("custNm=+", "custNm").unwrap(), None);
        let long = format!("custNm={}", "x".repeat(201));
        let e = text_param(&long, "custNm").unwrap_err();
        assert_eq!(e.kind, "invalid_query");
        assert!(
            e.message.starts_with("custNm must be at most 200"),
            "{}",
            e.message
        );
        let parse = |s: &str| (s == "A").then_some(1);
        assert_eq!(
            enum_param("status=A", "status", &["A"], parse).unwrap(),
            Some(1)
        );
        assert_eq!(enum_param("", "status", &["A"], parse).unwrap(), None);
        let e = enum_param("status=B", "status", &["A", "C"], parse).unwrap_err();
        assert_eq!(e.message, "status must be one of A, C, got \"B\"");
    }

    #[test]
    fn a_single_item_page_respects_the_cursor() {
        let req = |after| PageRequest { limit: 10, after };
        assert_eq!(Page::single(req(None), 5, Some("x")).items, vec!["x"]);
        assert_eq!(Page::single(req(Some(4)), 5, Some("x")).items, vec!["x"]);
        assert!(Page::single(req(Some(5)), 5, Some("x")).items.is_empty());
        assert!(Page::<&str>::single(req(None), 5, None).items.is_empty());
        assert_eq!(Page::single(req(None), 5, Some("x")).next, None);
    }

    #[test]
    fn query_is_validated_and_next_url_keeps_filters() {
        assert_eq!(
            PageRequest::parse("").unwrap(),
            PageRequest {
                limit: DEFAULT_LIMIT,
                after: None
            }
        );
        assert_eq!(
            PageRequest::parse("limit=5&after=9").unwrap(),
            PageRequest {
                limit: 5,
                after: Some(9)
            }
        );
        for bad in [
            "limit=0",
            "limit=1001",
            "limit=x",
            "after=0",
            "after=-1",
            "limit=+5",
        ] {
            assert_eq!(
                PageRequest::parse(bad).unwrap_err().kind,
                "invalid_query",
                "{bad}"
            );
        }
        let r = respond(
            "/orders",
            "custNm=Kim&after=3&limit=2",
            &Page {
                items: vec![1],
                next: Some(7),
            },
        );
        assert_eq!(
            r.header("link"),
            Some("</orders?custNm=Kim&limit=2&after=7>; rel=\"next\"")
        );
        let r = respond(
            "/orders",
            "",
            &Page::<u64> {
                items: vec![],
                next: None,
            },
        );
        assert_eq!(r.header("link"), None);
        assert_eq!(r.body, b"[]");
    }
}
