use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::FieldError;

/// An AS number as a client may write it: a number (`65000`) or a string in asplain
/// (`"65000"`) or asdot (`"123.456"` = 123×65536+456, RFC 5396 §1) notation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum AsnInput {
    Number(u64),
    Text(String),
}

/// Parses and range-checks an ASN: 1–4294967295.
pub fn parse_asn(input: &AsnInput) -> Result<u32, FieldError> {
    let value: u64 = match input {
        AsnInput::Number(n) => *n,
        AsnInput::Text(s) => match s.split_once('.') {
            Some((high, low)) => {
                let (Ok(high), Ok(low)) = (high.parse::<u16>(), low.parse::<u16>()) else {
                    return Err(FieldError::new(
                        "",
                        format!(
                            "`{s}` is not an AS number: asdot needs two numbers 0–65535 like `123.456`"
                        ),
                    ));
                };
                u64::from(high) * 65_536 + u64::from(low)
            }
            None => s.parse::<u64>().map_err(|_| {
                FieldError::new(
                    "",
                    format!("`{s}` is not an AS number: use 1–4294967295 or asdot like `123.456`"),
                )
            })?,
        },
    };
    match u32::try_from(value) {
        Ok(asn) if asn >= 1 => Ok(asn),
        _ => Err(FieldError::new(
            "",
            format!("AS number {value} is out of range: allowed 1–4294967295"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> AsnInput {
        AsnInput::Text(s.to_string())
    }

    #[test]
    fn plain_and_asdot() {
        assert_eq!(parse_asn(&AsnInput::Number(65000)), Ok(65000));
        assert_eq!(parse_asn(&text("65000")), Ok(65000));
        assert_eq!(parse_asn(&text("123.456")), Ok(123 * 65536 + 456));
        assert_eq!(parse_asn(&AsnInput::Number(4_294_967_295)), Ok(u32::MAX));
        assert_eq!(parse_asn(&text("65535.65535")), Ok(u32::MAX));
    }

    #[test]
    fn out_of_range_and_garbage() {
        assert!(
            parse_asn(&AsnInput::Number(0))
                .unwrap_err()
                .message
                .contains("1–4294967295")
        );
        assert!(parse_asn(&AsnInput::Number(4_294_967_296)).is_err());
        assert!(parse_asn(&text("0.0")).is_err());
        assert!(parse_asn(&text("1.70000")).is_err());
        assert!(parse_asn(&text("as65000")).is_err());
    }

    #[test]
    fn deserializes_number_or_string() {
        let n: AsnInput = serde_json::from_str("65000").unwrap();
        assert_eq!(n, AsnInput::Number(65000));
        let s: AsnInput = serde_json::from_str("\"1.2\"").unwrap();
        assert_eq!(parse_asn(&s), Ok(65538));
    }
}
