//! Provided buffer rings: a pool of equal-sized receive buffers the kernel picks
//! from for multishot receives (`IORING_REGISTER_PBUF_RING`).
//!
//! A received buffer comes back to the caller as a [`BufRef`]. The bytes stay in
//! that buffer for as long as the `BufRef` lives — the data plane forwards them
//! to another socket straight from it, with no userspace copy — and dropping the
//! last `BufRef` for a buffer hands it back to the kernel. `BufRef` is
//! reference-counted so one received buffer can be split (head part, body part)
//! and the pieces sent at different times. The count of a ring buffer's views
//! lives in the ring's own table (one counter per buffer), so taking,
//! splitting and dropping views allocates nothing.

use std::cell::Cell;
use std::io;
use std::rc::Rc;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;

/// Shared state of one registered buffer ring.
pub(crate) struct Shared {
    /// Start of the ring of `BufRingEntry` descriptors (page aligned).
    entries: *mut BufRingEntry,
    /// Start of the buffer memory: `count * size` bytes.
    base: *mut u8,
    count: u16,
    size: u32,
    bgid: u16,
    /// The [`crate::Ring`] it is registered on (its process-unique id): a
    /// receive on another ring would pick that ring's buffers by this group
    /// id, so `Ring::push` refuses it.
    owner: u64,
    /// Our private copy of the tail we publish to the kernel.
    tail: Cell<u16>,
    /// Buffers currently owned by userspace (handed out and not yet returned).
    out: Cell<usize>,
    /// Live [`BufRef`] views of each buffer (0: the kernel owns it).
    views: Box<[Cell<u32>]>,
}

/// A registered ring of provided buffers. Create with [`crate::Ring::register_buf_ring`].
#[derive(Clone)]
pub struct BufRing {
    pub(crate) shared: Rc<Shared>,
}

impl BufRing {
    /// Allocates the descriptor ring and `count` buffers of `size` bytes, and
    /// publishes every buffer to the (not yet registered) ring.
    pub(crate) fn allocate(bgid: u16, count: u16, size: u32, owner: u64) -> io::Result<BufRing> {
        if !count.is_power_of_two() || count == 0 || size == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "buffer ring: count must be a power of two and size > 0",
            ));
        }
        let ring_bytes = usize::from(count) * std::mem::size_of::<BufRingEntry>();
        let buf_bytes = usize::from(count) * size as usize;
        let entries = map_private(ring_bytes)? as *mut BufRingEntry;
        let base = map_private(buf_bytes)?;
        let shared = Shared {
            entries,
            base,
            count,
            size,
            bgid,
            owner,
            tail: Cell::new(0),
            out: Cell::new(usize::from(count)),
            views: (0..count).map(|_| Cell::new(0)).collect(),
        };
        let ring = BufRing {
            shared: Rc::new(shared),
        };
        for bid in 0..count {
            ring.shared.push(bid);
        }
        Ok(ring)
    }

    /// Address of the descriptor ring, for registration.
    pub(crate) fn ring_addr(&self) -> u64 {
        self.shared.entries as u64
    }

    /// Number of buffers.
    pub fn count(&self) -> u16 {
        self.shared.count
    }

    /// Size of each buffer in bytes.
    pub fn buf_size(&self) -> u32 {
        self.shared.size
    }

    /// Buffer group id used in `RecvMulti`.
    pub fn bgid(&self) -> u16 {
        self.shared.bgid
    }

    /// The id of the ring it is registered on.
    pub(crate) fn owner(&self) -> u64 {
        self.shared.owner
    }

    /// Buffers currently available to the kernel.
    pub fn available(&self) -> usize {
        usize::from(self.shared.count) - self.shared.out.get()
    }

    /// Wraps buffer `bid`, which the kernel just filled with `len` bytes.
    ///
    /// Returns `None` if `bid` or `len` is out of range (a kernel contract
    /// violation; never expected).
    pub(crate) fn take(&self, bid: u16, len: usize) -> Option<BufRef> {
        if bid >= self.shared.count || len > self.shared.size as usize {
            return None;
        }
        self.shared.out.set(self.shared.out.get() + 1);
        self.shared.views[usize::from(bid)].set(1);
        Some(BufRef {
            inner: Backing::Ring {
                ring: Rc::clone(&self.shared),
                bid,
                len,
            },
            start: 0,
            end: len,
        })
    }
}

impl Shared {
    /// Publishes buffer `bid` back to the kernel.
    fn push(&self, bid: u16) {
        let mask = self.count - 1;
        let tail = self.tail.get();
        let idx = usize::from(tail & mask);
        // SAFETY: `idx < count`, so the entry lies inside the descriptor ring
        // allocated in `allocate`; the kernel only reads entries between its head
        // and our published tail, and this slot is past the published tail.
        let entry = unsafe { &mut *self.entries.add(idx) };
        // SAFETY: `bid < count`, so the buffer lies inside the buffer allocation.
        let addr = unsafe { self.base.add(usize::from(bid) * self.size as usize) };
        entry.set_addr(addr as u64);
        entry.set_len(self.size);
        entry.set_bid(bid);
        let new_tail = tail.wrapping_add(1);
        self.tail.set(new_tail);
        // SAFETY: the tail field overlays the `resv` field of entry 0, which is a
        // properly aligned u16 inside the ring allocation; the kernel reads it
        // with acquire semantics, so we publish with release.
        unsafe {
            let tail_ptr = BufRingEntry::tail(self.entries) as *const AtomicU16;
            (*tail_ptr).store(new_tail, Ordering::Release);
        }
        self.out.set(self.out.get().saturating_sub(1));
    }
}

/// Maps `len` bytes of zeroed, page-aligned anonymous memory that a forked
/// child does not inherit (`MADV_DONTFORK`): the buffers are large and
/// touched by the kernel, and copying their page tables on every fork made a
/// child spawn take milliseconds. The mapping is never unmapped: the kernel may
/// use it until the ring is torn down, and rings live as long as their thread.
fn map_private(len: usize) -> io::Result<*mut u8> {
    let len = len.max(1);
    // SAFETY: an anonymous private mapping at an address of the kernel's
    // choosing; no existing memory is affected.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `p..p+len` is the mapping just created.
    if unsafe { libc::madvise(p, len, libc::MADV_DONTFORK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(p as *mut u8)
}

/// What a [`BufRef`] views: a ring buffer lent by the kernel (its views
/// counted in `ring.views[bid]`), or a heap copy.
enum Backing {
    Ring {
        ring: Rc<Shared>,
        bid: u16,
        /// Bytes the kernel put in it.
        len: usize,
    },
    Heap(Rc<[u8]>),
}

/// A view of (part of) one received buffer. Clones share the buffer; the buffer
/// returns to the kernel when the last view is dropped.
pub struct BufRef {
    inner: Backing,
    start: usize,
    end: usize,
}

impl Clone for BufRef {
    fn clone(&self) -> BufRef {
        let inner = match &self.inner {
            Backing::Ring { ring, bid, len } => {
                let v = &ring.views[usize::from(*bid)];
                v.set(v.get() + 1);
                Backing::Ring {
                    ring: Rc::clone(ring),
                    bid: *bid,
                    len: *len,
                }
            }
            Backing::Heap(b) => Backing::Heap(Rc::clone(b)),
        };
        BufRef {
            inner,
            start: self.start,
            end: self.end,
        }
    }
}

impl Drop for BufRef {
    fn drop(&mut self) {
        if let Backing::Ring { ring, bid, .. } = &self.inner {
            let v = &ring.views[usize::from(*bid)];
            let left = v.get().saturating_sub(1);
            v.set(left);
            if left == 0 {
                ring.push(*bid);
            }
        }
    }
}

impl BufRef {
    /// The received bytes in this view.
    pub fn as_slice(&self) -> &[u8] {
        match &self.inner {
            Backing::Heap(b) => &b[self.start..self.end],
            Backing::Ring { ring, bid, len } => {
                debug_assert!(self.end <= *len);
                // SAFETY: the buffer `bid` was filled by the kernel with `len`
                // bytes and is owned by userspace until its last view drops
                // (its count in `views` is non-zero while this one lives, so it
                // is not in the ring and the kernel cannot write to it);
                // `start..end` lies within `0..len`.
                unsafe {
                    let p = ring
                        .base
                        .add(usize::from(*bid) * ring.size as usize + self.start);
                    std::slice::from_raw_parts(p, self.end - self.start)
                }
            }
        }
    }

    /// A heap copy of `data`, usable wherever a received buffer is.
    pub fn copied(data: &[u8]) -> BufRef {
        BufRef {
            inner: Backing::Heap(data.into()),
            start: 0,
            end: data.len(),
        }
    }

    /// Whether this view holds a ring buffer (which the kernel cannot reuse
    /// until the view is dropped).
    pub fn pins_ring(&self) -> bool {
        matches!(&self.inner, Backing::Ring { .. })
    }

    /// Replaces a ring-backed view with a heap copy of its bytes, giving the
    /// ring buffer back (once no other view holds it). For data that will be
    /// held for long: a slow consumer must not starve the ring.
    pub fn detach(&mut self) {
        if self.pins_ring() {
            *self = BufRef::copied(self.as_slice());
        }
    }

    /// Length of this view.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// Whether this view is empty.
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    /// A sub-view `range` (relative to this view), sharing the buffer.
    pub fn slice(&self, from: usize, to: usize) -> BufRef {
        let to = to.min(self.len());
        let from = from.min(to);
        let mut view = self.clone();
        view.start = self.start + from;
        view.end = self.start + to;
        view
    }

    /// Drops the first `n` bytes of this view.
    pub fn advance(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
    }
}

impl std::fmt::Debug for BufRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufRef")
            .field("ring", &self.pins_ring())
            .field("len", &self.len())
            .finish()
    }
}
