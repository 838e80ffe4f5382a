//! The DSSE envelope a provenance statement travels in
//! (<https://github.com/secure-systems-lab/dsse>, `envelope.md` and
//! `protocol.md`): the payload base64, its type, and signatures over the
//! pre-authentication encoding (PAE) of both, so that neither the payload
//! nor its type can be changed under a signature.
//!
//! Verification follows the protocol's order: a signature from a trusted
//! key first, then the payload type, then parsing. `keyid` only narrows the
//! keys tried; trust comes from the caller's list of keys alone.

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use serde::{Deserialize, Serialize};

pub use super::keys::PublicKey;
use super::provenance::Statement;
pub use super::provenance::{check_subjects, SubjectMismatch};

/// The payload type of an in-toto statement.
pub const IN_TOTO_PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";

/// `PAE(type, body) = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`,
/// lengths in ASCII decimal bytes. What is signed, never what is sent.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload_type.len() + payload.len() + 32);
    out.extend_from_slice(
        format!(
            "DSSEv1 {} {payload_type} {} ",
            payload_type.len(),
            payload.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(payload);
    out
}

/// The JSON envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    /// Base64 of the serialized statement.
    pub payload: String,
    pub payload_type: String,
    pub signatures: Vec<Signature>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// An unauthenticated hint: [`PublicKey::key_id`] of the signer's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyid: Option<String>,
    /// Base64 of the signature over [`pae`].
    pub sig: String,
}

/// Why an envelope was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// A field is not base64 (standard and URL-safe are both read).
    #[error("{field}: not base64: {reason}")]
    Undecodable { field: String, reason: String },
    /// No signature verifies with any trusted key: signed by some other key,
    /// or no signatures at all.
    #[error("no signature is from a trusted key (trusted: {}; the envelope names: {})", list(.trusted), list(.keyids))]
    NoTrustedSignature {
        trusted: Vec<String>,
        keyids: Vec<String>,
    },
    /// A signature names a trusted key and does not verify with it: the
    /// payload, its type or the signature changed after signing.
    #[error("signature {index} names trusted key {keyid} but does not verify with it: the envelope changed after signing ({reason})")]
    BadSignature {
        index: usize,
        keyid: String,
        reason: String,
    },
    /// Signed by a trusted key, but not an in-toto payload.
    #[error("payloadType: expected `{IN_TOTO_PAYLOAD_TYPE}`, got `{found}`")]
    WrongPayloadType { found: String },
    /// Signed and typed right, but not a statement kiln reads.
    #[error("payload: not an in-toto Statement v1 with SLSA provenance v1: {reason}")]
    NotAStatement { reason: String },
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_string()
    } else {
        items.join(", ")
    }
}

/// Reads standard or URL-safe base64, padded or not, as DSSE requires.
fn decode_base64(field: &str, text: &str) -> Result<Vec<u8>, VerifyError> {
    let config =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    let standard = GeneralPurpose::new(&alphabet::STANDARD, config);
    let url_safe = GeneralPurpose::new(&alphabet::URL_SAFE, config);
    standard
        .decode(text)
        .or_else(|_| url_safe.decode(text))
        .map_err(|e| VerifyError::Undecodable {
            field: field.to_string(),
            reason: e.to_string(),
        })
}

impl Envelope {
    /// An envelope with one signature (payload and signature in standard base64).
    pub fn new(payload_type: &str, payload: &[u8], keyid: &str, signature: &[u8]) -> Self {
        let b64 = base64::engine::general_purpose::STANDARD;
        Self {
            payload: b64.encode(payload),
            payload_type: payload_type.to_string(),
            signatures: vec![Signature {
                keyid: Some(keyid.to_string()),
                sig: b64.encode(signature),
            }],
        }
    }

    /// The serialized body.
    pub fn payload_bytes(&self) -> Result<Vec<u8>, VerifyError> {
        decode_base64("payload", &self.payload)
    }

    /// The statement inside, *unverified*: for showing what an envelope
    /// claims. Only [`verify_envelope`] says it can be trusted.
    pub fn statement(&self) -> Result<Statement, VerifyError> {
        let body = self.payload_bytes()?;
        let statement: Statement =
            serde_json::from_slice(&body).map_err(|e| VerifyError::NotAStatement {
                reason: e.to_string(),
            })?;
        statement
            .check_types()
            .map_err(|reason| VerifyError::NotAStatement { reason })?;
        Ok(statement)
    }
}

/// The statement of `env` when at least one of its signatures verifies with
/// one of the `trusted` keys (DSSE's (1, n) rule), its payload type is
/// in-toto and its payload a SLSA v1 provenance statement.
pub fn verify_envelope(env: &Envelope, trusted: &[PublicKey]) -> Result<Statement, VerifyError> {
    verify_envelope_with_key(env, trusted).map(|(statement, _)| statement)
}

/// [`verify_envelope`], also saying which trusted key (its key id) verified
/// it: not necessarily the first signature's.
pub fn verify_envelope_with_key(
    env: &Envelope,
    trusted: &[PublicKey],
) -> Result<(Statement, String), VerifyError> {
    let body = env.payload_bytes()?;
    let message = pae(&env.payload_type, &body);
    // Why nothing verified, most telling first: a trusted key's signature
    // that does not verify, then one that does not even decode.
    let mut bad = None;
    let mut undecodable = None;
    let mut accepted = None;
    for (index, s) in env.signatures.iter().enumerate() {
        // keyid narrows the keys tried; an unknown or absent one tries them all.
        let named: Vec<&PublicKey> = trusted
            .iter()
            .filter(|k| s.keyid.as_deref() == Some(k.key_id().as_str()))
            .collect();
        // A signature that does not decode is one that does not verify: a
        // later one may still (the (1, n) rule), so it is noted, not fatal,
        // and only when it could have been a trusted key's.
        let sig = match decode_base64(&format!("signatures[{index}].sig"), &s.sig) {
            Ok(sig) => sig,
            Err(e) => {
                if s.keyid.is_none() || !named.is_empty() {
                    undecodable.get_or_insert(e);
                }
                continue;
            }
        };
        let candidates: Vec<&PublicKey> = if named.is_empty() {
            trusted.iter().collect()
        } else {
            named.clone()
        };
        let mut last_error = None;
        for key in candidates {
            match key.verify(&message, &sig) {
                Ok(()) => {
                    accepted = Some(key.key_id());
                    break;
                }
                Err(e) => last_error = Some(e),
            }
        }
        if accepted.is_some() {
            break;
        }
        if let (Some(key), None) = (named.first(), &bad) {
            bad = Some(VerifyError::BadSignature {
                index,
                keyid: key.key_id(),
                reason: last_error.map(|e| e.0).unwrap_or_default(),
            });
        }
    }
    let Some(key_id) = accepted else {
        return Err(bad
            .or(undecodable)
            .unwrap_or_else(|| VerifyError::NoTrustedSignature {
                trusted: trusted.iter().map(PublicKey::key_id).collect(),
                keyids: env
                    .signatures
                    .iter()
                    .map(|s| s.keyid.clone().unwrap_or_else(|| "(no keyid)".into()))
                    .collect(),
            }));
    };
    if env.payload_type != IN_TOTO_PAYLOAD_TYPE {
        return Err(VerifyError::WrongPayloadType {
            found: env.payload_type.clone(),
        });
    }
    Ok((env.statement()?, key_id))
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::Signer as _;

    use super::*;
    use crate::domain::evidence::provenance::image_provenance;
    use crate::domain::evidence::provenance::tests::input;

    fn ed25519_key(seed: u8) -> (ed25519_dalek::SigningKey, PublicKey) {
        let k = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
        let p = PublicKey::Ed25519(k.verifying_key().to_bytes());
        (k, p)
    }

    fn p256_key(seed: u8) -> (p256::ecdsa::SigningKey, PublicKey) {
        let k = p256::ecdsa::SigningKey::from_slice(&[seed; 32]).unwrap();
        let p = PublicKey::EcdsaP256(
            k.verifying_key()
                .to_encoded_point(false)
                .as_bytes()
                .to_vec(),
        );
        (k, p)
    }

    /// An envelope of the test statement, signed by `sign` as key `public`.
    fn envelope(public: &PublicKey, sign: impl Fn(&[u8]) -> Vec<u8>) -> Envelope {
        let payload = serde_json::to_vec(&image_provenance(&input())).unwrap();
        let sig = sign(&pae(IN_TOTO_PAYLOAD_TYPE, &payload));
        Envelope::new(IN_TOTO_PAYLOAD_TYPE, &payload, &public.key_id(), &sig)
    }

    fn signed_by_both() -> Vec<(Envelope, PublicKey)> {
        let (ed, ed_pub) = ed25519_key(1);
        let (ec, ec_pub) = p256_key(2);
        vec![
            (
                envelope(&ed_pub, |m| ed.sign(m).to_bytes().to_vec()),
                ed_pub,
            ),
            (
                envelope(&ec_pub, |m| {
                    let s: p256::ecdsa::Signature = ec.sign(m);
                    s.to_bytes().to_vec()
                }),
                ec_pub,
            ),
        ]
    }

    #[test]
    fn the_pae_of_the_specs_example() {
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
        assert_eq!(pae("", b""), b"DSSEv1 0  0 ".to_vec());
    }

    #[test]
    fn the_specs_test_vector_verifies_and_rfc6979_signing_reproduces_it() {
        // protocol.md "Test Vectors": the key's X, Y and d in hex.
        let x = hex::decode("67cd390f77aa359cb08c2235f652270493a9ed832b0abcc01f70954c0390d238")
            .unwrap();
        let y = hex::decode("0c782bd54e269125a44f4433aff1432ce94e12bca73aa67ac80cea12608ddf74")
            .unwrap();
        let d = hex::decode("d73ec437fd6346e3619c5ebfdfff0f6916804955ad32ac9ac492b0ede1f6ffb7")
            .unwrap();
        let spec: Envelope = serde_json::from_str(
            r#"{"payload": "aGVsbG8gd29ybGQ=",
                "payloadType": "http://example.com/HelloWorld",
                "signatures": [{"sig": "A3JqsQGtVsJ2O2xqrI5IcnXip5GToJ3F+FnZ+O88SjtR6rDAajabZKciJTfUiHqJPcIAriEGAHTVeCUjW2JIZA=="}]}"#,
        )
        .unwrap();
        let key = PublicKey::EcdsaP256([&[4u8][..], &x, &y].concat());
        // Signed by a trusted key; rejected only for not being in-toto.
        assert_eq!(
            verify_envelope(&spec, std::slice::from_ref(&key)),
            Err(VerifyError::WrongPayloadType {
                found: "http://example.com/HelloWorld".into()
            })
        );
        let signing = p256::ecdsa::SigningKey::from_slice(&d).unwrap();
        let ours: p256::ecdsa::Signature =
            signing.sign(&pae("http://example.com/HelloWorld", b"hello world"));
        assert_eq!(
            base64::engine::general_purpose::STANDARD.encode(ours.to_bytes()),
            spec.signatures[0].sig
        );
    }

    #[test]
    fn a_signed_statement_verifies_with_its_key_for_both_algorithms() {
        for (env, key) in signed_by_both() {
            let statement = verify_envelope(&env, std::slice::from_ref(&key)).unwrap();
            assert_eq!(statement, image_provenance(&input()), "{key:?}");
            assert_eq!(
                env.signatures[0].keyid.as_deref(),
                Some(key.key_id().as_str())
            );
            // The JSON envelope reads back the same.
            let text = serde_json::to_string(&env).unwrap();
            assert!(text.starts_with(r#"{"payload":"#), "{text}");
            let back: Envelope = serde_json::from_str(&text).unwrap();
            assert!(verify_envelope(&back, &[key]).is_ok());
        }
    }

    #[test]
    fn one_flipped_payload_byte_fails_as_a_bad_signature() {
        for (mut env, key) in signed_by_both() {
            let mut body = env.payload_bytes().unwrap();
            let i = body.len() / 2;
            body[i] ^= 0x01;
            env.payload = base64::engine::general_purpose::STANDARD.encode(&body);
            let e = verify_envelope(&env, std::slice::from_ref(&key)).unwrap_err();
            assert!(
                matches!(&e, VerifyError::BadSignature { index: 0, keyid, .. } if *keyid == key.key_id()),
                "{e}"
            );
            assert!(e.to_string().contains("changed after signing"), "{e}");
        }
    }

    #[test]
    fn one_flipped_signature_byte_fails() {
        for (mut env, key) in signed_by_both() {
            let mut sig = decode_base64("sig", &env.signatures[0].sig).unwrap();
            sig[5] ^= 0x80;
            env.signatures[0].sig = base64::engine::general_purpose::STANDARD.encode(&sig);
            let e = verify_envelope(&env, &[key]).unwrap_err();
            assert!(matches!(e, VerifyError::BadSignature { .. }), "{e}");
        }
    }

    #[test]
    fn a_changed_payload_type_breaks_the_signature_too() {
        for (mut env, key) in signed_by_both() {
            env.payload_type = "application/json".into();
            let e = verify_envelope(&env, &[key]).unwrap_err();
            assert!(matches!(e, VerifyError::BadSignature { .. }), "{e}");
        }
    }

    #[test]
    fn an_untrusted_key_fails_and_the_error_names_both_sides() {
        let (_, stranger) = ed25519_key(9);
        let (_, other_stranger) = p256_key(8);
        for (env, key) in signed_by_both() {
            let e = verify_envelope(&env, &[stranger.clone(), other_stranger.clone()]).unwrap_err();
            match &e {
                VerifyError::NoTrustedSignature { trusted, keyids } => {
                    assert_eq!(trusted, &vec![stranger.key_id(), other_stranger.key_id()]);
                    assert_eq!(keyids, &vec![key.key_id()]);
                }
                other => panic!("{other}"),
            }
            assert!(verify_envelope(&env, &[]).is_err());
        }
    }

    #[test]
    fn keyid_is_only_a_hint_a_wrong_or_missing_one_still_finds_the_key() {
        for (mut env, key) in signed_by_both() {
            env.signatures[0].keyid = Some("ed25519:not-this-one".into());
            assert!(verify_envelope(&env, std::slice::from_ref(&key)).is_ok());
            env.signatures[0].keyid = None;
            assert!(verify_envelope(&env, std::slice::from_ref(&key)).is_ok());
        }
    }

    #[test]
    fn one_good_signature_among_others_is_enough() {
        let both = signed_by_both();
        let (ed_env, ed_key) = &both[0];
        let mut env = ed_env.clone();
        env.signatures.insert(
            0,
            Signature {
                keyid: None,
                sig: base64::engine::general_purpose::STANDARD.encode([0u8; 64]),
            },
        );
        assert!(verify_envelope(&env, std::slice::from_ref(ed_key)).is_ok());
        // A first signature that is not even base64 does not stop the search,
        // and the key reported is the one that verified, not the first's.
        env.signatures.insert(
            0,
            Signature {
                keyid: Some("p256:someone-else".into()),
                sig: "not base64 !".into(),
            },
        );
        let (_, by) = verify_envelope_with_key(&env, std::slice::from_ref(ed_key)).unwrap();
        assert_eq!(by, ed_key.key_id());
        env.signatures.truncate(1);
        // Alone, a stranger's undecodable signature is just not a trusted one…
        assert!(matches!(
            verify_envelope(&env, std::slice::from_ref(ed_key)),
            Err(VerifyError::NoTrustedSignature { .. })
        ));
        // …and one with no keyid that does not decode is named as such.
        env.signatures[0].keyid = None;
        assert!(matches!(
            verify_envelope(&env, std::slice::from_ref(ed_key)),
            Err(VerifyError::Undecodable { .. })
        ));
        // A trusted key's bad signature outranks an undecodable one before it.
        let mut tampered = ed_env.clone();
        tampered.payload = base64::engine::general_purpose::STANDARD.encode(b"{}");
        tampered.signatures.insert(0, env.signatures[0].clone());
        assert!(matches!(
            verify_envelope(&tampered, std::slice::from_ref(ed_key)),
            Err(VerifyError::BadSignature { .. })
        ));
        env.signatures.clear();
        assert!(matches!(
            verify_envelope(&env, std::slice::from_ref(ed_key)),
            Err(VerifyError::NoTrustedSignature { .. })
        ));
    }

    #[test]
    fn url_safe_unpadded_base64_is_read_too() {
        for (mut env, key) in signed_by_both() {
            let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            env.payload = url.encode(env.payload_bytes().unwrap());
            env.signatures[0].sig =
                url.encode(decode_base64("sig", &env.signatures[0].sig).unwrap());
            assert!(verify_envelope(&env, &[key]).is_ok());
        }
        let e = decode_base64("payload", "not base64 !").unwrap_err();
        assert!(e.to_string().starts_with("payload: not base64"), "{e}");
    }

    #[test]
    fn a_signed_payload_that_is_not_a_statement_says_so() {
        let (k, key) = ed25519_key(3);
        let body = br#"{"_type": "https://in-toto.io/Statement/v1", "subject": []}"#;
        let sig = k.sign(&pae(IN_TOTO_PAYLOAD_TYPE, body)).to_bytes();
        let env = Envelope::new(IN_TOTO_PAYLOAD_TYPE, body, &key.key_id(), &sig);
        let e = verify_envelope(&env, &[key]).unwrap_err();
        assert!(matches!(e, VerifyError::NotAStatement { .. }), "{e}");
        assert!(e.to_string().contains("predicateType"), "{e}");
    }
}
