//! The timestamp at the head of every log line, as tracing-subscriber's
//! default writes it (`2026-12-07T20:12:39.609094Z`: RFC 3339, UTC,
//! microseconds). The default works out the date for every line and writes
//! each field through `format_args!`: 1.3 % of the host's samples for a
//! `GET /cafes/{id}`, whose one line is all it logs. Here each thread keeps
//! the text of the current second and writes the timestamp in one piece:
//! 0.4 %.

use std::cell::Cell;
use std::fmt::{self, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;

/// The log lines' clock (see the module doc).
#[derive(Debug, Clone, Copy, Default)]
pub struct LogTime;

thread_local! {
    /// The second last formatted on this thread, and its
    /// `YYYY-MM-DDTHH:MM:SS`.
    static SECOND: Cell<(u64, [u8; 19])> = const { Cell::new((u64::MAX, [0; 19])) };
}

impl FormatTime for LogTime {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        write_time(w, SystemTime::now())
    }
}

/// `at` as `YYYY-MM-DDTHH:MM:SS.ffffffZ`, in one write: going through
/// `format_args!` per field cost as much as working out the date.
fn write_time(w: &mut impl fmt::Write, at: SystemTime) -> fmt::Result {
    // Before 1970 (a clock set wrong): as tracing-subscriber, the epoch.
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (cached, mut prefix) = SECOND.get();
    if cached != secs {
        let mut text = String::with_capacity(19);
        write_second(&mut text, secs)?;
        // Years past 9999 do not fit the fixed width; not a clock to log by.
        prefix = text.as_bytes().try_into().map_err(|_| fmt::Error)?;
        SECOND.set((secs, prefix));
    }
    let mut line = [0u8; 27];
    line[..19].copy_from_slice(&prefix);
    line[19] = b'.';
    let mut micros = since.subsec_micros();
    for digit in line[20..26].iter_mut().rev() {
        *digit = b'0' + (micros % 10) as u8;
        micros /= 10;
    }
    line[26] = b'Z';
    w.write_str(std::str::from_utf8(&line).map_err(|_| fmt::Error)?)
}

/// `secs` after the epoch as `YYYY-MM-DDTHH:MM:SS` (UTC).
fn write_second(out: &mut String, secs: u64) -> fmt::Result {
    let t = i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    write!(
        out,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use super::write_time;

    fn at(secs: u64, micros: u32) -> String {
        let mut out = String::new();
        write_time(
            &mut out,
            UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(u64::from(micros)),
        )
        .expect("formats");
        out
    }

    #[test]
    fn it_writes_what_tracing_subscriber_writes() {
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(1_700_000_000, 123_456), "2023-11-14T22:13:20.123456Z");
        // A leap day, and the last microsecond of a year.
        assert_eq!(at(951_825_599, 999_999), "2000-02-29T11:59:59.999999Z");
        assert_eq!(at(1_893_455_999, 999_999), "2029-12-31T23:59:59.999999Z");
        // The cached second is left for the next one.
        assert_eq!(at(1_893_456_000, 1), "2030-01-01T00:00:00.000001Z");
        assert_eq!(at(1_893_455_999, 5), "2029-12-31T23:59:59.000005Z");
        assert_eq!(
            at(1, 0).len(),
            "2026-12-07T20:12:39.609094Z".len(),
            "fixed width"
        );
    }

    #[test]
    fn it_agrees_with_tracing_subscribers_clock_on_the_second() {
        // The default formatter reads the clock itself: compare the part
        // that is the same within one second, retrying across a boundary.
        use tracing_subscriber::fmt::format::Writer;
        use tracing_subscriber::fmt::time::FormatTime;
        for _ in 0..5 {
            let mut theirs = String::new();
            tracing_subscriber::fmt::time::SystemTime
                .format_time(&mut Writer::new(&mut theirs))
                .expect("formats");
            let mut ours = String::new();
            write_time(&mut ours, SystemTime::now()).expect("formats");
            if theirs.get(..19) == ours.get(..19) {
                assert_eq!(theirs.len(), ours.len(), "{theirs} vs {ours}");
                return;
            }
        }
        panic!("five tries never agreed on the second");
    }
}
