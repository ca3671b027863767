//! Times in checkpoints: microseconds since the epoch as one integer, where chrono's own
//! form is text (30 bytes, and parsing) for every lot of every member.

use std::collections::VecDeque;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Timestamp;

fn from_micros<E: serde::de::Error>(micros: i64) -> Result<Timestamp, E> {
    chrono::DateTime::from_timestamp_micros(micros)
        .ok_or_else(|| E::custom(format!("time {micros} µs is out of range")))
}

pub fn serialize<S: Serializer>(time: &Timestamp, serializer: S) -> Result<S::Ok, S::Error> {
    time.timestamp_micros().serialize(serializer)
}

pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Timestamp, D::Error> {
    from_micros(i64::deserialize(deserializer)?)
}

pub mod option {
    use super::*;

    pub fn serialize<S: Serializer>(
        time: &Option<Timestamp>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        time.map(|t| t.timestamp_micros()).serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Timestamp>, D::Error> {
        Option::<i64>::deserialize(deserializer)?
            .map(from_micros)
            .transpose()
    }
}

/// A member's pending lots: (available at, expires at, lot).
pub mod pending {
    use super::*;

    type Pending = VecDeque<(Timestamp, Option<Timestamp>, u32)>;

    pub fn serialize<S: Serializer>(queue: &Pending, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(queue.iter().map(|(available, expires, lot)| {
            let expires = expires.map(|t| t.timestamp_micros());
            (available.timestamp_micros(), expires, *lot)
        }))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Pending, D::Error> {
        Vec::<(i64, Option<i64>, u32)>::deserialize(deserializer)?
            .into_iter()
            .map(|(available, expires, lot)| {
                let expires = expires.map(from_micros).transpose()?;
                Ok((from_micros(available)?, expires, lot))
            })
            .collect()
    }
}
