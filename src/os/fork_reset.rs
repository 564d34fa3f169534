//! Process-wide mutexes that a child made by `os.fork()` can start afresh.
//!
//! `fork()` copies memory but only the calling thread. A lock that another
//! thread (the supervisor starting a worker, say) held at that moment stays
//! held in the child for ever, so the child's first pool would wait on it for
//! ever. The child therefore swaps in a fresh mutex; the old one, and whatever
//! it guards, is taken over if it can be locked and leaked otherwise (its
//! contents may be half-written).

use crate::os::sync::lock;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Mutex, MutexGuard};

pub struct ForkResetMutex<T: Default> {
    current: AtomicPtr<Mutex<T>>,
}

impl<T: Default> ForkResetMutex<T> {
    pub const fn new() -> Self {
        ForkResetMutex {
            current: AtomicPtr::new(std::ptr::null_mut()),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, T> {
        lock(self.mutex())
    }

    /// The current mutex, made on first use. Mutexes are never freed, so the
    /// reference stays valid whatever a later fork does.
    fn mutex(&self) -> &Mutex<T> {
        let existing = self.current.load(Ordering::Acquire);
        if !existing.is_null() {
            // SAFETY: non-null pointers here come from `Box::into_raw` below
            // and are never freed.
            return unsafe { &*existing };
        }
        let fresh = Box::into_raw(Box::new(Mutex::new(T::default())));
        match self.current.compare_exchange(
            std::ptr::null_mut(),
            fresh,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            // SAFETY: just published; never freed.
            Ok(_) => unsafe { &*fresh },
            Err(winner) => {
                // SAFETY: `fresh` was never shared; `winner` is a published,
                // never-freed mutex.
                unsafe {
                    drop(Box::from_raw(fresh));
                    &*winner
                }
            }
        }
    }

    /// In a child right after `fork()` (one thread): start with a fresh
    /// mutex. Returns the old contents if the old mutex was free; if another
    /// thread held it at fork time, they are leaked with it.
    pub fn reset_after_fork(&self) -> Option<T> {
        let old = self.current.swap(std::ptr::null_mut(), Ordering::AcqRel);
        if old.is_null() {
            return None;
        }
        // SAFETY: a published, never-freed mutex (see `mutex`).
        let old = unsafe { &*old };
        let contents = old
            .try_lock()
            .ok()
            .map(|mut held| std::mem::take(&mut *held));
        contents
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn a_lock_held_elsewhere_does_not_block_after_a_reset() {
        static SHARED: ForkResetMutex<Vec<u32>> = ForkResetMutex::new();
        SHARED.lock().push(1);
        let (held, release) = (mpsc::channel(), mpsc::channel::<()>());
        let holder = std::thread::spawn(move || {
            let _guard = SHARED.lock();
            held.0.send(()).expect("send");
            release.1.recv().expect("recv");
        });
        held.1.recv().expect("the other thread holds the lock");
        // As in a forked child, where the holder will never release it:
        assert_eq!(
            SHARED.reset_after_fork(),
            None,
            "held: its contents are left"
        );
        SHARED.lock().push(2);
        assert_eq!(*SHARED.lock(), vec![2]);
        release.0.send(()).expect("send");
        holder.join().expect("join");
    }

    #[test]
    fn a_free_lock_hands_over_its_contents() {
        static SHARED: ForkResetMutex<Vec<u32>> = ForkResetMutex::new();
        SHARED.lock().push(7);
        assert_eq!(SHARED.reset_after_fork(), Some(vec![7]));
        assert!(SHARED.lock().is_empty());
        assert_eq!(SHARED.reset_after_fork(), Some(vec![]));
    }
}
