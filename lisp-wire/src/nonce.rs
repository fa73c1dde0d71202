//! Nonces for the messages a node starts (Map-Register, Map-Request,
//! Map-Notify). Seeded by the caller, so protocol cores stay deterministic in
//! tests; xorshift64* is cheap and unpredictable enough that a peer which did
//! not see a message cannot guess the nonce of its answer.

/// A nonce generator.
#[derive(Debug, Clone)]
pub struct Nonces(u64);

impl Nonces {
    pub fn new(seed: u64) -> Self {
        // xorshift is stuck at zero: force a set bit.
        Nonces(seed | 1)
    }

    pub fn next_nonce(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}
