//! The client profile (SPEC §1.1; the type and its format are
//! `protocol_spec::profile`): reading and writing it as a file, for the CLI
//! and tools. An app that ships its profile built in reads it with
//! [`ClientProfile::from_toml`].

use std::path::Path;

pub use protocol_spec::profile::{ClientProfile, FleetPublic, ProfileError};

use crate::ClientError;

impl From<ProfileError> for ClientError {
    fn from(e: ProfileError) -> Self {
        ClientError::Config(e.to_string())
    }
}

/// Reads the profile at `path`.
pub fn load(path: &Path) -> Result<ClientProfile, ClientError> {
    let t = std::fs::read_to_string(path).map_err(|e| {
        ClientError::Config(format!(
            "cannot read the client profile {}: {e}; start the local stack or ask your operator for one",
            path.display()
        ))
    })?;
    ClientProfile::from_toml(&t).map_err(|e| {
        ClientError::Config(format!(
            "{} is not a usable client profile: {e}",
            path.display()
        ))
    })
}

/// Writes `profile` to `path` (replacing it atomically).
pub fn save(profile: &ClientProfile, path: &Path) -> Result<(), ClientError> {
    let t = profile.to_toml()?;
    service_kit::files::write_public(path, t.as_bytes())
        .map_err(|e| ClientError::Config(e.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_saved_profile_file_reads_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let p = ClientProfile {
            gateway_addr: "127.0.0.1:7643".parse().unwrap(),
            other_gateways: vec!["[::1]:7644".parse().unwrap()],
            gateway_server_name: "localhost".into(),
            gateway_ca_pem: "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n".into(),
            gateway_noise_key: Some("3f".repeat(32)),
            gateway_noise_next_key: Some("ab".repeat(32)),
            fleet_id: "fleet-1".into(),
            fleet_public_key: "8e".repeat(32),
        };
        let path = dir.path().join("profile.toml");
        save(&p, &path).unwrap();
        assert_eq!(load(&path).unwrap(), p);
        let e = load(&dir.path().join("missing.toml")).unwrap_err();
        assert!(e.to_string().contains("ask your operator"), "{e}");
    }
}
