//! A worker's free list of byte buffers for the heads it rewrites: a head is
//! written into a buffer taken here, sent, and the buffer comes back when
//! its `writev` completes (`advance_segs_reclaim`), so the steady-state
//! request path allocates none.

/// Capacity of a new buffer: most rewritten heads fit.
const NEW_CAP: usize = 1024;
/// Buffers that grew larger than this are freed rather than kept.
const MAX_CAP: usize = 64 << 10;
/// Most buffers kept (a burst's worth; the rest are freed).
const KEEP: usize = 1024;

/// The free list.
#[derive(Default)]
pub struct ByteBufs {
    free: Vec<Vec<u8>>,
}

impl ByteBufs {
    /// An empty buffer, reused if one is free.
    pub fn take(&mut self) -> Vec<u8> {
        self.free
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(NEW_CAP))
    }

    /// Gives `b` back (kept empty for the next [`ByteBufs::take`] unless it
    /// is tiny, huge, or enough are kept already).
    pub fn put(&mut self, mut b: Vec<u8>) {
        if (NEW_CAP..=MAX_CAP).contains(&b.capacity()) && self.free.len() < KEEP {
            b.clear();
            self.free.push(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_empty_and_odd_ones_are_dropped() {
        let mut f = ByteBufs::default();
        let mut b = f.take();
        b.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let ptr = b.as_ptr();
        f.put(b);
        let again = f.take();
        assert!(again.is_empty());
        assert_eq!(again.as_ptr(), ptr, "the same buffer is reused");
        f.put(Vec::with_capacity(8)); // too small to be worth keeping
        f.put(Vec::with_capacity(MAX_CAP + 1)); // too big to keep
        assert!(f.free.is_empty());
    }
}
