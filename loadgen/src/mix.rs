//! The command mix: `purchase=85,return=3,quote=5,hold=3,adjust=1,event=3`.

use std::str::FromStr;

use rand::Rng;

use crate::LoadError;

/// What a simulated terminal (or operator) sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Purchase,
    Return,
    Quote,
    /// A hold of points, or the release of an open one.
    Hold,
    /// An operator's goodwill credit: sent by each merchant's operator, not by terminals.
    Adjust,
    Event,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Purchase,
        Kind::Return,
        Kind::Quote,
        Kind::Hold,
        Kind::Adjust,
        Kind::Event,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Purchase => "purchase",
            Kind::Return => "return",
            Kind::Quote => "quote",
            Kind::Hold => "hold",
            Kind::Adjust => "adjust",
            Kind::Event => "event",
        }
    }
}

/// Relative weights of the kinds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mix {
    weights: [u32; 6],
}

impl Default for Mix {
    fn default() -> Self {
        "purchase=85,return=3,quote=5,hold=3,adjust=1,event=3"
            .parse()
            .expect("the default mix is valid")
    }
}

impl FromStr for Mix {
    type Err = LoadError;

    fn from_str(text: &str) -> Result<Mix, LoadError> {
        let mut weights = [0u32; 6];
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let bad = || LoadError::Config(format!("mix: {part:?} is not KIND=WEIGHT"));
            let (name, weight) = part.split_once('=').ok_or_else(bad)?;
            let index = Kind::ALL
                .iter()
                .position(|k| k.name() == name.trim())
                .ok_or_else(|| {
                    LoadError::Config(format!(
                        "mix: unknown kind {name:?} (purchase, return, quote, hold, adjust, event)"
                    ))
                })?;
            weights[index] = weight.trim().parse().map_err(|_| bad())?;
        }
        let mix = Mix { weights };
        if mix.terminal_total() == 0 {
            return Err(LoadError::Config(
                "mix: terminals need a kind other than adjust with a weight above 0".into(),
            ));
        }
        Ok(mix)
    }
}

impl Mix {
    pub fn weight(&self, kind: Kind) -> u32 {
        self.weights[kind as usize]
    }

    fn terminal_total(&self) -> u32 {
        self.weights.iter().sum::<u32>() - self.weight(Kind::Adjust)
    }

    /// The share of all commands that operators send (the adjustments), in per mille.
    pub fn operator_per_mille(&self) -> u64 {
        let total: u32 = self.weights.iter().sum();
        u64::from(self.weight(Kind::Adjust)) * 1000 / u64::from(total)
    }

    /// A terminal's next kind (never `Adjust`).
    pub fn draw(&self, rng: &mut impl Rng) -> Kind {
        let mut roll = rng.gen_range(0..self.terminal_total());
        for kind in Kind::ALL {
            if kind == Kind::Adjust {
                continue;
            }
            if roll < self.weight(kind) {
                return kind;
            }
            roll -= self.weight(kind);
        }
        unreachable!("the roll is below the total")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn parses_weights_and_refuses_unknown_kinds() {
        let mix: Mix = "purchase=90, return=10".parse().unwrap();
        assert_eq!(mix.weight(Kind::Purchase), 90);
        assert_eq!(mix.weight(Kind::Quote), 0);
        assert!("purchase=1,refund=2".parse::<Mix>().is_err());
        assert!("purchase".parse::<Mix>().is_err());
        assert!("adjust=5".parse::<Mix>().is_err());
    }

    #[test]
    fn draws_follow_the_weights_and_never_adjust() {
        let mix = Mix::default();
        assert_eq!(mix.operator_per_mille(), 10);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let mut purchases = 0;
        for _ in 0..10_000 {
            let kind = mix.draw(&mut rng);
            assert_ne!(kind, Kind::Adjust);
            purchases += u32::from(kind == Kind::Purchase);
        }
        // 85 of 99 terminal weights: about 8,586 of 10,000.
        assert!((8_300..8_900).contains(&purchases), "{purchases}");
    }
}
