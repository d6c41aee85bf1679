//! The online-softmax row state of `token.md` §2 and its merge (Milakov & Gimelshein,
//! arXiv 1805.02867): the combine step for vocabulary tiles, threads and shards alike.

/// Sums over the finite entries `J` of a row seen so far, relative to their maximum `m`:
/// `s = Σ exp(z'−m)`, `w = Σ (z'−m) exp(z'−m)`, `q = Σ exp(2(z'−m))`.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct State {
    pub m: f64,
    pub s: f64,
    pub w: f64,
    pub q: f64,
}

impl State {
    /// The identity `(−∞, 0, 0, 0)`: no finite entry yet.
    pub const EMPTY: State = State {
        m: f64::NEG_INFINITY,
        s: 0.0,
        w: 0.0,
        q: 0.0,
    };

    pub fn is_empty(&self) -> bool {
        self.s == 0.0
    }

    /// Combine two disjoint parts of a row. An empty side returns the other side, so
    /// `−∞ − (−∞)` and `0·(−∞)` are never evaluated.
    pub fn merge(self, other: State) -> State {
        if other.is_empty() {
            return self;
        }
        if self.is_empty() {
            return other;
        }
        let m = self.m.max(other.m);
        let (da, db) = (self.m - m, other.m - m);
        let (ea, eb) = (da.exp(), db.exp());
        State {
            m,
            s: ea * self.s + eb * other.s,
            w: ea * (self.w + da * self.s) + eb * (other.w + db * other.s),
            q: ea * ea * self.q + eb * eb * other.q,
        }
    }

    /// `LSE = m + log s`.
    pub fn lse(&self) -> f64 {
        self.m + self.s.ln()
    }

    /// `H = log s − w/s`: two non-negative terms, no cancellation.
    pub fn entropy(&self) -> f64 {
        self.s.ln() - self.w / self.s
    }

    /// `Σ p² = q / s²`.
    pub fn collision(&self) -> f64 {
        self.q / (self.s * self.s)
    }

    /// `ℓ_y = (z'_y − m) − log s` for the scaled label logit `z'_y`.
    pub fn logprob(&self, scaled_label_logit: f64) -> f64 {
        (scaled_label_logit - self.m) - self.s.ln()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn direct(values: &[f64]) -> State {
        let m = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mut st = State {
            m,
            s: 0.0,
            w: 0.0,
            q: 0.0,
        };
        for &z in values {
            let e = (z - m).exp();
            st.s += e;
            st.w += (z - m) * e;
            st.q += e * e;
        }
        st
    }

    #[test]
    fn merge_equals_direct_state() {
        let values = [0.3, -2.0, 5.5, 1.25, -40.0, 3.0, 5.5];
        for split in 0..=values.len() {
            let (a, b) = values.split_at(split);
            let merged = if a.is_empty() {
                State::EMPTY
            } else {
                direct(a)
            }
            .merge(if b.is_empty() {
                State::EMPTY
            } else {
                direct(b)
            });
            let whole = direct(&values);
            assert_eq!(merged.m, whole.m);
            assert!((merged.s - whole.s).abs() < 1e-12);
            assert!((merged.w - whole.w).abs() < 1e-12);
            assert!((merged.q - whole.q).abs() < 1e-12);
        }
    }

    #[test]
    fn empty_is_identity() {
        let a = direct(&[1.0, 2.0]);
        assert_eq!(a.merge(State::EMPTY), a);
        assert_eq!(State::EMPTY.merge(a), a);
        assert!(State::EMPTY.merge(State::EMPTY).is_empty());
    }

    #[test]
    fn uniform_row_has_log_v_entropy() {
        let st = direct(&[2.0; 8]);
        assert!((st.entropy() - 8f64.ln()).abs() < 1e-15);
        assert!((st.collision() - 0.125).abs() < 1e-15);
    }
}
