//! `XREADGROUP` replies read straight from the RESP value: the field bytes
//! the reply already owns are moved into deliveries, instead of going
//! through redis-rs's `StreamReadReply` (a `HashMap` per entry, and each
//! field copied out of it again).

use anyhow::{Result, bail};
use redis::Value;

/// An entry's fields as (name, value) pairs, in the order Redis keeps them.
pub(super) type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// One entry of a stream read: its id, and its fields in the order Redis
/// keeps them (`None`: the entry was trimmed while it sat in a pending
/// list, which Redis answers with a nil in its place).
#[derive(Debug, PartialEq)]
pub(super) struct Entry {
    pub id: String,
    pub fields: Option<Fields>,
}

impl Entry {
    /// Field `name`'s value, moved out (empty when absent or taken).
    pub(super) fn take(&mut self, name: &str) -> Vec<u8> {
        self.fields
            .iter_mut()
            .flatten()
            .find(|(k, _)| k == name.as_bytes())
            .map(|(_, v)| std::mem::take(v))
            .unwrap_or_default()
    }

    /// Field `name` as text (lossy), moved out; empty when absent.
    pub(super) fn take_text(&mut self, name: &str) -> String {
        text(self.take(name))
    }

    /// Field `name` as text, `None` when missing or empty (entries written
    /// before the field existed).
    pub(super) fn take_optional(&mut self, name: &str) -> Option<String> {
        non_empty(self.take_text(name))
    }
}

/// Bytes as text (lossy), without a copy when they are UTF-8 (they always
/// are when this host wrote them).
pub(super) fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// An optional field's text: an empty one counts as absent.
pub(super) fn non_empty(text: String) -> Option<String> {
    Some(text).filter(|t| !t.is_empty())
}

/// A string-like RESP value's bytes (`None` for any other kind).
pub(super) fn bytes(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        Value::VerbatimString { text, .. } => Some(text.into_bytes()),
        _ => None,
    }
}

/// The streams of a reply with their entries. A nil reply (a blocking read
/// that timed out) has none. RESP2 answers a list of `[stream, entries]`
/// pairs, RESP3 a map.
pub(super) fn parse(reply: Value) -> Result<Vec<(String, Vec<Entry>)>> {
    let pairs: Vec<(Value, Value)> = match reply {
        Value::Nil => return Ok(Vec::new()),
        Value::Map(pairs) => pairs,
        Value::Array(items) => items
            .into_iter()
            .map(|item| match item {
                Value::Array(pair) => two(pair),
                other => bail!("a stream of XREADGROUP's reply is {other:?}, not a pair"),
            })
            .collect::<Result<_>>()?,
        other => bail!("XREADGROUP answered {other:?}"),
    };
    pairs
        .into_iter()
        .map(|(name, entries)| {
            let Some(name) = bytes(name) else {
                bail!("a stream name in XREADGROUP's reply is not a string");
            };
            Ok((text(name), parse_entries(entries)?))
        })
        .collect()
}

fn two(pair: Vec<Value>) -> Result<(Value, Value)> {
    let mut it = pair.into_iter();
    match (it.next(), it.next(), it.next()) {
        (Some(a), Some(b), None) => Ok((a, b)),
        _ => bail!("expected a pair in XREADGROUP's reply"),
    }
}

fn parse_entries(entries: Value) -> Result<Vec<Entry>> {
    let Value::Array(entries) = entries else {
        bail!("the entries of a stream in XREADGROUP's reply are not a list");
    };
    entries
        .into_iter()
        .map(|entry| {
            let Value::Array(entry) = entry else {
                bail!("an entry in XREADGROUP's reply is not a list");
            };
            let (id, fields) = two(entry)?;
            let Some(id) = bytes(id) else {
                bail!("an entry id in XREADGROUP's reply is not a string");
            };
            Ok(Entry {
                id: text(id),
                fields: parse_fields(fields)?,
            })
        })
        .collect()
}

fn parse_fields(fields: Value) -> Result<Option<Fields>> {
    let pairs: Vec<(Value, Value)> = match fields {
        Value::Nil => return Ok(None),
        Value::Map(pairs) => pairs,
        Value::Array(flat) => {
            if flat.len() % 2 != 0 {
                bail!("an entry's fields in XREADGROUP's reply are not name/value pairs");
            }
            let mut it = flat.into_iter();
            let mut pairs = Vec::with_capacity(it.len() / 2);
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                pairs.push((k, v));
            }
            pairs
        }
        other => bail!("an entry's fields in XREADGROUP's reply are {other:?}"),
    };
    pairs
        .into_iter()
        .map(|(k, v)| match (bytes(k), bytes(v)) {
            (Some(k), Some(v)) => Ok((k, v)),
            _ => bail!("a field of an entry in XREADGROUP's reply is not a string"),
        })
        .collect::<Result<_>>()
        .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn entry_value(id: &str, fields: &[(&str, &str)]) -> Value {
        Value::Array(vec![
            bulk(id),
            Value::Array(
                fields
                    .iter()
                    .flat_map(|(k, v)| [bulk(k), bulk(v)])
                    .collect(),
            ),
        ])
    }

    #[test]
    fn resp2_pairs_resp3_map_and_nil_read_alike() {
        let entries = || {
            Value::Array(vec![
                entry_value("1-0", &[("topic", "t"), ("payload", "{}")]),
                Value::Array(vec![bulk("2-0"), Value::Nil]),
            ])
        };
        let resp2 = Value::Array(vec![Value::Array(vec![bulk("s:a"), entries()])]);
        let resp3 = Value::Map(vec![(bulk("s:a"), entries())]);
        let expected = vec![(
            "s:a".to_owned(),
            vec![
                Entry {
                    id: "1-0".into(),
                    fields: Some(vec![
                        (b"topic".to_vec(), b"t".to_vec()),
                        (b"payload".to_vec(), b"{}".to_vec()),
                    ]),
                },
                Entry {
                    id: "2-0".into(),
                    fields: None,
                },
            ],
        )];
        assert_eq!(parse(resp2).expect("resp2"), expected);
        assert_eq!(parse(resp3).expect("resp3"), expected);
        assert!(parse(Value::Nil).expect("nil").is_empty());
    }

    #[test]
    fn fields_are_taken_by_name_and_absent_ones_are_empty() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("s"),
            Value::Array(vec![entry_value(
                "1-0",
                &[("topic", "t"), ("request_id", ""), ("key", "k")],
            )]),
        ])]);
        let mut streams = parse(reply).expect("parse");
        let mut entry = streams.remove(0).1.remove(0);
        assert_eq!(entry.take_text("key"), "k");
        assert_eq!(entry.take_text("topic"), "t");
        assert_eq!(entry.take_optional("request_id"), None);
        assert_eq!(entry.take_optional("traceparent"), None);
        assert_eq!(entry.take("payload"), Vec::<u8>::new());
    }

    #[test]
    fn a_malformed_reply_is_an_error_not_a_panic() {
        for bad in [
            Value::Int(1),
            Value::Array(vec![Value::Int(1)]),
            Value::Array(vec![Value::Array(vec![bulk("s")])]),
            Value::Array(vec![Value::Array(vec![
                bulk("s"),
                Value::Array(vec![Value::Array(vec![
                    bulk("1-0"),
                    Value::Array(vec![bulk("odd")]),
                ])]),
            ])]),
        ] {
            assert!(parse(bad.clone()).is_err(), "{bad:?} parsed");
        }
    }
}
