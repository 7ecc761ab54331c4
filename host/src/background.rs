//! A named thread that repeats one step until its handle is dropped: the
//! epoch ticker and the SQLite WAL sync are such threads.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};

/// The running thread; dropping this stops and joins it.
pub struct Background {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Background {
    /// Run `step` on a thread called `name`, after a pause of `first`, then
    /// after each pause `step` returns, until dropped. The drop cuts a pause
    /// short, so stopping never waits one out.
    pub fn start(
        name: &str,
        first: Duration,
        mut step: impl FnMut() -> Duration + Send + 'static,
    ) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let mut pause = first;
                loop {
                    std::thread::park_timeout(pause);
                    if stopped.load(Ordering::Relaxed) {
                        break;
                    }
                    pause = step();
                }
            })
            .with_context(|| format!("failed to start the {name} thread"))?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn it_repeats_its_step_until_dropped_and_the_drop_cuts_a_pause_short() {
        let steps = Arc::new(AtomicU32::new(0));
        let counted = Arc::clone(&steps);
        let thread = Background::start("test-steps", Duration::ZERO, move || {
            // After three quick steps, a pause far longer than the test.
            let n = counted.fetch_add(1, Ordering::Relaxed) + 1;
            if n < 3 {
                Duration::ZERO
            } else {
                Duration::from_secs(3600)
            }
        })
        .expect("start");
        while steps.load(Ordering::Relaxed) < 3 {
            std::thread::yield_now();
        }
        // Joins: a drop that waited out the hour would hang here.
        drop(thread);
        assert_eq!(steps.load(Ordering::Relaxed), 3, "no step after the drop");
    }
}
