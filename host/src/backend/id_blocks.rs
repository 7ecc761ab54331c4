//! Sequence numbers handed out from blocks reserved ahead, so that
//! `store.next-id` is an in-memory step and not a commit of its own on
//! every order (a round trip through the writer and, with
//! `synchronous = "full"`, an `fsync` before the order could even start).
//!
//! A block is reserved by one committed write that moves the stored
//! sequence past it; ids come from it in order. What a clean stop leaves
//! unused is given back ([`IdBlocks::give_back`]), so only a crash leaves
//! a gap (at most one block per sequence), like a database sequence with a
//! cache.

use std::collections::HashMap;
use std::future::Future;

use anyhow::Result;
use tokio::sync::Mutex;

/// Ids reserved per write. Bounds the gap a crash can leave.
pub(super) const BLOCK: u64 = 32;

/// The ids still unused in the current block of one sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Block {
    /// Next id to hand out.
    pub next: u64,
    /// Last id of the block (what the stored sequence says).
    pub end: u64,
}

/// The current block of every sequence this process has used, by
/// namespace then sequence (so a lookup borrows the names, no allocation).
#[derive(Default)]
pub(super) struct IdBlocks {
    blocks: Mutex<HashMap<String, HashMap<String, Block>>>,
}

impl IdBlocks {
    /// The next id of `sequence` in `ns`. `reserve(n)` must durably move
    /// the stored sequence `n` further and return its new value.
    pub async fn next<F, Fut>(&self, ns: &str, sequence: &str, reserve: F) -> Result<u64>
    where
        F: FnOnce(u64) -> Fut,
        Fut: Future<Output = Result<u64>>,
    {
        // Held across a reservation: callers wait for it (once per block)
        // rather than each reserving a block of their own.
        let mut blocks = self.blocks.lock().await;
        if let Some(block) = current(&mut blocks, ns, sequence).filter(|b| b.next <= b.end) {
            let id = block.next;
            block.next += 1;
            return Ok(id);
        }
        let end = reserve(BLOCK).await?;
        let first = end.saturating_sub(BLOCK - 1).max(1);
        blocks.entry(ns.to_owned()).or_default().insert(
            sequence.to_owned(),
            Block {
                next: first + 1,
                end,
            },
        );
        Ok(first)
    }

    /// Never hand out `value` or less again from memory; then run
    /// `persist` (moving the stored sequence) while no block can be
    /// reserved, so a reservation cannot start from the old value.
    pub async fn advance<F, Fut>(
        &self,
        ns: &str,
        sequence: &str,
        value: u64,
        persist: F,
    ) -> Result<()>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        let mut blocks = self.blocks.lock().await;
        if let Some(block) = current(&mut blocks, ns, sequence) {
            block.next = block.next.max(value.saturating_add(1));
        }
        persist().await
    }

    /// Every sequence's unused rest, emptied: what a clean stop gives back.
    pub async fn take_unused(&self) -> Vec<(String, String, Block)> {
        let mut blocks = self.blocks.lock().await;
        blocks
            .drain()
            .flat_map(|(ns, sequences)| {
                sequences
                    .into_iter()
                    .map(move |(sequence, b)| (ns.clone(), sequence, b))
            })
            .filter(|(_, _, b)| b.next <= b.end)
            .collect()
    }
}

/// The current block of `sequence` in `ns`, if this process has one.
fn current<'a>(
    blocks: &'a mut HashMap<String, HashMap<String, Block>>,
    ns: &str,
    sequence: &str,
) -> Option<&'a mut Block> {
    blocks.get_mut(ns)?.get_mut(sequence)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A stored sequence: what `reserve` moves.
    struct Stored(AtomicU64);

    impl Stored {
        async fn reserve(&self, n: u64) -> Result<u64> {
            Ok(self.0.fetch_add(n, Ordering::SeqCst) + n)
        }
    }

    #[tokio::test]
    async fn ids_come_in_order_with_one_reservation_per_block() {
        let stored = Stored(AtomicU64::new(0));
        let reservations = AtomicU64::new(0);
        let blocks = IdBlocks::default();
        let mut ids = Vec::new();
        for _ in 0..(BLOCK * 2 + 1) {
            ids.push(
                blocks
                    .next("order", "orders", |n| {
                        reservations.fetch_add(1, Ordering::SeqCst);
                        stored.reserve(n)
                    })
                    .await
                    .expect("next id"),
            );
        }
        assert_eq!(ids, (1..=BLOCK * 2 + 1).collect::<Vec<_>>());
        assert_eq!(reservations.load(Ordering::SeqCst), 3);
        assert_eq!(stored.0.load(Ordering::SeqCst), BLOCK * 3);
        let unused = blocks.take_unused().await;
        assert_eq!(
            unused,
            vec![(
                "order".to_owned(),
                "orders".to_owned(),
                Block {
                    next: BLOCK * 2 + 2,
                    end: BLOCK * 3
                }
            )]
        );
    }

    #[tokio::test]
    async fn sequences_are_separate() {
        let (a, b) = (Stored(AtomicU64::new(0)), Stored(AtomicU64::new(100)));
        let blocks = IdBlocks::default();
        assert_eq!(blocks.next("x", "s", |n| a.reserve(n)).await.ok(), Some(1));
        assert_eq!(
            blocks.next("y", "s", |n| b.reserve(n)).await.ok(),
            Some(101)
        );
        assert_eq!(blocks.next("x", "s", |n| a.reserve(n)).await.ok(), Some(2));
    }

    #[tokio::test]
    async fn an_advance_skips_the_ids_it_covers_in_the_current_block() {
        let stored = Stored(AtomicU64::new(0));
        let blocks = IdBlocks::default();
        assert_eq!(
            blocks.next("o", "s", |n| stored.reserve(n)).await.ok(),
            Some(1)
        );
        blocks
            .advance("o", "s", 10, || async { Ok(()) })
            .await
            .expect("advance");
        assert_eq!(
            blocks.next("o", "s", |n| stored.reserve(n)).await.ok(),
            Some(11)
        );
        // Beyond the block: the block is spent, the next comes from storage
        // (which the persist step has moved in the real backend).
        blocks
            .advance("o", "s", BLOCK + 5, || async {
                stored.0.store(BLOCK + 5, Ordering::SeqCst);
                Ok(())
            })
            .await
            .expect("advance");
        assert_eq!(
            blocks.next("o", "s", |n| stored.reserve(n)).await.ok(),
            Some(BLOCK + 6)
        );
    }

    #[tokio::test]
    async fn a_failed_reservation_hands_out_nothing() {
        let blocks = IdBlocks::default();
        let failed = blocks
            .next("o", "s", |_| async { anyhow::bail!("disk full") })
            .await;
        assert!(failed.is_err());
        let stored = Stored(AtomicU64::new(0));
        assert_eq!(
            blocks.next("o", "s", |n| stored.reserve(n)).await.ok(),
            Some(1)
        );
    }
}
