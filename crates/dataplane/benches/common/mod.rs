//! What the offload benches share: TCP segments as a host's stack would send them.

use dataplane::offload::{F_NEEDS_CSUM, GSO_TCPV4, VnetHdr, fold, sum};

/// An IPv4/TCP packet (no options, ACK set) 10.2.0.1:5201 → `dst`:50000 with `payload`
/// and valid IP and TCP checksums.
pub fn tcp(dst: [u8; 4], id: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let total = 40 + payload.len();
    let mut p = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 2, 0, 1];
    p.extend_from_slice(&dst);
    p.extend_from_slice(&[0x14, 0x51, 0xc3, 0x50]);
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[4..6].copy_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 7, 0x50, 0x10, 0x01, 0xf6, 0, 0, 0, 0]);
    p.extend_from_slice(payload);
    let c = !fold(sum(&p[..20], 0));
    p[10..12].copy_from_slice(&c.to_be_bytes());
    let pseudo = sum(&p[12..20], 6 + (total - 20) as u64);
    let c = !fold(sum(&p[20..], pseudo));
    p[36..38].copy_from_slice(&c.to_be_bytes());
    p
}

/// The vnet header the kernel puts before a TCP/IPv4 TSO packet from [`tcp`] to be cut
/// into `mss`-byte segments.
pub fn tso_hdr(mss: usize) -> VnetHdr {
    VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_TCPV4,
        hdr_len: 40,
        gso_size: mss as u16,
        csum_start: 20,
        csum_offset: 16,
    }
}
