//! The 256-bit backup key and its human form: 64 hex digits and, since
//! version 0.3, a 17th group of 4 check digits (CRC-16/IBM-3740 of the 32
//! key bytes, BACKUP-FORMAT.md §"The key written down"). A CRC-16 catches
//! every error within 16 consecutive bits of the digit string, so every
//! single mistyped digit and every swap of two neighbouring digits is
//! caught before the key is tried; keys written down without the group
//! (64 digits) are still read, without that check.

use rand::{rngs::OsRng, RngCore};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::ClientError;

/// The check digits' CRC (BACKUP-FORMAT.md).
const CHECK: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_IBM_3740);

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

    /// The check group: CRC-16/IBM-3740 of the key bytes, 4 hex digits.
    fn check_digits(&self) -> String {
        format!("{:04x}", CHECK.checksum(&self.0))
    }

    /// 64 lowercase hex digits and 4 check digits in 17 groups of 4, for
    /// writing down.
    pub fn to_display(&self) -> String {
        let h = hex::encode(self.0) + &self.check_digits();
        h.as_bytes()
            .chunks(4)
            .map(|c| std::str::from_utf8(c).unwrap_or_default())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Whether `input` (a key that [`Self::parse`] accepts) carries the
    /// check group, so that a typo in it would have been caught.
    pub fn has_check_digits(input: &str) -> bool {
        input
            .chars()
            .filter(|c| !(c.is_whitespace() || *c == '-'))
            .count()
            == 68
    }

    /// Parses a typed key: spaces, dashes and case are ignored; anything
    /// else is reported with its position. 68 digits are checked against
    /// their last 4; 64 digits (a key written before check digits) are
    /// taken as they are.
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
        if digits.len() != 64 && digits.len() != 68 {
            return Err(ClientError::BadKey(format!(
                "a backup key has 68 hex digits in 17 groups of 4 (64 for keys made before check digits), this has {}; check for a missing or extra group",
                digits.len()
            )));
        }
        let mut k = [0u8; 32];
        hex::decode_to_slice(&digits[..64], &mut k)
            .map_err(|e| ClientError::BadKey(e.to_string()))?;
        let key = Self(k);
        if digits.len() == 68 && digits[64..] != key.check_digits() {
            return Err(ClientError::BadKey(
                "the key's last group (its check digits) does not match the others: a digit is mistyped or two are swapped; compare each group with what you wrote down".into(),
            ));
        }
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_round_trips_with_spaces_and_case() {
        let k = BackupKey::generate();
        let shown = k.to_display();
        assert_eq!(shown.len(), 68 + 16);
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
            .contains("67"));
    }

    /// BACKUP-FORMAT.md's vector.
    #[test]
    fn the_check_digits_of_the_vector() {
        let k = BackupKey::from_bytes(core::array::from_fn(|i| i as u8));
        assert_eq!(
            k.to_display(),
            "0001 0203 0405 0607 0809 0a0b 0c0d 0e0f 1011 1213 1415 1617 1819 1a1b 1c1d 1e1f 23b3"
        );
    }

    #[test]
    fn every_single_typo_and_neighbour_swap_is_caught_and_old_keys_still_read() {
        let k = BackupKey::generate();
        let digits: Vec<char> = k.to_display().replace(' ', "").chars().collect();
        for i in 0..68 {
            for d in "0123456789abcdef".chars().filter(|d| *d != digits[i]) {
                let mut t = digits.clone();
                t[i] = d;
                let typed: String = t.iter().collect();
                assert!(BackupKey::parse(&typed).is_err(), "typo at {i} not caught");
            }
            if i + 1 < 68 && digits[i] != digits[i + 1] {
                let mut t = digits.clone();
                t.swap(i, i + 1);
                let typed: String = t.iter().collect();
                let e = BackupKey::parse(&typed).unwrap_err().to_string();
                assert!(e.contains("check digits"), "swap at {i}: {e}");
            }
        }
        // Written down before check digits: 64 digits read as before.
        let old: String = digits[..64].iter().collect();
        assert_eq!(BackupKey::parse(&old).unwrap(), k);
        assert!(!BackupKey::has_check_digits(&old));
        assert!(BackupKey::has_check_digits(&k.to_display()));
    }
}
