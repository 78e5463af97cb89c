//! IANA "Internet Key Exchange Version 2 (IKEv2) Parameters" registries as open
//! newtypes: every value is representable, known ones have names.

macro_rules! registry {
    ($(#[$m:meta])* $name:ident($int:ty) { $($konst:ident = $val:expr,)* }) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub $int);

        impl $name {
            $(pub const $konst: Self = Self($val);)*

            /// The IANA name, if this value is one this crate knows.
            pub fn name(self) -> Option<&'static str> {
                match self {
                    $(Self::$konst => Some(stringify!($konst)),)*
                    _ => None,
                }
            }
        }

        impl core::fmt::Debug for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                match self.name() {
                    Some(n) => f.write_str(n),
                    None => write!(f, "{}({})", stringify!($name), self.0),
                }
            }
        }

        impl core::fmt::Display for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                core::fmt::Debug::fmt(self, f)
            }
        }
    };
}

registry! {
    /// RFC 7296 §3.1 Exchange Types.
    ExchangeType(u8) {
        IKE_SA_INIT = 34,
        IKE_AUTH = 35,
        CREATE_CHILD_SA = 36,
        INFORMATIONAL = 37,
    }
}

registry! {
    /// RFC 7296 §3.2 Payload Types.
    PayloadType(u8) {
        NONE = 0,
        SA = 33,
        KE = 34,
        IDI = 35,
        IDR = 36,
        CERT = 37,
        CERTREQ = 38,
        AUTH = 39,
        NONCE = 40,
        NOTIFY = 41,
        DELETE = 42,
        VENDOR = 43,
        TSI = 44,
        TSR = 45,
        SK = 46,
        CP = 47,
        EAP = 48,
        SKF = 53,
    }
}

registry! {
    /// RFC 7296 §3.3.1 Protocol IDs (in proposals, notifies and deletes).
    ProtocolId(u8) {
        NONE = 0,
        IKE = 1,
        AH = 2,
        ESP = 3,
    }
}

registry! {
    /// RFC 7296 §3.3.2 Transform Types.
    TransformType(u8) {
        ENCR = 1,
        PRF = 2,
        INTEG = 3,
        DH = 4,
        ESN = 5,
    }
}

registry! {
    /// RFC 7296 §3.3.5 Transform Attribute Types.
    AttributeType(u16) {
        KEY_LENGTH = 14,
    }
}

registry! {
    /// RFC 7296 §3.5 Identification types.
    IdType(u8) {
        IPV4_ADDR = 1,
        FQDN = 2,
        RFC822_ADDR = 3,
        IPV6_ADDR = 5,
        DER_ASN1_DN = 9,
        DER_ASN1_GN = 10,
        KEY_ID = 11,
    }
}

registry! {
    /// RFC 7296 §3.8 Authentication Methods.
    AuthMethod(u8) {
        RSA_SIG = 1,
        SHARED_KEY_MIC = 2,
        DSS_SIG = 3,
        DIGITAL_SIGNATURE = 14,
    }
}

registry! {
    /// RFC 7296 §3.13.1 Traffic Selector Types.
    TsType(u8) {
        IPV4_ADDR_RANGE = 7,
        IPV6_ADDR_RANGE = 8,
    }
}

registry! {
    /// RFC 7296 §3.10.1 Notify Message Types (errors below 16384, status above).
    NotifyType(u16) {
        UNSUPPORTED_CRITICAL_PAYLOAD = 1,
        INVALID_IKE_SPI = 4,
        INVALID_MAJOR_VERSION = 5,
        INVALID_SYNTAX = 7,
        INVALID_MESSAGE_ID = 9,
        INVALID_SPI = 11,
        NO_PROPOSAL_CHOSEN = 14,
        INVALID_KE_PAYLOAD = 17,
        AUTHENTICATION_FAILED = 24,
        SINGLE_PAIR_REQUIRED = 34,
        NO_ADDITIONAL_SAS = 35,
        INTERNAL_ADDRESS_FAILURE = 36,
        FAILED_CP_REQUIRED = 37,
        TS_UNACCEPTABLE = 38,
        INVALID_SELECTORS = 39,
        TEMPORARY_FAILURE = 43,
        CHILD_SA_NOT_FOUND = 44,
        INITIAL_CONTACT = 16384,
        SET_WINDOW_SIZE = 16385,
        ADDITIONAL_TS_POSSIBLE = 16386,
        IPCOMP_SUPPORTED = 16387,
        NAT_DETECTION_SOURCE_IP = 16388,
        NAT_DETECTION_DESTINATION_IP = 16389,
        COOKIE = 16390,
        USE_TRANSPORT_MODE = 16391,
        HTTP_CERT_LOOKUP_SUPPORTED = 16392,
        REKEY_SA = 16393,
        ESP_TFC_PADDING_NOT_SUPPORTED = 16394,
        NON_FIRST_FRAGMENTS_ALSO = 16395,
        MOBIKE_SUPPORTED = 16396,
        MULTIPLE_AUTH_SUPPORTED = 16404,
        ANOTHER_AUTH_FOLLOWS = 16405,
        REDIRECT_SUPPORTED = 16406,
        CHILDLESS_IKEV2_SUPPORTED = 16418,
        IKEV2_MESSAGE_ID_SYNC_SUPPORTED = 16420,
        IKEV2_FRAGMENTATION_SUPPORTED = 16430,
        SIGNATURE_HASH_ALGORITHMS = 16431,
    }
}

impl NotifyType {
    /// RFC 7296 §3.10.1: types below 16384 report errors.
    pub fn is_error(self) -> bool {
        self.0 < 16384
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_values_round_trip_and_print() {
        let n = NotifyType(40000);
        assert_eq!(n.name(), None);
        assert_eq!(format!("{n:?}"), "NotifyType(40000)");
        assert_eq!(format!("{:?}", NotifyType::COOKIE), "COOKIE");
        assert!(NotifyType::TS_UNACCEPTABLE.is_error());
        assert!(!NotifyType::INITIAL_CONTACT.is_error());
    }
}
