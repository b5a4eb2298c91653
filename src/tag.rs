//! Completion tags: the `user_data` every ring operation of the daemon
//! carries, one encoding for the data plane and the control plane.
//!
//! The top byte is the operation's kind (each ring owner numbers its own
//! kinds); the 56 bits below are its payload: a child id or generation on the
//! control ring, a connection [`slot`](slot_payload) on a worker's ring.

/// Bits of payload under the kind byte.
const PAYLOAD_BITS: u32 = 56;
const PAYLOAD: u64 = (1 << PAYLOAD_BITS) - 1;
/// Bits of a connection slot's generation (its slot index takes 32).
const GEN_BITS: u32 = 24;

/// The tag of an operation of `kind` (< 256) about `payload` (kept to 56 bits).
pub const fn tag(kind: u64, payload: u64) -> u64 {
    (kind << PAYLOAD_BITS) | (payload & PAYLOAD)
}

/// A tag's kind and payload.
pub const fn untag(t: u64) -> (u64, u64) {
    (t >> PAYLOAD_BITS, t & PAYLOAD)
}

/// The payload naming connection slot `slot` of generation `gen`
/// (generations wrap at 2^24, slots at 2^32).
pub const fn slot_payload(slot: usize, gen: u32) -> u64 {
    ((gen as u64 & ((1 << GEN_BITS) - 1)) << 32) | (slot as u64 & 0xffff_ffff)
}

/// The slot and generation in a payload made by [`slot_payload`].
pub const fn payload_slot(p: u64) -> (usize, u32) {
    (
        (p & 0xffff_ffff) as usize,
        ((p >> 32) & ((1 << GEN_BITS) - 1)) as u32,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip() {
        for (kind, payload) in [(0, 0), (1, 42), (12, PAYLOAD), (255, 1 << 40)] {
            assert_eq!(untag(tag(kind, payload)), (kind, payload));
        }
        for (slot, gen) in [(0, 1), (7, 0xff_ffff), (u32::MAX as usize, 3)] {
            let t = tag(9, slot_payload(slot, gen));
            assert_eq!(untag(t).0, 9);
            assert_eq!(payload_slot(untag(t).1), (slot, gen));
        }
    }

    #[test]
    fn the_payload_never_reaches_the_kind() {
        assert_eq!(untag(tag(3, u64::MAX)).0, 3);
        assert_eq!(payload_slot(slot_payload(1, u32::MAX)).1, 0xff_ffff);
    }
}
