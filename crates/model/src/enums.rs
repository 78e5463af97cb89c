//! Algorithm and protocol enumerations, with the exact names of the API contract. Serde
//! rejects any other value with the list of allowed ones.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum IkeVersion {
    Ikev1,
    #[default]
    Ikev2,
}

/// IKEv1 phase 1 exchange mode (RFC 2409 §5); meaningless for IKEv2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum IkeMode {
    #[default]
    Main,
    Aggressive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, ToSchema)]
pub enum Encryption {
    /// AES-128-CBC.
    #[default]
    #[serde(rename = "aes")]
    Aes,
    #[serde(rename = "aes192")]
    Aes192,
    #[serde(rename = "aes256")]
    Aes256,
    #[serde(rename = "des")]
    Des,
    #[serde(rename = "3des")]
    TripleDes,
    /// AES-GCM with a 16-octet ICV (RFC 4106); integrity is then implied.
    #[serde(rename = "aes-gcm-128")]
    AesGcm128,
    #[serde(rename = "aes-gcm-256")]
    AesGcm256,
}

impl Encryption {
    pub fn is_aead(self) -> bool {
        matches!(self, Encryption::AesGcm128 | Encryption::AesGcm256)
    }

    /// The API name (`aes`, `3des`, `aes-gcm-128`, …), as serialized.
    pub fn name(self) -> &'static str {
        match self {
            Encryption::Aes => "aes",
            Encryption::Aes192 => "aes192",
            Encryption::Aes256 => "aes256",
            Encryption::Des => "des",
            Encryption::TripleDes => "3des",
            Encryption::AesGcm128 => "aes-gcm-128",
            Encryption::AesGcm256 => "aes-gcm-256",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Integrity {
    #[default]
    Sha1,
    Md5,
    Sha256,
    Sha384,
    Sha512,
}

/// Diffie-Hellman groups by their IKE transform number (RFC 7296 §3.3.2, RFC 5114,
/// RFC 5903, RFC 8031).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DhGroup {
    Group1,
    #[default]
    Group2,
    Group5,
    Group14,
    Group24,
    Group19,
    Group20,
    Group31,
}

impl DhGroup {
    /// The IANA transform ID.
    pub fn number(self) -> u16 {
        match self {
            DhGroup::Group1 => 1,
            DhGroup::Group2 => 2,
            DhGroup::Group5 => 5,
            DhGroup::Group14 => 14,
            DhGroup::Group24 => 24,
            DhGroup::Group19 => 19,
            DhGroup::Group20 => 20,
            DhGroup::Group31 => 31,
        }
    }
}

/// Perfect forward secrecy for Child SAs: a DH group, or `disabled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Pfs {
    Disabled,
    Group1,
    #[default]
    Group2,
    Group5,
    Group14,
    Group24,
    Group19,
    Group20,
    Group31,
}

impl Pfs {
    pub fn dh_group(self) -> Option<DhGroup> {
        Some(match self {
            Pfs::Disabled => return None,
            Pfs::Group1 => DhGroup::Group1,
            Pfs::Group2 => DhGroup::Group2,
            Pfs::Group5 => DhGroup::Group5,
            Pfs::Group14 => DhGroup::Group14,
            Pfs::Group24 => DhGroup::Group24,
            Pfs::Group19 => DhGroup::Group19,
            Pfs::Group20 => DhGroup::Group20,
            Pfs::Group31 => DhGroup::Group31,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum IpsecProtocol {
    #[default]
    Esp,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name<T: Serialize>(v: T) -> String {
        serde_json::to_value(v)
            .unwrap()
            .as_str()
            .unwrap()
            .to_string()
    }

    #[test]
    fn names_match_the_contract() {
        assert_eq!(name(Encryption::Aes), "aes");
        assert_eq!(name(Encryption::TripleDes), "3des");
        assert_eq!(name(Encryption::AesGcm256), "aes-gcm-256");
        assert_eq!(name(Integrity::Sha384), "sha384");
        assert_eq!(name(DhGroup::Group31), "group31");
        assert_eq!(name(Pfs::Disabled), "disabled");
        assert_eq!(name(IkeVersion::Ikev1), "ikev1");
        assert_eq!(name(IkeMode::Aggressive), "aggressive");
        assert_eq!(name(IpsecProtocol::Esp), "esp");
    }

    #[test]
    fn encryption_name_is_the_serialized_name() {
        for e in [
            Encryption::Aes,
            Encryption::Aes192,
            Encryption::Aes256,
            Encryption::Des,
            Encryption::TripleDes,
            Encryption::AesGcm128,
            Encryption::AesGcm256,
        ] {
            assert_eq!(e.name(), name(e));
        }
    }

    #[test]
    fn unknown_values_are_rejected_with_the_allowed_list() {
        let e = serde_json::from_str::<Encryption>("\"aes512\"")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("aes512") && e.contains("aes-gcm-128") && e.contains("3des"),
            "{e}"
        );
        let e = serde_json::from_str::<Pfs>("\"group3\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("disabled") && e.contains("group14"), "{e}");
        let e = serde_json::from_str::<DhGroup>("\"modp1024\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("group2"), "{e}");
    }

    #[test]
    fn defaults_match_the_contract() {
        assert_eq!(IkeVersion::default(), IkeVersion::Ikev2);
        assert_eq!(IkeMode::default(), IkeMode::Main);
        assert_eq!(Encryption::default(), Encryption::Aes);
        assert_eq!(Integrity::default(), Integrity::Sha1);
        assert_eq!(DhGroup::default(), DhGroup::Group2);
        assert_eq!(Pfs::default(), Pfs::Group2);
        assert_eq!(Pfs::Group14.dh_group(), Some(DhGroup::Group14));
        assert_eq!(Pfs::Disabled.dh_group(), None);
    }
}
