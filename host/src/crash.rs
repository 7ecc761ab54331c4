//! Named crash points in the commit and acknowledgement paths, so tests can
//! kill the process exactly where a real crash would hurt most and prove that
//! nothing acknowledged is lost and no effect is applied twice.
//!
//! They exist only in builds with the `crash-points` feature (the test build
//! turns it on; `cargo build --release -p sktarbucks` leaves it off, and then
//! every point compiles to nothing). In such a build, a point is armed by
//! `SKTARBUCKS_CRASH_AT=<point>` (first pass) or `<point>@<n>` (n-th pass):
//! the process logs one line and aborts on the spot, with no unwinding, no
//! flushing and no drain, like a `SIGKILL`.

/// Every crash point, in the order a request or event meets them.
pub const POINTS: &[&str] = &[
    BEFORE_COMMIT,
    AFTER_COMMIT,
    AFTER_HANDLER,
    REDIS_REPLY,
    DEAD_LETTER,
];

/// A request's changes are staged (SQLite: inside the open transaction;
/// Redis: the script is about to be sent) but not committed.
pub const BEFORE_COMMIT: &str = "before-commit";
/// A request's unit of work committed; its response is not yet sent.
pub const AFTER_COMMIT: &str = "after-commit";
/// An event handler returned; its changes and acknowledgement are not yet
/// committed.
pub const AFTER_HANDLER: &str = "after-handler";
/// Redis ran a commit or acknowledgement script; the host has not yet read
/// its reply.
pub const REDIS_REPLY: &str = "redis-reply";
/// An event is being dead-lettered (SQLite: inside the transaction; Redis:
/// before the dead-letter script).
pub const DEAD_LETTER: &str = "dead-letter";

/// Abort here if this point is armed and its pass has come.
#[cfg(feature = "crash-points")]
pub fn point(name: &'static str) {
    armed::hit(name);
}

/// Crash points are compiled out of this build.
#[cfg(not(feature = "crash-points"))]
#[inline(always)]
pub fn point(_name: &'static str) {}

#[cfg(feature = "crash-points")]
mod armed {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// The armed point and the pass it fires on.
    struct Plan {
        name: String,
        fire_on: u64,
        passes: AtomicU64,
    }

    fn plan() -> Option<&'static Plan> {
        static PLAN: OnceLock<Option<Plan>> = OnceLock::new();
        PLAN.get_or_init(|| {
            let spec = std::env::var("SKTARBUCKS_CRASH_AT").ok()?;
            let (name, n) = match spec.split_once('@') {
                Some((name, n)) => (name, n.parse().unwrap_or(1)),
                None => (spec.as_str(), 1),
            };
            if !super::POINTS.contains(&name) {
                eprintln!(
                    "sktarbucks: SKTARBUCKS_CRASH_AT={spec:?} names no crash point (known: {})",
                    super::POINTS.join(", ")
                );
                return None;
            }
            Some(Plan {
                name: name.to_owned(),
                fire_on: n.max(1),
                passes: AtomicU64::new(0),
            })
        })
        .as_ref()
    }

    pub(super) fn hit(name: &'static str) {
        let Some(plan) = plan() else { return };
        if plan.name != name {
            return;
        }
        let pass = plan.passes.fetch_add(1, Ordering::SeqCst) + 1;
        if pass == plan.fire_on {
            eprintln!("sktarbucks: crash point {name} reached (pass {pass}); aborting");
            std::process::abort();
        }
    }
}
