//! Traffic selectors and narrowing (RFC 7296 §2.9).

use std::fmt;
use std::net::Ipv4Addr;

use crate::config::Ipv4Cidr;
use crate::wire::TrafficSelector;

/// One negotiated IPv4 traffic selector: an address range, an IP protocol (0 = any)
/// and a port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TsRange {
    pub ip_proto: u8,
    pub start_port: u16,
    pub end_port: u16,
    pub start: Ipv4Addr,
    pub end: Ipv4Addr,
}

impl TsRange {
    pub fn from_cidr(c: Ipv4Cidr) -> Self {
        Self {
            ip_proto: 0,
            start_port: 0,
            end_port: u16::MAX,
            start: c.first(),
            end: c.last(),
        }
    }

    pub fn to_wire(self) -> TrafficSelector {
        TrafficSelector::Ipv4 {
            ip_proto: self.ip_proto,
            start_port: self.start_port,
            end_port: self.end_port,
            start: self.start,
            end: self.end,
        }
    }

    pub fn from_wire(ts: &TrafficSelector) -> Option<Self> {
        match *ts {
            TrafficSelector::Ipv4 {
                ip_proto,
                start_port,
                end_port,
                start,
                end,
            } => (start <= end && start_port <= end_port).then_some(Self {
                ip_proto,
                start_port,
                end_port,
                start,
                end,
            }),
            TrafficSelector::Other { .. } => None,
        }
    }

    /// Whether a packet's address (and protocol/port, if known) falls inside.
    pub fn contains_addr(&self, a: Ipv4Addr) -> bool {
        self.start <= a && a <= self.end
    }

    pub fn contains(&self, o: &TsRange) -> bool {
        (self.ip_proto == 0 || self.ip_proto == o.ip_proto)
            && self.start_port <= o.start_port
            && o.end_port <= self.end_port
            && self.start <= o.start
            && o.end <= self.end
    }

    pub fn intersect(&self, o: &TsRange) -> Option<TsRange> {
        let ip_proto = match (self.ip_proto, o.ip_proto) {
            (0, p) | (p, 0) => p,
            (a, b) if a == b => a,
            _ => return None,
        };
        let r = TsRange {
            ip_proto,
            start_port: self.start_port.max(o.start_port),
            end_port: self.end_port.min(o.end_port),
            start: self.start.max(o.start),
            end: self.end.min(o.end),
        };
        (r.start <= r.end && r.start_port <= r.end_port).then_some(r)
    }
}

impl fmt::Display for TsRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let span = u32::from(self.end).wrapping_sub(u32::from(self.start));
        if span.wrapping_add(1).is_power_of_two() && u32::from(self.start) & span == 0 {
            write!(
                f,
                "{}/{}",
                self.start,
                32 - (span.wrapping_add(1)).trailing_zeros().min(32)
            )?;
        } else if span == u32::MAX {
            write!(f, "0.0.0.0/0")?;
        } else {
            write!(f, "{}-{}", self.start, self.end)?;
        }
        if self.ip_proto != 0 {
            write!(f, "[{}", self.ip_proto)?;
            if self.start_port != 0 || self.end_port != u16::MAX {
                write!(f, "/{}-{}", self.start_port, self.end_port)?;
            }
            write!(f, "]")?;
        }
        Ok(())
    }
}

/// Formats a selector list as `10.0.0.0/24 10.1.0.0/24` for logs.
pub fn list_to_string(list: &[TsRange]) -> String {
    list.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A note for the log when a Child SA's selectors (`local === remote`) cover less than
/// the tunnel's subnets: the peer narrowed our proposal or proposed less itself (RFC
/// 7296 §2.9; IKEv1 IDs, RFC 2409 §5.5). Traffic for the rest has no SA and is dropped,
/// which an operator otherwise finds only by its absence.
pub fn narrowed_note(
    local: &[TsRange],
    remote: &[TsRange],
    ours_local: &[Ipv4Cidr],
    ours_remote: &[Ipv4Cidr],
) -> Option<String> {
    let ranges =
        |c: &[Ipv4Cidr]| -> Vec<TsRange> { c.iter().copied().map(TsRange::from_cidr).collect() };
    let (ours_local, ours_remote) = (ranges(ours_local), ranges(ours_remote));
    let covers =
        |got: &[TsRange], ours: &[TsRange]| ours.iter().all(|o| got.iter().any(|g| g.contains(o)));
    if covers(local, &ours_local) && covers(remote, &ours_remote) {
        return None;
    }
    Some(format!(
        "the Child SA covers {} === {}, less than the tunnel's {} === {}: traffic outside \
         it is dropped (check the subnets configured on both sides)",
        list_to_string(local),
        list_to_string(remote),
        list_to_string(&ours_local),
        list_to_string(&ours_remote)
    ))
}

/// Responder narrowing: the intersection of what the peer proposed with what we allow,
/// minus ranges fully covered by another result. Empty means TS_UNACCEPTABLE.
pub fn narrow(proposed: &[TrafficSelector], ours: &[TsRange]) -> Vec<TsRange> {
    let mut out: Vec<TsRange> = Vec::new();
    for p in proposed.iter().filter_map(TsRange::from_wire) {
        for o in ours {
            if let Some(i) = p.intersect(o)
                && !out.iter().any(|x| x.contains(&i))
            {
                out.retain(|x| !i.contains(x));
                out.push(i);
            }
        }
    }
    out
}

/// Initiator check (RFC 7296 §2.9): the responder may only narrow, so every selector
/// it returns must lie inside one we proposed.
pub fn accept_narrowed(returned: &[TrafficSelector], proposed: &[TsRange]) -> Option<Vec<TsRange>> {
    let mut out = Vec::new();
    for r in returned {
        let r = TsRange::from_wire(r)?;
        if !proposed.iter().any(|p| p.contains(&r)) {
            return None;
        }
        out.push(r);
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> TsRange {
        TsRange::from_cidr(s.parse().unwrap())
    }

    #[test]
    fn narrowing() {
        let proposed = vec![c("10.0.0.0/8").to_wire(), c("192.168.1.7/32").to_wire()];
        let ours = vec![c("10.1.0.0/16"), c("172.16.0.0/12")];
        assert_eq!(narrow(&proposed, &ours), vec![c("10.1.0.0/16")]);
        assert!(narrow(&[c("192.168.0.0/16").to_wire()], &ours).is_empty());
        // A trigger selector inside a wider one collapses into it.
        let p2 = vec![c("10.1.2.3/32").to_wire(), c("0.0.0.0/0").to_wire()];
        assert_eq!(narrow(&p2, &[c("0.0.0.0/0")]), vec![c("0.0.0.0/0")]);
    }

    #[test]
    fn accept_only_subsets() {
        let proposed = vec![c("10.0.0.0/8")];
        assert_eq!(
            accept_narrowed(&[c("10.2.0.0/16").to_wire()], &proposed),
            Some(vec![c("10.2.0.0/16")])
        );
        assert_eq!(
            accept_narrowed(&[c("11.0.0.0/8").to_wire()], &proposed),
            None
        );
        assert_eq!(accept_narrowed(&[], &proposed), None);
    }

    #[test]
    fn display() {
        assert_eq!(c("10.1.0.0/16").to_string(), "10.1.0.0/16");
        assert_eq!(c("0.0.0.0/0").to_string(), "0.0.0.0/0");
        let r = TsRange {
            start: Ipv4Addr::new(10, 0, 0, 1),
            end: Ipv4Addr::new(10, 0, 0, 5),
            ..c("0.0.0.0/0")
        };
        assert_eq!(r.to_string(), "10.0.0.1-10.0.0.5");
    }
}
