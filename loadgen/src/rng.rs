//! A small seeded random source (SplitMix64): the same seed gives the same run on every
//! machine and every version, which a load profile needs more than statistical strength.

/// SplitMix64 (Steele, Lea, Flood 2014): one 64-bit state, one multiply-xorshift output.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// An independent stream for `index` (a connection, a participant) of the same seed.
    pub fn split(seed: u64, index: u64) -> Self {
        let mut rng = Self(seed ^ index.wrapping_mul(0xA076_1D64_78BD_642F));
        rng.next_u64();
        rng
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.unit() < p
    }

    /// Exponentially distributed with mean 1 (Poisson inter-arrival gaps).
    pub fn exponential(&mut self) -> f64 {
        -(1.0 - self.unit()).ln()
    }

    /// Standard normal (Box-Muller, one of the pair).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.unit();
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// An index into `weights` drawn in proportion to them (the last index if they sum to
    /// zero).
    pub fn weighted(&mut self, weights: &[f64]) -> usize {
        let total: f64 = weights.iter().sum();
        let mut pick = self.unit() * total;
        for (index, weight) in weights.iter().enumerate() {
            if pick < *weight {
                return index;
            }
            pick -= weight;
        }
        weights.len().saturating_sub(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_split_streams_differ() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        assert!((0..100).all(|_| a.next_u64() == b.next_u64()));
        let (mut c, mut d) = (Rng::split(7, 0), Rng::split(7, 1));
        assert!((0..100).any(|_| c.next_u64() != d.next_u64()));
    }

    #[test]
    fn distributions_have_their_means() {
        let mut rng = Rng::new(42);
        let n = 200_000;
        let unit: f64 = (0..n).map(|_| rng.unit()).sum::<f64>() / n as f64;
        let exp: f64 = (0..n).map(|_| rng.exponential()).sum::<f64>() / n as f64;
        let normal: f64 = (0..n).map(|_| rng.normal()).sum::<f64>() / n as f64;
        assert!((unit - 0.5).abs() < 0.01, "{unit}");
        assert!((exp - 1.0).abs() < 0.02, "{exp}");
        assert!(normal.abs() < 0.02, "{normal}");
        let mut counts = [0u32; 3];
        for _ in 0..n {
            counts[rng.weighted(&[0.2, 0.0, 0.8])] += 1;
        }
        assert_eq!(counts[1], 0);
        assert!((f64::from(counts[0]) / n as f64 - 0.2).abs() < 0.01);
        assert!((0..1000).all(|_| rng.below(3) < 3));
    }
}
