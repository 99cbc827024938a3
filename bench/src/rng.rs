//! A tiny non-cryptographic PRNG (xorshift64*) seeded from the kernel. Used for WebSocket keys, frame masks and
//! churn victim selection, where speed matters and unpredictability against an attacker does not.

pub struct Rng(u64);

impl Rng {
    /// Seeds from getrandom(2); falls back to the clock if the syscall fails.
    pub fn from_os() -> Rng {
        let mut seed = [0u8; 8];
        // SAFETY: the pointer and length describe `seed`, a live stack buffer.
        let n = unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
        let mut s = u64::from_le_bytes(seed);
        if n != 8 {
            s = crate::sys::mono_ns() ^ (std::process::id() as u64).rotate_left(32);
        }
        Rng::new(s)
    }

    pub fn new(seed: u64) -> Rng {
        // splitmix64 step so that small or similar seeds still give well-mixed states; the state must not be 0.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Rng(if z == 0 { 1 } else { z })
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn mask(&mut self) -> [u8; 4] {
        (self.next_u64() as u32).to_le_bytes()
    }

    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    pub fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn different_seeds_give_different_streams() {
        let mut a = Rng::new(1);
        let mut b = Rng::new(2);
        assert_ne!(a.next_u64(), b.next_u64());
        let mut k1 = [0u8; 16];
        let mut k2 = [0u8; 16];
        Rng::from_os().fill(&mut k1);
        Rng::from_os().fill(&mut k2);
        assert_ne!(k1, k2);
    }

    #[test]
    fn below_stays_in_range() {
        let mut r = Rng::new(7);
        for _ in 0..1000 {
            assert!(r.below(10) < 10);
        }
        assert_eq!(r.below(0), 0);
    }
}
