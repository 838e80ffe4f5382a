//! The public keys provenance is verified with: Ed25519 (the local key
//! file) and ECDSA P-256 with SHA-256 (Key Vault's ES256, since Key Vault
//! has no Ed25519 keys). The cryptography is the `ed25519-dalek` and `p256`
//! crates'; this module only names keys, reads and writes them as SPKI PEM
//! and picks the right verifier.

use std::fmt;

use ed25519_dalek::pkcs8::{DecodePublicKey, EncodePublicKey};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::LineEnding;
use sha2::{Digest, Sha256};

/// A key that signatures are checked against.
#[derive(Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// The 32 bytes of an Ed25519 public key.
    Ed25519([u8; 32]),
    /// A P-256 point in SEC1 encoding (kiln writes it uncompressed, 65 bytes).
    EcdsaP256(Vec<u8>),
}

/// A key that cannot be read or used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(pub String);

impl PublicKey {
    /// `ed25519:<sha256 of the 32 key bytes>` or `ecdsa-p256:<sha256 of the
    /// uncompressed SEC1 point>`, lowercase hex. The DSSE `keyid` kiln writes:
    /// a hint for choosing a key, never a reason to trust one.
    pub fn key_id(&self) -> String {
        match self {
            PublicKey::Ed25519(bytes) => format!("ed25519:{}", hex::encode(Sha256::digest(bytes))),
            PublicKey::EcdsaP256(sec1) => {
                // The same point has two SEC1 spellings; the id is of the uncompressed one.
                let point = p256::PublicKey::from_sec1_bytes(sec1)
                    .map(|k| k.to_encoded_point(false).as_bytes().to_vec())
                    .unwrap_or_else(|_| sec1.clone());
                format!("ecdsa-p256:{}", hex::encode(Sha256::digest(point)))
            }
        }
    }

    /// The algorithm, for messages.
    pub fn algorithm(&self) -> &'static str {
        match self {
            PublicKey::Ed25519(_) => "Ed25519",
            PublicKey::EcdsaP256(_) => "ECDSA P-256",
        }
    }

    /// Whether `signature` is this key's signature of `message`. Ed25519 is
    /// checked with `verify_strict` (no weak keys, no malleable signatures);
    /// ECDSA P-256 hashes `message` with SHA-256 and takes the signature as
    /// the raw 64 bytes r‖s, as Key Vault's ES256 and DSSE's test vector give it.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), KeyError> {
        match self {
            PublicKey::Ed25519(bytes) => {
                let key = ed25519_dalek::VerifyingKey::from_bytes(bytes)
                    .map_err(|e| KeyError(format!("not an Ed25519 public key: {e}")))?;
                let sig = ed25519_dalek::Signature::from_slice(signature).map_err(|_| {
                    KeyError(format!(
                        "an Ed25519 signature is 64 bytes, this one is {}",
                        signature.len()
                    ))
                })?;
                key.verify_strict(message, &sig)
                    .map_err(|_| KeyError("the Ed25519 signature does not verify".into()))
            }
            PublicKey::EcdsaP256(sec1) => {
                use p256::ecdsa::signature::Verifier;
                let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(sec1)
                    .map_err(|_| KeyError("not a P-256 public key".into()))?;
                let sig = p256::ecdsa::Signature::from_slice(signature).map_err(|_| {
                    KeyError(format!(
                        "an ES256 signature is 64 bytes r||s, this one is {} bytes",
                        signature.len()
                    ))
                })?;
                key.verify(message, &sig)
                    .map_err(|_| KeyError("the ECDSA P-256 signature does not verify".into()))
            }
        }
    }

    /// SubjectPublicKeyInfo PEM (`-----BEGIN PUBLIC KEY-----`), as
    /// `openssl pkey -pubin` reads it.
    pub fn to_pem(&self) -> Result<String, KeyError> {
        match self {
            PublicKey::Ed25519(bytes) => ed25519_dalek::VerifyingKey::from_bytes(bytes)
                .map_err(|e| KeyError(format!("not an Ed25519 public key: {e}")))?
                .to_public_key_pem(LineEnding::LF)
                .map_err(|e| KeyError(format!("cannot write the Ed25519 key as PEM: {e}"))),
            PublicKey::EcdsaP256(sec1) => p256::PublicKey::from_sec1_bytes(sec1)
                .map_err(|_| KeyError("not a P-256 public key".into()))?
                .to_public_key_pem(LineEnding::LF)
                .map_err(|e| KeyError(format!("cannot write the P-256 key as PEM: {e}"))),
        }
    }

    /// Reads an SPKI PEM public key: Ed25519 or P-256, by its algorithm OID.
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        if let Ok(k) = ed25519_dalek::VerifyingKey::from_public_key_pem(pem) {
            return Ok(PublicKey::Ed25519(k.to_bytes()));
        }
        if let Ok(k) = p256::PublicKey::from_public_key_pem(pem) {
            return Ok(PublicKey::EcdsaP256(
                k.to_encoded_point(false).as_bytes().to_vec(),
            ));
        }
        Err(KeyError(
            "expected a `-----BEGIN PUBLIC KEY-----` PEM (SubjectPublicKeyInfo) of an Ed25519 or P-256 key".into(),
        ))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.key_id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ed25519() -> ed25519_dalek::SigningKey {
        ed25519_dalek::SigningKey::from_bytes(&[7u8; 32])
    }

    fn p256_key() -> p256::ecdsa::SigningKey {
        p256::ecdsa::SigningKey::from_slice(&[9u8; 32]).unwrap()
    }

    fn p256_public(k: &p256::ecdsa::SigningKey) -> PublicKey {
        PublicKey::EcdsaP256(
            k.verifying_key()
                .to_encoded_point(false)
                .as_bytes()
                .to_vec(),
        )
    }

    #[test]
    fn key_ids_name_the_algorithm_and_hash_the_key_bytes() {
        let ed = PublicKey::Ed25519(ed25519().verifying_key().to_bytes());
        let id = ed.key_id();
        assert!(
            id.starts_with("ed25519:") && id.len() == "ed25519:".len() + 64,
            "{id}"
        );
        assert_eq!(
            id,
            format!(
                "ed25519:{}",
                hex::encode(Sha256::digest(ed25519().verifying_key().to_bytes()))
            )
        );
        let k = p256_key();
        let uncompressed = p256_public(&k);
        let compressed =
            PublicKey::EcdsaP256(k.verifying_key().to_encoded_point(true).as_bytes().to_vec());
        assert!(uncompressed.key_id().starts_with("ecdsa-p256:"));
        assert_eq!(uncompressed.key_id(), compressed.key_id());
        assert_ne!(uncompressed.key_id(), ed.key_id());
    }

    #[test]
    fn both_kinds_of_key_round_trip_through_spki_pem() {
        for key in [
            PublicKey::Ed25519(ed25519().verifying_key().to_bytes()),
            p256_public(&p256_key()),
        ] {
            let pem = key.to_pem().unwrap();
            assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{pem}");
            assert_eq!(PublicKey::from_pem(&pem).unwrap(), key);
        }
        let e = PublicKey::from_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
            .unwrap_err();
        assert!(e.0.contains("SubjectPublicKeyInfo"), "{e}");
    }

    #[test]
    fn each_algorithm_accepts_its_own_signatures_only() {
        use ed25519_dalek::Signer as _;
        let msg = b"DSSEv1 2 hi 2 yo";
        let ed = PublicKey::Ed25519(ed25519().verifying_key().to_bytes());
        let ed_sig = ed25519().sign(msg).to_bytes();
        assert_eq!(ed.verify(msg, &ed_sig), Ok(()));
        assert!(ed.verify(b"other", &ed_sig).is_err());
        let k = p256_key();
        let ec = p256_public(&k);
        let ec_sig: p256::ecdsa::Signature = k.sign(msg);
        assert_eq!(ec.verify(msg, &ec_sig.to_bytes()), Ok(()));
        assert!(ec.verify(msg, &ed_sig).is_err());
        let e = ec.verify(msg, &[0u8; 10]).unwrap_err();
        assert!(e.0.contains("64 bytes"), "{e}");
    }

    #[test]
    fn a_key_prints_as_its_id() {
        let ed = PublicKey::Ed25519(ed25519().verifying_key().to_bytes());
        assert_eq!(format!("{ed:?}"), format!("PublicKey({})", ed.key_id()));
    }
}
