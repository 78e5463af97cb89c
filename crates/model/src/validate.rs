//! Field checks shared by all resources.

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::Value;

use crate::{FieldError, MAX_DESCRIPTION_LEN, MAX_NAME_LEN, MAX_TAGS, Tags};

pub(crate) fn name(v: Option<String>, field: &str) -> Result<String, FieldError> {
    let v = v.ok_or_else(|| FieldError::new(field, "is required: a name of 1–128 characters"))?;
    let len = v.chars().count();
    if len == 0 || len > MAX_NAME_LEN {
        return Err(FieldError::new(
            field,
            format!("must be 1–{MAX_NAME_LEN} characters long, got {len}"),
        ));
    }
    Ok(v)
}

pub(crate) fn description(v: Option<String>, field: &str) -> Result<String, FieldError> {
    let v = v.unwrap_or_default();
    let len = v.chars().count();
    if len > MAX_DESCRIPTION_LEN {
        return Err(FieldError::new(
            field,
            format!("must be at most {MAX_DESCRIPTION_LEN} characters long, got {len}"),
        ));
    }
    Ok(v)
}

pub(crate) fn tags(v: Option<Tags>, field: &str) -> Result<Tags, FieldError> {
    let v = v.unwrap_or_default();
    if v.len() > MAX_TAGS {
        return Err(FieldError::new(
            field,
            format!("at most {MAX_TAGS} tags are allowed, got {}", v.len()),
        ));
    }
    for (k, val) in &v {
        let klen = k.chars().count();
        if klen == 0 || klen > 128 {
            return Err(FieldError::new(
                field,
                format!("tag keys must be 1–128 characters long, `{k}` has {klen}"),
            ));
        }
        if val.chars().count() > 256 {
            return Err(FieldError::new(
                format!("{field}.{k}"),
                "tag values must be at most 256 characters long",
            ));
        }
    }
    Ok(v)
}

pub(crate) fn ip(v: &str, field: &str) -> Result<IpAddr, FieldError> {
    v.parse().map_err(|_| {
        FieldError::new(
            field,
            format!("`{v}` is not an IP address: use e.g. 192.0.2.1 or 2001:db8::1"),
        )
    })
}

/// A network in CIDR notation whose host bits are zero.
pub(crate) fn cidr(v: &str, field: &str) -> Result<IpNet, FieldError> {
    let net: IpNet = v.parse().map_err(|_| {
        FieldError::new(
            field,
            format!("`{v}` is not a CIDR block: use e.g. 10.0.0.0/16"),
        )
    })?;
    if net.trunc() != net {
        return Err(FieldError::new(
            field,
            format!("`{v}` has host bits set: the network is {}", net.trunc()),
        ));
    }
    Ok(net)
}

pub(crate) fn cidrs(v: &[String], field: &str) -> Result<Vec<IpNet>, FieldError> {
    v.iter()
        .enumerate()
        .map(|(i, s)| cidr(s, &format!("{field}[{i}]")))
        .collect()
}

/// An IKE identity: an IP address or an FQDN (RFC 7296 §3.5 ID_IPV4_ADDR/ID_FQDN).
pub(crate) fn identity(v: &str, field: &str) -> Result<(), FieldError> {
    if v.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let bad = || {
        FieldError::new(
            field,
            format!(
                "`{v}` is neither an IP address nor an FQDN: use e.g. 203.0.113.7 or vpn.example.com (no spaces)"
            ),
        )
    };
    if v.is_empty() || v.len() > 253 || v.chars().any(char::is_whitespace) {
        return Err(bad());
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    if v.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(bad())
    }
}

pub(crate) fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// RFC 7396 JSON merge patch: objects merge key by key, `null` removes, anything else
/// replaces. Used for PATCH: the current resource's spec, patched, is validated again.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in patch {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn name_and_description_lengths() {
        assert!(name(None, "name").unwrap_err().message.contains("required"));
        assert!(name(Some(String::new()), "name").is_err());
        assert!(name(Some("a".repeat(128)), "name").is_ok());
        let e = name(Some("a".repeat(129)), "name").unwrap_err();
        assert_eq!(e.field, "name");
        assert!(description(Some("d".repeat(256)), "description").is_ok());
        assert!(description(Some("d".repeat(257)), "description").is_err());
        assert_eq!(description(None, "d").unwrap(), "");
    }

    #[test]
    fn at_most_20_tags() {
        let mut t = Tags::new();
        for i in 0..20 {
            t.insert(format!("k{i}"), "v".into());
        }
        assert!(tags(Some(t.clone()), "tags").is_ok());
        t.insert("k20".into(), "v".into());
        let e = tags(Some(t), "tags").unwrap_err();
        assert_eq!(e.field, "tags");
        assert!(e.message.contains("20"));
        let mut t = Tags::new();
        t.insert(String::new(), "v".into());
        assert!(tags(Some(t), "tags").is_err());
    }

    #[test]
    fn cidrs_must_be_networks() {
        assert!(cidr("10.0.0.0/16", "x").is_ok());
        assert!(cidr("2001:db8::/32", "x").is_ok());
        let e = cidr("10.0.0.1/16", "x").unwrap_err();
        assert!(e.message.contains("10.0.0.0/16"), "{e}");
        assert!(cidr("10.0.0.0", "x").is_err());
        assert!(cidr("10.0.0.0/33", "x").is_err());
        let e = cidrs(&["10.0.0.0/8".into(), "nope".into()], "local_subnets").unwrap_err();
        assert_eq!(e.field, "local_subnets[1]");
    }

    #[test]
    fn identities_are_ips_or_fqdns() {
        assert!(identity("192.0.2.1", "id").is_ok());
        assert!(identity("2001:db8::1", "id").is_ok());
        assert!(identity("vpn.example.com", "id").is_ok());
        assert!(identity("peer1", "id").is_ok());
        assert!(identity("vpn example.com", "id").is_err());
        assert!(identity("", "id").is_err());
        assert!(identity("a..b", "id").is_err());
        assert!(identity("-a.b", "id").is_err());
    }

    #[test]
    fn overlap() {
        let a: IpNet = "10.0.0.0/8".parse().unwrap();
        let b: IpNet = "10.1.0.0/16".parse().unwrap();
        let c: IpNet = "192.168.0.0/16".parse().unwrap();
        assert!(overlaps(&a, &b) && overlaps(&b, &a));
        assert!(!overlaps(&a, &c));
    }

    #[test]
    fn merge_patch_rfc7396() {
        let mut t = json!({"a": 1, "b": {"c": 2, "d": 3}, "e": [1, 2]});
        merge_patch(&mut t, &json!({"a": null, "b": {"c": 5}, "e": [9]}));
        assert_eq!(t, json!({"b": {"c": 5, "d": 3}, "e": [9]}));
    }
}
