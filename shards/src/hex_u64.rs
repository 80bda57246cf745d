//! Serde helpers storing a `u64` hash as 16 hex digits (JSON numbers lose bits above 2^53 in many readers).
//! (A module of its own: the index and the writer both use it.)

use serde::{Deserialize, Deserializer, Serializer};

/// Writes `v` as `"%016x"`.
pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{v:016x}"))
}
/// Reads 16 hex digits.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let s = String::deserialize(d)?;
    u64::from_str_radix(&s, 16).map_err(serde::de::Error::custom)
}
