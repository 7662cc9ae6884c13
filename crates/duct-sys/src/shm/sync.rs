//! The atomics and cells the shared-memory structures use: std's, or loom's under
//! `--cfg loom` so that the ring and the pool can be model-checked. Under loom the structures
//! live in ordinary (heap) memory; in production they are placed in the shared mapping, which
//! is why every type here has the layout of the plain integer it wraps.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

/// A cell for data handed from one side to the other (a ring's descriptor slot), with loom's
/// access-tracking API (`with`, `with_mut`) in both builds.
#[cfg(loom)]
pub(crate) use loom::cell::UnsafeCell;

/// A cell for data handed from one side to the other (a ring's descriptor slot), with loom's
/// access-tracking API (`with`, `with_mut`) in both builds.
#[cfg(not(loom))]
#[repr(transparent)]
pub(crate) struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    pub(crate) const fn new(value: T) -> Self {
        UnsafeCell(std::cell::UnsafeCell::new(value))
    }

    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

/// Aligns `T` to its own cache line, so that the two sides' hot words never share one.
#[repr(C, align(64))]
pub(crate) struct CachePadded<T>(pub(crate) T);

impl<T> std::ops::Deref for CachePadded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}
