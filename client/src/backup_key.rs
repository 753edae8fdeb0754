//! The 256-bit backup key and its 64-hex-digit human form.

use rand::{rngs::OsRng, RngCore};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::ClientError;

/// A backup encryption key. Zeroized on drop; `Debug` never prints it.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct BackupKey([u8; 32]);

impl std::fmt::Debug for BackupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BackupKey(..)")
    }
}

impl BackupKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        let mut k = [0u8; 32];
        OsRng.fill_bytes(&mut k);
        Self(k)
    }

    /// From raw bytes.
    pub fn from_bytes(b: [u8; 32]) -> Self {
        Self(b)
    }

    /// Raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// 64 lowercase hex digits in 16 groups of 4, for writing down.
    pub fn to_display(&self) -> String {
        let h = hex::encode(self.0);
        h.as_bytes()
            .chunks(4)
            .map(|c| std::str::from_utf8(c).unwrap_or_default())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Parses a typed key: spaces, dashes and case are ignored; anything
    /// else is reported with its position.
    pub fn parse(input: &str) -> Result<Self, ClientError> {
        let mut digits = String::with_capacity(64);
        for (i, c) in input.chars().enumerate() {
            if c.is_whitespace() || c == '-' {
                continue;
            }
            if !c.is_ascii_hexdigit() {
                return Err(ClientError::BadKey(format!(
                    "character {:?} at position {} is not a hex digit (0-9, a-f); check for typos such as O instead of 0",
                    c,
                    i + 1
                )));
            }
            digits.push(c.to_ascii_lowercase());
        }
        if digits.len() != 64 {
            return Err(ClientError::BadKey(format!(
                "a backup key has 64 hex digits, this has {}; check for a missing or extra group",
                digits.len()
            )));
        }
        let mut k = [0u8; 32];
        hex::decode_to_slice(&digits, &mut k).map_err(|e| ClientError::BadKey(e.to_string()))?;
        Ok(Self(k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_round_trips_with_spaces_and_case() {
        let k = BackupKey::generate();
        let shown = k.to_display();
        assert_eq!(shown.len(), 64 + 15);
        assert_eq!(BackupKey::parse(&shown.to_uppercase()).unwrap(), k);
        assert_eq!(BackupKey::parse(&shown.replace(' ', "")).unwrap(), k);
    }

    #[test]
    fn typos_are_reported() {
        let k = BackupKey::generate().to_display();
        let typo = k.replacen(|c: char| c.is_ascii_digit(), "O", 1);
        let e = BackupKey::parse(&typo).unwrap_err().to_string();
        assert!(e.contains("not a hex digit"), "{e}");
        let short = &k[..k.len() - 1];
        assert!(BackupKey::parse(short)
            .unwrap_err()
            .to_string()
            .contains("63"));
    }
}
