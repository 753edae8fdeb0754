//! What a client must know and pin about a deployment: the gateway address
//! and TLS trust, the gateway's Noise key (optional: XX without it), and the
//! vault fleet's id and public key. Written by the local stack on start.

use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::ClientError;

/// A deployment profile (TOML).
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

impl ClientProfile {
    /// Reads a profile.
    pub fn load(path: &Path) -> Result<Self, ClientError> {
        let t = std::fs::read_to_string(path).map_err(|e| {
            ClientError::Config(format!(
                "cannot read the client profile {}: {e}; start the local stack or ask your operator for one",
                path.display()
            ))
        })?;
        toml::from_str(&t).map_err(|e| {
            ClientError::Config(format!("invalid client profile {}: {e}", path.display()))
        })
    }

    /// Reads a profile from its TOML text (SPEC §1.1), as an app ships it.
    pub fn from_toml(text: &str) -> Result<Self, ClientError> {
        toml::from_str(text)
            .map_err(|e| ClientError::Config(format!("invalid client profile: {e}")))
    }

    /// Writes a profile.
    pub fn save(&self, path: &Path) -> Result<(), ClientError> {
        let t = toml::to_string(self).map_err(|e| ClientError::Config(e.to_string()))?;
        service_kit::files::write_public(path, t.as_bytes())
            .map_err(|e| ClientError::Config(e.to_string()))
    }

    /// Decoded fleet key pin.
    pub fn fleet_key(&self) -> Result<Vec<u8>, ClientError> {
        let k = hex::decode(self.fleet_public_key.trim())
            .map_err(|e| ClientError::Config(format!("fleet_public_key is not hex: {e}")))?;
        if k.len() != protocol_spec::opaque_profile::FLEET_PUBLIC_KEY_LEN {
            return Err(ClientError::Config(
                "fleet_public_key must be 32 bytes".into(),
            ));
        }
        Ok(k)
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
    pub fn gateway_key(&self) -> Result<Option<[u8; 32]>, ClientError> {
        key32("gateway_noise_key", self.gateway_noise_key.as_deref())
    }

    /// Decoded next gateway Noise key, if the profile carries one.
    pub fn gateway_next_key(&self) -> Result<Option<[u8; 32]>, ClientError> {
        key32(
            "gateway_noise_next_key",
            self.gateway_noise_next_key.as_deref(),
        )
    }
}

fn key32(field: &str, hex_key: Option<&str>) -> Result<Option<[u8; 32]>, ClientError> {
    hex_key
        .map(|h| {
            let v = hex::decode(h.trim())
                .map_err(|e| ClientError::Config(format!("{field} is not hex: {e}")))?;
            v.try_into().map_err(|_| {
                ClientError::Config(format!("{field} must be 32 bytes (64 hex digits)"))
            })
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The example of SPEC §1.1.
    fn spec_example() -> &'static str {
        let spec = include_str!("../../protocol-spec/SPEC.md");
        let at = spec.find("<!-- example:client-profile -->").unwrap();
        let block = &spec[at..];
        let body = &block[block.find("```toml\n").unwrap() + 8..];
        &body[..body.find("```").unwrap()]
    }

    #[test]
    fn the_specs_example_profile_reads_and_an_unknown_key_is_refused() {
        let p: ClientProfile = toml::from_str(spec_example()).unwrap();
        assert_eq!(p.gateway_addr, "127.0.0.1:7643".parse().unwrap());
        assert_eq!(p.fleet_id, "fleet-1");
        assert!(p.gateway_noise_next_key.is_none());
        // A misspelt pin must not pass as "no pin" (XX, any key).
        let typo = spec_example().replace("gateway_noise_key", "gateway_noise_kye");
        assert!(toml::from_str::<ClientProfile>(&typo).is_err());
    }

    #[test]
    fn a_saved_profile_reads_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let mut p: ClientProfile = toml::from_str(spec_example()).unwrap();
        p.gateway_noise_next_key = Some("ab".repeat(32));
        p.other_gateways = vec!["[::1]:7644".parse().unwrap()];
        let path = dir.path().join("profile.toml");
        p.save(&path).unwrap();
        assert_eq!(ClientProfile::load(&path).unwrap(), p);
        assert_eq!(p.gateway_next_key().unwrap(), Some([0xab; 32]));
    }
}
