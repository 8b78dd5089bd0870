//! Standard Webhooks signatures: `webhook-signature: v1,<base64 HMAC-SHA256 of
//! "<webhook-id>.<webhook-timestamp>.<body>">`, keyed with the secret. A secret written as the
//! specification serializes it (`whsec_` + base64) is the key its base64 decodes to; any other
//! string is used as it is (its UTF-8 bytes).

use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// A signing key. `Debug` never shows it.
#[derive(Clone)]
pub struct SigningKey(Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

impl SigningKey {
    /// The key of `secret`; an error (without the secret) for a `whsec_` value that is not
    /// base64.
    pub fn new(secret: &str) -> Result<SigningKey, String> {
        match secret.strip_prefix("whsec_") {
            Some(encoded) => STANDARD.decode(encoded).map(SigningKey).map_err(|_| {
                "a secret starting with whsec_ must continue in base64 (Standard Webhooks)".into()
            }),
            None => Ok(SigningKey(secret.as_bytes().to_vec())),
        }
    }

    /// The `webhook-signature` value for message `id` sent at `timestamp` with `body`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes keys of any size");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_as_the_specification_does() {
        // The specification's own example (standard-webhooks README): this secret, id,
        // timestamp and body sign to this value.
        let key = SigningKey::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            key.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        assert!(SigningKey::new("whsec_!!").is_err());
        assert!(format!("{key:?}").contains("redacted"));
    }
}
