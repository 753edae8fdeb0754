//! The client profile (SPEC §1.1): what a client must know and pin about a
//! deployment — the gateway's address and TLS trust, the gateway's Noise
//! key (optional: XX without it) and its next key, and the vault fleet's
//! id and public key. Also the fleet's public facts as `vault-backend
//! init-cluster` writes them (`fleet-public.toml`), from which an operator
//! command builds a profile.
//!
//! Owns the format (TOML, unknown keys refused) and the decoding of its
//! keys; must never read or write files (the client and the operator
//! commands do).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// A profile (or a `fleet-public.toml`) does not read.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// Not TOML, an unknown key, or a key of the wrong type.
    #[error("invalid client profile: {0}")]
    Syntax(#[source] toml::de::Error),
    /// A key field is not the hex of a 32-byte key.
    #[error("{field} must be 64 hex digits (a 32-byte key)")]
    BadKey {
        /// The profile key.
        field: &'static str,
    },
    /// The profile cannot be written as TOML.
    #[error("cannot encode the client profile: {0}")]
    Encode(#[source] toml::ser::Error),
}

/// A deployment profile (SPEC §1.1).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClientProfile {
    /// Gateway UDP address.
    pub gateway_addr: SocketAddr,
    /// Further gateways of the same deployment (same TLS name, CA and Noise
    /// key): where the client goes when its gateway says `GOING_AWAY`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub other_gateways: Vec<SocketAddr>,
    /// TLS server name on the gateway certificate.
    pub gateway_server_name: String,
    /// PEM of the CA (or certificate) the gateway's TLS certificate must chain to.
    pub gateway_ca_pem: String,
    /// Gateway static Noise key (hex). With it the client uses IK; without, XX.
    #[serde(default)]
    pub gateway_noise_key: Option<String>,
    /// The gateway's next static Noise key (hex), published ahead of a key
    /// rotation: accepted besides the pinned one when XX reveals it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_noise_next_key: Option<String>,
    /// Vault fleet id.
    pub fleet_id: String,
    /// Vault fleet OPAQUE public key (hex) — the pin.
    pub fleet_public_key: String,
}

/// A fleet's public facts (`fleet-public.toml` of `vault-backend
/// init-cluster`): what clients pin and gateways need.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FleetPublic {
    /// Fleet id (OPAQUE server identity).
    pub fleet_id: String,
    /// Fleet OPAQUE public key, hex.
    pub fleet_public_key: String,
}

impl FleetPublic {
    /// Reads the TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ProfileError> {
        let f: Self = toml::from_str(text).map_err(ProfileError::Syntax)?;
        key32("fleet_public_key", Some(&f.fleet_public_key))?;
        Ok(f)
    }

    /// The TOML text.
    pub fn to_toml(&self) -> Result<String, ProfileError> {
        toml::to_string(self).map_err(ProfileError::Encode)
    }
}

impl ClientProfile {
    /// Reads a profile from its TOML text; every key field must decode.
    pub fn from_toml(text: &str) -> Result<Self, ProfileError> {
        let p: Self = toml::from_str(text).map_err(ProfileError::Syntax)?;
        p.fleet_key()?;
        p.gateway_key()?;
        p.gateway_next_key()?;
        Ok(p)
    }

    /// The profile as TOML text.
    pub fn to_toml(&self) -> Result<String, ProfileError> {
        toml::to_string(self).map_err(ProfileError::Encode)
    }

    /// Decoded fleet key pin.
    pub fn fleet_key(&self) -> Result<[u8; 32], ProfileError> {
        key32("fleet_public_key", Some(&self.fleet_public_key))?.ok_or(ProfileError::BadKey {
            field: "fleet_public_key",
        })
    }

    /// Every gateway, the primary first.
    pub fn gateways(&self) -> Vec<SocketAddr> {
        let mut all = vec![self.gateway_addr];
        all.extend(
            self.other_gateways
                .iter()
                .filter(|a| **a != self.gateway_addr),
        );
        all
    }

    /// Decoded gateway Noise key, if pinned.
    pub fn gateway_key(&self) -> Result<Option<[u8; 32]>, ProfileError> {
        key32("gateway_noise_key", self.gateway_noise_key.as_deref())
    }

    /// Decoded next gateway Noise key, if the profile carries one.
    pub fn gateway_next_key(&self) -> Result<Option<[u8; 32]>, ProfileError> {
        key32(
            "gateway_noise_next_key",
            self.gateway_noise_next_key.as_deref(),
        )
    }
}

fn key32(field: &'static str, hex_key: Option<&str>) -> Result<Option<[u8; 32]>, ProfileError> {
    hex_key
        .map(|h| {
            hex::decode(h.trim())
                .ok()
                .and_then(|v| <[u8; 32]>::try_from(v).ok())
                .ok_or(ProfileError::BadKey { field })
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The example of SPEC §1.1, with its shortened keys made whole.
    fn spec_example() -> String {
        let spec = include_str!("../SPEC.md");
        let at = spec.find("<!-- example:client-profile -->").unwrap();
        let block = &spec[at..];
        let body = &block[block.find("```toml\n").unwrap() + 8..];
        body[..body.find("```").unwrap()]
            .replace("3f1c...a9", &"3f".repeat(32))
            .replace("8e02...51", &"8e".repeat(32))
    }

    #[test]
    fn the_specs_example_profile_reads_and_an_unknown_key_is_refused() {
        let p = ClientProfile::from_toml(&spec_example()).unwrap();
        assert_eq!(p.gateway_addr, "127.0.0.1:7643".parse().unwrap());
        assert_eq!(p.fleet_id, "fleet-1");
        assert!(p.gateway_noise_next_key.is_none());
        // A misspelt pin must not pass as "no pin" (XX, any key).
        let typo = spec_example().replace("gateway_noise_key", "gateway_noise_kye");
        assert!(ClientProfile::from_toml(&typo).is_err());
        // A key that is not 32 bytes of hex is refused when read.
        let short = spec_example().replace(&"3f".repeat(32), "3f3f");
        assert!(matches!(
            ClientProfile::from_toml(&short),
            Err(ProfileError::BadKey {
                field: "gateway_noise_key"
            })
        ));
    }

    #[test]
    fn a_profile_reads_back_the_same() {
        let mut p = ClientProfile::from_toml(&spec_example()).unwrap();
        p.gateway_noise_next_key = Some("ab".repeat(32));
        p.other_gateways = vec!["[::1]:7644".parse().unwrap()];
        assert_eq!(ClientProfile::from_toml(&p.to_toml().unwrap()).unwrap(), p);
        assert_eq!(p.gateway_next_key().unwrap(), Some([0xab; 32]));
        let f = FleetPublic {
            fleet_id: "f".into(),
            fleet_public_key: "8e".repeat(32),
        };
        assert_eq!(FleetPublic::from_toml(&f.to_toml().unwrap()).unwrap(), f);
    }
}
