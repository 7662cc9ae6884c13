//! The wakers of pending async calls (`recv_async`, `send_async`, `accept_async`), kept under
//! the same lock as the condition variable that blocking calls wait on, and woken on the same
//! events: whoever changes what a waiter waits for (a message delivered, room in a send queue,
//! a state change, a close, an error) notifies the condition variable and wakes this set.
//!
//! A slab: a pending future owns one slot, keyed by its index, from its first `Pending` until
//! it completes or is dropped (its `Drop` frees the slot). A slot holds the future's latest
//! waker, or none once woken (the future registers again if its next poll is `Pending`
//! too). Freed slots are reused first, so the set never holds more slots than futures that
//! are pending at once, however many are created and dropped; when the last one goes, the
//! set is empty again (and gives its memory back, unless it is a few slots' worth).
//!
//! Waking happens under the owner's lock (as `Condvar::notify_all` does): `Waker::wake` must
//! not poll or drop the future in place, which no executor does (tokio's and
//! `futures::executor`'s schedule the task or unpark a thread). Except on a reactor thread
//! ([`defer_wakes_here`]): there the wakers are kept until the thread has let go of the
//! source it serves ([`wake_deferred`]). A task woken there runs at once on another thread,
//! and its first act is to lock the pipe the reactor still holds (measured with 1,000 pipes
//! received by tokio tasks: the largest share of the receivers' futex calls).
//!
//! An optional deadline per slot is the async calls' timeout: the owner asks its reactor for a
//! timer at [`WakerSet::next_deadline`] and calls [`WakerSet::wake_expired`] when it fires;
//! the woken future sees the deadline passed and fails with `TimedOut`.

use std::cell::RefCell;
use std::task::Waker;
use std::time::Instant;

thread_local! {
    /// On a thread that defers its wakes ([`defer_wakes_here`]): the wakers woken since its
    /// last [`wake_deferred`] (at most those of the futures pending on the one source it
    /// served meanwhile).
    static DEFERRED: RefCell<Option<Vec<Waker>>> = const { RefCell::new(None) };
}

/// Makes this thread (a reactor's) keep the wakers a [`WakerSet`] wakes until it calls
/// [`wake_deferred`], which it does each time it has let go of a source's lock, and before
/// it waits for events.
pub(crate) fn defer_wakes_here() {
    DEFERRED.with(|d| *d.borrow_mut() = Some(Vec::new()));
}

/// Wakes the wakers this thread kept (see [`defer_wakes_here`]).
#[inline]
pub(crate) fn wake_deferred() {
    DEFERRED.with(|d| {
        // (Taken out first: a waker's `wake` may itself wake, and drop, other wakers.)
        let Ok(mut kept) = d.try_borrow_mut() else {
            return;
        };
        let Some(list) = kept.as_mut().filter(|l| !l.is_empty()) else {
            return;
        };
        let mut list = std::mem::take(list);
        drop(kept);
        for w in list.drain(..) {
            w.wake();
        }
        if let Ok(mut kept) = d.try_borrow_mut() {
            if let Some(kept) = kept.as_mut().filter(|l| l.capacity() == 0) {
                // (The allocation is reused.)
                *kept = list;
            }
        }
    });
}

/// Wakes `w`, or keeps it for [`wake_deferred`] on a thread that defers.
#[inline]
fn wake(w: Waker) {
    DEFERRED.with(|d| match d.try_borrow_mut() {
        Ok(mut kept) => match kept.as_mut() {
            Some(list) => list.push(w),
            None => w.wake(),
        },
        Err(_) => w.wake(),
    });
}

/// End of the free list.
const NONE: usize = usize::MAX;

/// Slots whose memory is kept when the set empties.
const KEEP_SLOTS: usize = 16;

/// What a pending future waits for; the owner treats receivers specially (a pipe's reactor
/// reads ahead for them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WaitFor {
    /// A message (`recv_async`).
    Message,
    /// Anything else: room in a send queue, a pipe to accept.
    Other,
}

enum Slot {
    /// Unused; the next free slot (or [`NONE`]).
    Free(usize),
    Used(Entry),
}

struct Entry {
    /// `None` once woken (or not yet registered again).
    waker: Option<Waker>,
    what: WaitFor,
    deadline: Option<Instant>,
}

/// See the module documentation.
pub(crate) struct WakerSet {
    slots: Vec<Slot>,
    free: usize,
    /// Slots in use (futures that were pending and are not yet dropped or complete).
    used: usize,
    /// Slots holding a waker.
    armed: usize,
    /// Slots holding a waker of a [`WaitFor::Message`] future.
    armed_messages: usize,
    /// No armed slot has a deadline before this one (it may be earlier than any: a spurious
    /// timer is harmless).
    next_deadline: Option<Instant>,
}

impl Default for WakerSet {
    fn default() -> WakerSet {
        WakerSet {
            slots: Vec::new(),
            free: NONE,
            used: 0,
            armed: 0,
            armed_messages: 0,
            next_deadline: None,
        }
    }
}

impl WakerSet {
    /// Registers `waker` for the future whose slot is `key` (allocating one on its first
    /// `Pending`), to be woken by the next [`WakerSet::wake_all`] or at `deadline`.
    pub(crate) fn register(
        &mut self,
        key: &mut Option<usize>,
        waker: &Waker,
        what: WaitFor,
        deadline: Option<Instant>,
    ) {
        let index = match *key {
            Some(i) => i,
            None => {
                let i = self.allocate(what);
                *key = Some(i);
                i
            }
        };
        let Some(Slot::Used(e)) = self.slots.get_mut(index) else {
            debug_assert!(false, "waker slot {index} is not in use");
            return;
        };
        match &mut e.waker {
            Some(w) if w.will_wake(waker) => {}
            Some(w) => w.clone_from(waker),
            none => {
                *none = Some(waker.clone());
                self.armed += 1;
                if what == WaitFor::Message {
                    self.armed_messages += 1;
                }
            }
        }
        e.what = what;
        e.deadline = deadline;
        if let Some(d) = deadline {
            self.next_deadline = Some(self.next_deadline.map_or(d, |n| n.min(d)));
        }
    }

    fn allocate(&mut self, what: WaitFor) -> usize {
        self.used += 1;
        let entry = Entry {
            waker: None,
            what,
            deadline: None,
        };
        if self.free == NONE {
            self.slots.push(Slot::Used(entry));
            return self.slots.len() - 1;
        }
        let i = self.free;
        let Slot::Free(next) = self.slots[i] else {
            unreachable!("the free list holds only free slots")
        };
        self.free = next;
        self.slots[i] = Slot::Used(entry);
        i
    }

    /// Frees the slot `key` (its future completed or was dropped).
    pub(crate) fn remove(&mut self, key: usize) {
        let Some(slot @ Slot::Used(_)) = self.slots.get_mut(key) else {
            debug_assert!(false, "waker slot {key} is not in use");
            return;
        };
        let Slot::Used(e) = std::mem::replace(slot, Slot::Free(self.free)) else {
            unreachable!("matched above")
        };
        self.free = key;
        self.used -= 1;
        if e.waker.is_some() {
            self.disarmed(e.what);
        }
        if self.used == 0 {
            // The last pending future went: start afresh, and give back the memory of a
            // crowd (a few slots are kept, so that a receive loop that waits once per
            // message does not allocate once per message).
            if self.slots.capacity() > KEEP_SLOTS {
                self.slots = Vec::new();
            } else {
                self.slots.clear();
            }
            self.free = NONE;
            self.next_deadline = None;
        }
    }

    fn disarmed(&mut self, what: WaitFor) {
        self.armed -= 1;
        if what == WaitFor::Message {
            self.armed_messages -= 1;
        }
    }

    /// Whether some future waits for a wake-up.
    #[cfg(test)]
    pub(crate) fn is_armed(&self) -> bool {
        self.armed > 0
    }

    /// Whether some future waits for a message.
    #[inline]
    pub(crate) fn wants_messages(&self) -> bool {
        self.armed_messages > 0
    }

    /// Wakes every registered future (each polls again and registers again if it must still
    /// wait). Costs one branch when none is registered.
    #[inline]
    pub(crate) fn wake_all(&mut self) {
        if self.armed > 0 {
            self.wake_where(|_| true);
            self.next_deadline = None;
        }
    }

    /// Wakes the futures whose deadline is at or before `now`.
    pub(crate) fn wake_expired(&mut self, now: Instant) {
        if self.next_deadline.is_none_or(|d| d > now) {
            return;
        }
        self.wake_where(|e| e.deadline.is_some_and(|d| d <= now));
        self.next_deadline = self
            .slots
            .iter()
            .filter_map(|s| match s {
                Slot::Used(e) if e.waker.is_some() => e.deadline,
                _ => None,
            })
            .min();
    }

    fn wake_where(&mut self, due: impl Fn(&Entry) -> bool) {
        let mut woken = [0usize; 2];
        for slot in &mut self.slots {
            if let Slot::Used(e) = slot {
                if e.waker.is_some() && due(e) {
                    woken[usize::from(e.what == WaitFor::Message)] += 1;
                    if let Some(w) = e.waker.take() {
                        wake(w);
                    }
                }
            }
        }
        self.armed -= woken[0] + woken[1];
        self.armed_messages -= woken[1];
    }

    /// The earliest deadline of a registered future (or earlier: see the field).
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.next_deadline
    }

    /// Slots held (in use or free for reuse): bounded by the futures pending at once.
    pub(crate) fn slots(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;
    use std::time::Duration;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counter() -> (Arc<Count>, Waker) {
        let c = Arc::new(Count(AtomicUsize::new(0)));
        (Arc::clone(&c), Waker::from(c))
    }

    #[test]
    fn slots_are_reused_and_released() {
        let mut set = WakerSet::default();
        let (_, w) = counter();
        for _ in 0..100_000 {
            let mut key = None;
            set.register(&mut key, &w, WaitFor::Message, None);
            set.remove(key.unwrap());
        }
        assert_eq!(set.slots(), 0);
        let mut keys: Vec<Option<usize>> = vec![None; 10];
        for k in &mut keys {
            set.register(k, &w, WaitFor::Other, None);
        }
        set.remove(keys[3].unwrap());
        set.remove(keys[7].unwrap());
        let mut a = None;
        let mut b = None;
        set.register(&mut a, &w, WaitFor::Other, None);
        set.register(&mut b, &w, WaitFor::Other, None);
        assert_eq!(set.slots(), 10, "freed slots are reused");
        assert!(matches!((a, b), (Some(7), Some(3)) | (Some(3), Some(7))));
    }

    #[test]
    fn a_thread_that_defers_wakes_at_wake_deferred_and_not_before() {
        let (c, w) = counter();
        let c2 = Arc::clone(&c);
        let wake_and_count = move || {
            let mut set = WakerSet::default();
            let mut keys = [None, None];
            for k in &mut keys {
                set.register(k, &w, WaitFor::Message, None);
            }
            set.wake_all();
            assert!(!set.is_armed() && !set.wants_messages());
            c.0.load(Ordering::SeqCst)
        };
        // (A thread of its own: the setting is the thread's.)
        std::thread::spawn(move || {
            defer_wakes_here();
            assert_eq!(wake_and_count(), 0, "woken before wake_deferred");
            wake_deferred();
            assert_eq!(c2.0.load(Ordering::SeqCst), 2);
            wake_deferred();
            assert_eq!(c2.0.load(Ordering::SeqCst), 2, "woken twice");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_thread_that_does_not_defer_wakes_at_once() {
        let (c, w) = counter();
        let mut set = WakerSet::default();
        let mut key = None;
        set.register(&mut key, &w, WaitFor::Message, None);
        set.wake_all();
        assert_eq!(c.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn wake_all_wakes_each_once_and_counts() {
        let mut set = WakerSet::default();
        let (c, w) = counter();
        let mut k1 = None;
        let mut k2 = None;
        set.register(&mut k1, &w, WaitFor::Message, None);
        set.register(&mut k1, &w, WaitFor::Message, None); // same waker again: no double count
        set.register(&mut k2, &w, WaitFor::Other, None);
        assert!(set.wants_messages() && set.is_armed());
        set.wake_all();
        assert_eq!(c.0.load(Ordering::SeqCst), 2);
        assert!(!set.is_armed() && !set.wants_messages());
        set.wake_all();
        assert_eq!(
            c.0.load(Ordering::SeqCst),
            2,
            "woken slots are not woken again"
        );
        set.register(&mut k1, &w, WaitFor::Message, None);
        set.remove(k1.unwrap());
        assert!(!set.is_armed());
        set.remove(k2.unwrap());
        assert_eq!(set.slots(), 0);
    }

    #[test]
    fn deadlines_wake_only_the_expired() {
        let mut set = WakerSet::default();
        let (c, w) = counter();
        let now = Instant::now();
        let mut early = None;
        let mut late = None;
        let mut never = None;
        set.register(&mut early, &w, WaitFor::Message, Some(now));
        set.register(
            &mut late,
            &w,
            WaitFor::Other,
            Some(now + Duration::from_secs(60)),
        );
        set.register(&mut never, &w, WaitFor::Message, None);
        assert_eq!(set.next_deadline(), Some(now));
        set.wake_expired(now);
        assert_eq!(c.0.load(Ordering::SeqCst), 1);
        assert_eq!(set.next_deadline(), Some(now + Duration::from_secs(60)));
        assert!(
            set.wants_messages(),
            "the one without a deadline still waits"
        );
    }
}
