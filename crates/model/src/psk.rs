use std::fmt;

use rand::Rng;

use crate::FieldError;

/// The special characters a pre-shared key may contain besides ASCII letters and digits.
pub const PSK_SPECIALS: &str = "~`!@#$%^&*()_-+={}[]\\|;:',.<>/?";
const MAX_PSK_LEN: usize = 100;
const GENERATED_PSK_LEN: usize = 16;

/// A pre-shared key. It is deliberately neither `Serialize` nor printable: `Debug` shows
/// `Psk(<redacted>)`, and the only way to the secret is [`Psk::expose`], which the store
/// (to persist it) and the reveal endpoint call.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Psk(String);

impl Psk {
    /// Checks a client-supplied key: 1–100 characters of letters, digits and
    /// [`PSK_SPECIALS`], no spaces. The error never repeats the key.
    pub fn parse(s: &str) -> Result<Psk, FieldError> {
        let len = s.chars().count();
        if len == 0 || len > MAX_PSK_LEN {
            return Err(FieldError::new(
                "",
                format!("must be 1–{MAX_PSK_LEN} characters long, got {len}"),
            ));
        }
        if let Some((pos, c)) = s.char_indices().find(|(_, c)| !allowed(*c)) {
            let what = if c.is_whitespace() {
                "a space or other whitespace".to_string()
            } else {
                format!("the character U+{:04X}", u32::from(c))
            };
            return Err(FieldError::new(
                "",
                format!(
                    "contains {what} at position {pos}; allowed are letters, digits and {PSK_SPECIALS} (no spaces)"
                ),
            ));
        }
        Ok(Psk(s.to_string()))
    }

    /// The secret itself. Callers must not log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Psk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Psk(<redacted>)")
    }
}

fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || PSK_SPECIALS.contains(c)
}

/// A new 16-character key drawn uniformly from the allowed character set.
pub fn generate_psk(rng: &mut impl Rng) -> Psk {
    let alphabet: Vec<char> = ('a'..='z')
        .chain('A'..='Z')
        .chain('0'..='9')
        .chain(PSK_SPECIALS.chars())
        .collect();
    let key = (0..GENERATED_PSK_LEN)
        .map(|_| alphabet[rng.random_range(0..alphabet.len())])
        .collect();
    Psk(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn accepts_letters_digits_and_specials() {
        assert!(Psk::parse("abcXYZ019").is_ok());
        assert!(Psk::parse(PSK_SPECIALS).is_ok());
        assert!(Psk::parse(&"a".repeat(100)).is_ok());
    }

    #[test]
    fn rejects_empty_too_long_spaces_and_other_chars() {
        assert!(Psk::parse("").unwrap_err().message.contains("1–100"));
        assert!(
            Psk::parse(&"a".repeat(101))
                .unwrap_err()
                .message
                .contains("got 101")
        );
        let e = Psk::parse("my secret").unwrap_err();
        assert!(e.message.contains("space"), "{e}");
        assert!(!e.message.contains("my secret"));
        assert!(Psk::parse("abc\"def").is_err());
        assert!(Psk::parse("schlüssel").is_err());
    }

    #[test]
    fn generated_keys_are_16_allowed_chars() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..200 {
            let k = generate_psk(&mut rng);
            assert_eq!(k.expose().chars().count(), 16);
            assert!(Psk::parse(k.expose()).is_ok());
        }
        assert_ne!(generate_psk(&mut rng), generate_psk(&mut rng));
    }

    #[test]
    fn debug_is_redacted() {
        let k = Psk::parse("TopSecret123").unwrap();
        let shown = format!("{k:?}");
        assert!(!shown.contains("TopSecret123"));
        assert_eq!(shown, "Psk(<redacted>)");
    }
}
