use rand::Rng;

/// The kinds of resource ID; the prefix tells what an ID names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    VpnGateway,
    CustomerGateway,
    Connection,
    Tunnel,
    Route,
    PolicyRoute,
}

impl IdKind {
    pub fn prefix(self) -> &'static str {
        match self {
            IdKind::VpnGateway => "vpn-",
            IdKind::CustomerGateway => "cgw-",
            IdKind::Connection => "vco-",
            IdKind::Tunnel => "tun-",
            IdKind::Route => "vrt-",
            IdKind::PolicyRoute => "vpr-",
        }
    }
}

const ID_CHARS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
const ID_LEN: usize = 20;

/// A new random ID like `vco-k3f9...`: 20 base-36 characters (103 bits), so IDs are unique
/// forever for all practical purposes.
pub fn new_id(kind: IdKind, rng: &mut impl Rng) -> String {
    let mut id = String::with_capacity(kind.prefix().len() + ID_LEN);
    id.push_str(kind.prefix());
    for _ in 0..ID_LEN {
        let i = rng.random_range(0..ID_CHARS.len());
        id.push(char::from(ID_CHARS[i]));
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn ids_have_prefix_and_length() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let a = new_id(IdKind::Connection, &mut rng);
        let b = new_id(IdKind::Connection, &mut rng);
        assert!(a.starts_with("vco-"));
        assert_eq!(a.len(), 24);
        assert_ne!(a, b);
        assert!(new_id(IdKind::Tunnel, &mut rng).starts_with("tun-"));
    }
}
