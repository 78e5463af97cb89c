//! What a tunnel is configured with: peers, identities, proposals, lifetimes, selectors.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use crypto::{DhGroup, Encr, Integ, Prf};
use zeroize::Zeroizing;

use crate::wire::Identification;
use crate::wire::registry::IdType;

/// The node's handle for one configured peer (one tunnel).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u64);

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "peer{}", self.0)
    }
}

/// An IKE identity (RFC 7296 §3.5): an IPv4 address or an FQDN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    Ipv4(Ipv4Addr),
    Fqdn(String),
}

impl Identity {
    pub fn to_wire(&self) -> Identification {
        match self {
            Self::Ipv4(a) => Identification::ipv4(*a),
            Self::Fqdn(n) => Identification::fqdn(n),
        }
    }

    /// Whether a received ID payload names this identity (FQDNs compare
    /// case-insensitively, as DNS names do).
    pub fn matches(&self, id: &Identification) -> bool {
        match self {
            Self::Ipv4(a) => id.id_type == IdType::IPV4_ADDR && id.data == a.octets(),
            Self::Fqdn(n) => {
                id.id_type == IdType::FQDN && id.data.eq_ignore_ascii_case(n.as_bytes())
            }
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ipv4(a) => write!(f, "{a}"),
            Self::Fqdn(n) => f.write_str(n),
        }
    }
}

/// A pre-shared key. Its `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Psk(pub Zeroizing<Vec<u8>>);

impl Psk {
    pub fn new(secret: impl Into<Vec<u8>>) -> Self {
        Self(Zeroizing::new(secret.into()))
    }
}

impl fmt::Debug for Psk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Psk(<redacted>)")
    }
}

/// The IKE SA algorithms of a tunnel: exactly one of each. The PRF follows the
/// integrity algorithm; with an AEAD cipher no integrity transform is negotiated and
/// `integ` only selects the PRF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IkeProposal {
    pub encr: Encr,
    pub integ: Integ,
    pub dh: DhGroup,
}

impl IkeProposal {
    pub fn prf(&self) -> Prf {
        prf_for(self.integ)
    }

    /// The integrity transform actually negotiated (none with AEAD).
    pub fn negotiated_integ(&self) -> Option<Integ> {
        (!self.encr.is_aead()).then_some(self.integ)
    }

    /// strongSwan-style name, e.g. `aes128-sha1-modp1024`.
    pub fn name(&self) -> String {
        suite_name(
            self.encr,
            self.negotiated_integ(),
            Some(self.prf()),
            Some(self.dh),
        )
    }
}

/// The Child SA (ESP) algorithms of a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EspProposal {
    pub encr: Encr,
    /// Ignored with an AEAD cipher.
    pub integ: Integ,
    /// Diffie-Hellman group for Perfect Forward Secrecy in CREATE_CHILD_SA.
    pub pfs: Option<DhGroup>,
}

impl EspProposal {
    pub fn negotiated_integ(&self) -> Option<Integ> {
        (!self.encr.is_aead()).then_some(self.integ)
    }

    pub fn name(&self) -> String {
        suite_name(self.encr, self.negotiated_integ(), None, self.pfs)
    }
}

/// The PRF that goes with an integrity algorithm (the API has one "integrity" knob).
pub fn prf_for(integ: Integ) -> Prf {
    match integ {
        Integ::HmacMd5_96 => Prf::HmacMd5,
        Integ::HmacSha1_96 => Prf::HmacSha1,
        Integ::HmacSha256_128 => Prf::HmacSha256,
        Integ::HmacSha384_192 => Prf::HmacSha384,
        Integ::HmacSha512_256 => Prf::HmacSha512,
    }
}

/// `aes128-sha1-modp1024` style names as operators know them from strongSwan.
pub(crate) fn suite_name(
    encr: Encr,
    integ: Option<Integ>,
    prf: Option<Prf>,
    dh: Option<DhGroup>,
) -> String {
    let mut s = encr.name().to_string();
    match (integ, prf) {
        (Some(i), _) => {
            s.push('-');
            s.push_str(short_integ(i));
        }
        (None, Some(p)) => {
            s.push('-');
            s.push_str(p.name());
        }
        (None, None) => {}
    }
    if let Some(g) = dh {
        s.push('-');
        s.push_str(g.name());
    }
    s
}

pub(crate) fn short_integ(i: Integ) -> &'static str {
    match i {
        Integ::HmacMd5_96 => "md5",
        Integ::HmacSha1_96 => "sha1",
        Integ::HmacSha256_128 => "sha256",
        Integ::HmacSha384_192 => "sha384",
        Integ::HmacSha512_256 => "sha512",
    }
}

/// An IPv4 prefix, `10.0.0.0/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Cidr {
    pub const ANY: Self = Self {
        addr: Ipv4Addr::UNSPECIFIED,
        prefix: 0,
    };

    pub fn new(addr: Ipv4Addr, prefix: u8) -> Self {
        let prefix = prefix.min(32);
        let mask = Self::mask(prefix);
        Self {
            addr: Ipv4Addr::from(u32::from(addr) & mask),
            prefix,
        }
    }

    fn mask(prefix: u8) -> u32 {
        if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(prefix))
        }
    }

    pub fn first(&self) -> Ipv4Addr {
        self.addr
    }

    pub fn last(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !Self::mask(self.prefix))
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl std::str::FromStr for Ipv4Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = s.split_once('/').unwrap_or((s, "32"));
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|_| format!("invalid IPv4 address in {s:?}"))?;
        let prefix: u8 = p
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("invalid prefix in {s:?}"))?;
        Ok(Self::new(addr, prefix))
    }
}

/// Which IKE protocol a tunnel speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum IkeVersion {
    /// IKEv1 (RFC 2409): Main or Aggressive Mode, then Quick Mode.
    V1,
    /// IKEv2 (RFC 7296).
    #[default]
    V2,
}

/// The IKEv1 phase 1 exchange (RFC 2409 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum V1Mode {
    /// Identity protection: six messages, identities encrypted.
    #[default]
    Main,
    /// Three messages, identities in the clear; lets a responder pick the pre-shared
    /// key by the peer's ID (peers whose address changes).
    Aggressive,
}

/// Everything the engine needs to know about one tunnel.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerConfig {
    /// IKEv2 unless set; a responder tells the versions apart by the header.
    pub version: IkeVersion,
    /// IKEv1 only: Main or Aggressive Mode.
    pub v1_mode: V1Mode,
    /// Our IKE address, port 500 (NAT-T moves to 4500 on the same IP).
    pub local: SocketAddr,
    /// The peer's address, port 500; `None` (or 0.0.0.0) accepts any peer as
    /// responder only, matched by its identity.
    pub remote: Option<SocketAddr>,
    pub local_id: Identity,
    pub remote_id: Identity,
    pub psk: Psk,
    pub ike: IkeProposal,
    pub esp: EspProposal,
    /// IKE SA lifetime; zero means never rekey.
    pub ike_lifetime: Duration,
    /// Child SA lifetime; zero means never rekey.
    pub child_lifetime: Duration,
    /// Protected local networks; `[0.0.0.0/0]` in destination routing mode.
    pub local_ts: Vec<Ipv4Cidr>,
    pub remote_ts: Vec<Ipv4Cidr>,
    /// Idle time after which an empty INFORMATIONAL checks liveness; `None` disables DPD.
    pub dpd_interval: Option<Duration>,
    /// How long a liveness check may stay unanswered before the peer is declared dead.
    pub dpd_timeout: Duration,
    pub nat_traversal: bool,
}

impl PeerConfig {
    /// The remote address if it names a real peer (not "any").
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.remote.filter(|a| !a.ip().is_unspecified())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psk_debug_is_redacted() {
        let p = Psk::new("hunter2-secret");
        let d = format!("{p:?}");
        assert!(!d.contains("hunter2"));
        assert_eq!(d, "Psk(<redacted>)");
    }

    #[test]
    fn names() {
        let p = IkeProposal {
            encr: Encr::AesCbc128,
            integ: Integ::HmacSha1_96,
            dh: DhGroup::Modp1024,
        };
        assert_eq!(p.name(), "aes128-sha1-modp1024");
        let g = IkeProposal {
            encr: Encr::AesGcm16_256,
            integ: Integ::HmacSha256_128,
            dh: DhGroup::Ecp256,
        };
        assert_eq!(
            g.name(),
            format!("aes256gcm16-prfsha256-{}", DhGroup::Ecp256.name())
        );
        let e = EspProposal {
            encr: Encr::AesCbc256,
            integ: Integ::HmacSha256_128,
            pfs: None,
        };
        assert_eq!(e.name(), "aes256-sha256");
    }

    #[test]
    fn cidr() {
        let c: Ipv4Cidr = "10.1.2.3/16".parse().unwrap();
        assert_eq!(c.to_string(), "10.1.0.0/16");
        assert_eq!(c.last(), Ipv4Addr::new(10, 1, 255, 255));
        assert_eq!(Ipv4Cidr::ANY.last(), Ipv4Addr::BROADCAST);
        assert!("10.0.0.0/33".parse::<Ipv4Cidr>().is_err());
    }

    #[test]
    fn identity_matching() {
        assert!(Identity::Fqdn("GW.example".into()).matches(&Identification::fqdn("gw.EXAMPLE")));
        assert!(!Identity::Ipv4(Ipv4Addr::LOCALHOST).matches(&Identification::fqdn("127.0.0.1")));
    }
}
