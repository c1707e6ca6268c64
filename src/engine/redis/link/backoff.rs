//! How long the link waits before it connects again.

use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

use super::{BACKOFF_CAP, BACKOFF_FIRST};

/// The wait after `failures` failed attempts in a row (see `BACKOFF_FIRST`, `BACKOFF_CAP`).
pub(in crate::engine::redis) fn backoff(failures: u32) -> Duration {
    let full = BACKOFF_FIRST
        .saturating_mul(1 << failures.min(8))
        .min(BACKOFF_CAP);
    let jitter = RandomState::new().hash_one(failures) % 50;
    full - full * jitter as u32 / 100
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_and_jittered() {
        for failures in 0..20 {
            let d = backoff(failures);
            assert!(d <= BACKOFF_CAP && d >= BACKOFF_FIRST / 2, "{d:?}");
        }
    }
}
