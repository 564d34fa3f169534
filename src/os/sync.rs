//! Locking that survives a panic elsewhere.

use std::sync::{Mutex, MutexGuard};

/// A panic on another thread must not wedge the pool, so a poisoned lock is
/// still used: every structure we guard stays consistent between statements.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
