//! The IKE engine's counters ([`ike::Stats`]) and half-open IKE SAs for `GET /metrics`.
//!
//! The [`ike::Endpoint`] lives on the control thread, which must never wait for a scrape
//! (a slow one would stall IKE) and a scrape must never wait for it (it may be busy with
//! a flood of IKE_SA_INIT). After each pass of its loop the control thread copies the
//! counters into an [`IkeSnapshot`] and, when it differs from the published one, swaps
//! it into an [`ArcSwap`] that [`crate::NodeMetrics`] reads: at most one small
//! allocation per loop pass (which handles up to a batch of datagrams), none per
//! datagram, and a scrape always sees one consistent snapshot.

use std::sync::Arc;

use arc_swap::ArcSwap;

/// What the control thread publishes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct IkeSnapshot {
    pub stats: ike::Stats,
    /// `Endpoint::half_open_total`.
    pub half_open: usize,
}

/// The published snapshot, shared by the control thread (writer) and the metrics
/// (readers).
pub(crate) type SharedIkeStats = Arc<ArcSwap<IkeSnapshot>>;

/// Publishes `snap` unless it is what readers already see.
pub(crate) fn publish(shared: &ArcSwap<IkeSnapshot>, snap: IkeSnapshot) {
    if **shared.load() != snap {
        shared.store(Arc::new(snap));
    }
}

/// Appends the Prometheus text lines (with `# HELP`/`# TYPE`).
pub(crate) fn render(s: &IkeSnapshot, out: &mut String) {
    use std::fmt::Write;
    let st = &s.stats;
    for (name, help, label, series) in [
        (
            "vpngw_ike_datagrams_total",
            "IKE messages the engine received and sent (UDP 500 and 4500, IKEv1 and IKEv2, \
             retransmissions included), by direction.",
            "direction",
            &[("in", st.datagrams_in), ("out", st.datagrams_out)][..],
        ),
        (
            "vpngw_ike_dropped_total",
            "IKE messages the engine dropped, by reason: malformed (undecodable header or \
             payloads), integrity (encrypted payload whose checksum did not verify: forged, \
             or keys that do not match), unknown_spi (for an IKE SA this node does not have), \
             unexpected (request outside the window, response to nothing outstanding, or an \
             exchange the IKE SA does not expect), no_peer (IKE_SA_INIT or IKEv1 \
             Main/Aggressive Mode from an address no configured tunnel accepts), \
             half_open_limit (IKE_SA_INIT or IKEv1 Main/Aggressive Mode message 1 while \
             the half-open limit of responder SAs was reached).",
            "reason",
            &[
                ("malformed", st.malformed),
                ("integrity", st.integrity_failures),
                ("unknown_spi", st.unknown_spi),
                ("unexpected", st.unexpected),
                ("no_peer", st.no_peer),
                ("half_open_limit", st.half_open_limited),
            ][..],
        ),
        (
            "vpngw_ike_dh_keys_total",
            "Diffie-Hellman key pairs used by IKE exchanges, by source: ready (made ahead by \
             the key pool, off the control thread), inline (made on the control thread \
             because none was ready).",
            "source",
            &[("ready", st.dh_keys_ready), ("inline", st.dh_keys_inline)][..],
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (value, v) in series {
            let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {v}");
        }
    }
    crate::health::write_counters(
        out,
        &[
            (
                "vpngw_ike_duplicate_requests_total",
                "Requests the peer sent again, answered again from the response cache \
                 (RFC 7296 §2.1).",
                st.duplicate_requests,
            ),
            (
                "vpngw_ike_refused_total",
                "First messages (IKE_SA_INIT, IKEv1 Main or Aggressive Mode message 1) \
                 answered with a refusal: no acceptable proposal, the other IKE version or \
                 mode, or an ID no tunnel expects. Each tunnel logs one at most every 10 s.",
                st.refused,
            ),
            (
                "vpngw_ike_retransmits_total",
                "Requests this node sent again because the peer had not answered yet.",
                st.retransmits,
            ),
            (
                "vpngw_ike_dh_offloaded_total",
                "Diffie-Hellman shared secrets (IKE_SA_INIT, IKEv1 Main, Aggressive and Quick \
                 Mode, CREATE_CHILD_SA with a KE payload) computed on the DH worker threads \
                 instead of the control thread.",
                st.dh_offloaded,
            ),
            (
                "vpngw_ike_dh_stale_total",
                "Offloaded shared secrets discarded because their IKE SA was already gone \
                 (timed out or deleted).",
                st.dh_stale,
            ),
            (
                "vpngw_ike_dh_held_requests_total",
                "Requests (the peer's IKE_AUTH) that arrived before their IKE SA's offloaded \
                 keys and waited for them.",
                st.dh_held,
            ),
            (
                "vpngw_ike_cookies_sent_total",
                "IKE_SA_INIT requests answered with a COOKIE instead of state because too many \
                 IKE SAs were half-open (RFC 7296 §2.6).",
                st.cookies_sent,
            ),
            (
                "vpngw_ike_cookies_invalid_total",
                "IKE_SA_INIT requests whose COOKIE did not verify (forged, or made with a \
                 retired secret), answered like requests without one.",
                st.cookies_invalid,
            ),
        ],
    );
    let name = "vpngw_ike_half_open_sas";
    let _ = writeln!(
        out,
        "# HELP {name} Responder IKE SAs still negotiating: IKEv2 waiting for the peer's \
         IKE_AUTH, IKEv1 in Main or Aggressive Mode (what --ike-half-open-limit bounds).\n\
         # TYPE {name} gauge\n{name} {}",
        s.half_open
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every field a distinct value, so that a counter rendered under the wrong series
    /// shows.
    fn snapshot() -> IkeSnapshot {
        IkeSnapshot {
            stats: ike::Stats {
                datagrams_in: 101,
                datagrams_out: 102,
                malformed: 3,
                integrity_failures: 4,
                unknown_spi: 5,
                unexpected: 6,
                duplicate_requests: 7,
                retransmits: 8,
                no_peer: 9,
                dh_keys_ready: 10,
                dh_keys_inline: 11,
                dh_offloaded: 12,
                dh_stale: 13,
                dh_held: 14,
                cookies_sent: 15,
                cookies_invalid: 16,
                half_open_limited: 18,
                refused: 19,
            },
            half_open: 17,
        }
    }

    #[test]
    fn renders_every_counter_once_under_its_series() {
        let mut out = String::new();
        render(&snapshot(), &mut out);
        let samples: Vec<&str> = out.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            samples,
            [
                "vpngw_ike_datagrams_total{direction=\"in\"} 101",
                "vpngw_ike_datagrams_total{direction=\"out\"} 102",
                "vpngw_ike_dropped_total{reason=\"malformed\"} 3",
                "vpngw_ike_dropped_total{reason=\"integrity\"} 4",
                "vpngw_ike_dropped_total{reason=\"unknown_spi\"} 5",
                "vpngw_ike_dropped_total{reason=\"unexpected\"} 6",
                "vpngw_ike_dropped_total{reason=\"no_peer\"} 9",
                "vpngw_ike_dropped_total{reason=\"half_open_limit\"} 18",
                "vpngw_ike_dh_keys_total{source=\"ready\"} 10",
                "vpngw_ike_dh_keys_total{source=\"inline\"} 11",
                "vpngw_ike_duplicate_requests_total 7",
                "vpngw_ike_refused_total 19",
                "vpngw_ike_retransmits_total 8",
                "vpngw_ike_dh_offloaded_total 12",
                "vpngw_ike_dh_stale_total 13",
                "vpngw_ike_dh_held_requests_total 14",
                "vpngw_ike_cookies_sent_total 15",
                "vpngw_ike_cookies_invalid_total 16",
                "vpngw_ike_half_open_sas 17",
            ]
        );
        // Each family: HELP then TYPE, right before its first sample.
        let types: Vec<&str> = out
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .collect();
        assert_eq!(
            types,
            [
                "vpngw_ike_datagrams_total counter",
                "vpngw_ike_dropped_total counter",
                "vpngw_ike_dh_keys_total counter",
                "vpngw_ike_duplicate_requests_total counter",
                "vpngw_ike_refused_total counter",
                "vpngw_ike_retransmits_total counter",
                "vpngw_ike_dh_offloaded_total counter",
                "vpngw_ike_dh_stale_total counter",
                "vpngw_ike_dh_held_requests_total counter",
                "vpngw_ike_cookies_sent_total counter",
                "vpngw_ike_cookies_invalid_total counter",
                "vpngw_ike_half_open_sas gauge",
            ]
        );
        let lines: Vec<&str> = out.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            if let Some(t) = l.strip_prefix("# TYPE ") {
                let name = t.split(' ').next().unwrap_or_default();
                let help = format!("# HELP {name} ");
                assert!(
                    i > 0 && lines[i - 1].starts_with(&help),
                    "no HELP before {l}"
                );
                assert!(
                    lines.get(i + 1).is_some_and(|s| s.starts_with(name)),
                    "no sample after {l}"
                );
            }
        }
        // Every reason the HELP text promises is explained there.
        let dropped_help = lines
            .iter()
            .find(|l| l.starts_with("# HELP vpngw_ike_dropped_total "))
            .unwrap_or(&"");
        for reason in [
            "malformed (",
            "integrity (",
            "unknown_spi (",
            "unexpected (",
            "no_peer (",
            "half_open_limit (",
        ] {
            assert!(dropped_help.contains(reason), "{reason}: {dropped_help}");
        }
    }

    #[test]
    fn publish_swaps_only_on_change() {
        let shared = ArcSwap::from_pointee(IkeSnapshot::default());
        let before = shared.load_full();
        publish(&shared, IkeSnapshot::default());
        assert!(Arc::ptr_eq(&before, &shared.load_full()), "unchanged: kept");
        publish(&shared, snapshot());
        assert_eq!(**shared.load(), snapshot());
        assert!(!Arc::ptr_eq(&before, &shared.load_full()));
    }
}
