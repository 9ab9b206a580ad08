//! The encodings the embedded store and queue share: big-endian keys (so that key order is
//! number order), JSON records, and the two ways a sled call fails.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::queue::QueueError;
use super::store::StoreError;

/// The two ways an engine call fails besides its own refusals.
pub trait EngineError {
    fn backend(message: String) -> Self;
    fn unconfirmed(message: String) -> Self;
}

impl EngineError for StoreError {
    fn backend(message: String) -> Self {
        StoreError::Backend(message)
    }
    fn unconfirmed(message: String) -> Self {
        StoreError::Unconfirmed(message)
    }
}

pub fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

pub fn be(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

/// Big-endian of the complement, so that ascending key order is descending `n`.
pub fn rev(n: u64) -> [u8; 8] {
    (u64::MAX - n).to_be_bytes()
}

pub fn read_u64(bytes: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(a)
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records always serialise")
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Backend(format!("corrupt record: {e}")))
}

impl EngineError for QueueError {
    fn backend(message: String) -> Self {
        QueueError::Backend(message)
    }
    fn unconfirmed(message: String) -> Self {
        QueueError::Unconfirmed(message)
    }
}
