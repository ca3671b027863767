//! Times in checkpoints: microseconds since the epoch as one integer, where chrono's own
//! form is text (30 bytes, and parsing) for every lot of every member.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Timestamp;

fn time_of(micros: i64) -> Result<Timestamp, String> {
    chrono::DateTime::from_timestamp_micros(micros)
        .ok_or_else(|| format!("time {micros} µs is out of range"))
}

fn from_micros<E: serde::de::Error>(micros: i64) -> Result<Timestamp, E> {
    time_of(micros).map_err(E::custom)
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
    use crate::core::sorted_deque::SortedDeque;

    type Pending = SortedDeque<(Timestamp, Option<Timestamp>, u32)>;

    pub fn serialize<S: Serializer>(queue: &Pending, serializer: S) -> Result<S::Ok, S::Error> {
        queue.serialize_each(serializer, |(available, expires, lot)| {
            let expires = expires.map(|t| t.timestamp_micros());
            (available.timestamp_micros(), expires, *lot)
        })
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Pending, D::Error> {
        Pending::deserialize_each(
            deserializer,
            |(available, expires, lot): (i64, Option<i64>, u32)| {
                let expires = expires.map(time_of).transpose()?;
                Ok((time_of(available)?, expires, lot))
            },
        )
    }
}
