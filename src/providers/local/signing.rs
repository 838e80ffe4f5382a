//! The local provenance signer: an Ed25519 key in a PKCS#8 PEM file.
//!
//! `KILN_SIGNING_KEY` names the key file; without it the key is
//! `<data dir>/keys/provenance.ed25519.pem`, created on first use. The
//! public key is written beside it (`….pub.pem`, SPKI PEM) for
//! `kiln verify` and for anyone who wants to check an envelope with other
//! tools (`openssl pkey -pubin -in provenance.ed25519.pub.pem`).
//!
//! The private key never leaves this module: it is not logged, not shown
//! by `Debug`, and errors name the file, never its content. A key file
//! that group or others may read is refused, as ssh refuses one: a
//! provenance key that others can read proves nothing.
//!
//! Creation is atomic: the key is written to a temporary file (mode 0600)
//! in the key's folder (mode 0700), then linked into place only if no key
//! is there (`renameat2(RENAME_NOREPLACE)` or `link`), and the key in place
//! is read back. Two processes starting at once therefore both end with the
//! one key that won, never with two keys or a half-written one.

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use async_trait::async_trait;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::Signer as _;

use crate::config::Env;
use crate::ports::{ProviderError, PublicKey, Signer};

/// The setting naming the key file.
pub const KEY_SETTING: &str = "KILN_SIGNING_KEY";
/// Where the key lives by default, under the data folder.
pub const DEFAULT_KEY: &str = "keys/provenance.ed25519.pem";

pub struct LocalSigner {
    key: ed25519_dalek::SigningKey,
    key_id: String,
    path: PathBuf,
}

impl fmt::Debug for LocalSigner {
    /// The key id and the file, never the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalSigner")
            .field("key_id", &self.key_id)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// `provenance.ed25519.pem` → `provenance.ed25519.pub.pem`; any other name
/// gets `.pub.pem` in place of its extension.
pub fn public_key_path(key: &Path) -> PathBuf {
    let stem = key
        .file_name()
        .and_then(|n| n.to_str())
        .map(|n| n.strip_suffix(".pem").unwrap_or(n).to_string())
        .unwrap_or_else(|| "provenance".to_string());
    key.with_file_name(format!("{stem}.pub.pem"))
}

impl LocalSigner {
    /// [`PublicKey::key_id`] of the key: the DSSE `keyid` it signs with.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn public(&self) -> PublicKey {
        PublicKey::Ed25519(self.key.verifying_key().to_bytes())
    }

    /// The key `KILN_SIGNING_KEY` names (it must exist: a mistyped path
    /// must not quietly start a new key nobody trusts), or the default key
    /// under `data_dir`, created when missing.
    pub fn from_env(env: &Env, data_dir: &Path) -> anyhow::Result<Self> {
        match env
            .get(KEY_SETTING)
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
        {
            Some(path) => {
                let path = Path::new(path);
                if !path.exists() {
                    bail!("{KEY_SETTING}: no key file at {} (expected an Ed25519 PKCS#8 PEM key; unset {KEY_SETTING} to have kiln create one under the data folder)", path.display());
                }
                Self::open(path)
            }
            None => Self::open_or_create(&data_dir.join(DEFAULT_KEY)),
        }
    }

    /// Reads the key at `path`, creating it (and its folder, mode 0700)
    /// when there is none.
    pub fn open_or_create(path: &Path) -> anyhow::Result<Self> {
        if !path.exists() {
            create(path)?;
        }
        Self::open(path)
    }

    /// Reads an existing key and makes sure its public key is beside it.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let meta = fs::metadata(path)
            .with_context(|| format!("Cannot read the signing key {}", path.display()))?;
        if !meta.is_file() {
            bail!("{}: the signing key is not a regular file", path.display());
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            bail!(
                "{}: the signing key may be read by group or others (mode {mode:03o}); run `chmod 600 {}`",
                path.display(),
                path.display()
            );
        }
        let pem = zeroize::Zeroizing::new(
            fs::read_to_string(path)
                .with_context(|| format!("Cannot read the signing key {}", path.display()))?,
        );
        // The parser's error says what is wrong with the structure, not what the file holds.
        let key = ed25519_dalek::SigningKey::from_pkcs8_pem(&pem).map_err(|e| {
            anyhow::anyhow!(
                "{}: not an Ed25519 private key in PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`): {e}",
                path.display()
            )
        })?;
        let public = PublicKey::Ed25519(key.verifying_key().to_bytes());
        write_public_key(&public_key_path(path), &public)?;
        Ok(Self {
            key_id: public.key_id(),
            key,
            path: path.to_path_buf(),
        })
    }

    pub fn key_path(&self) -> &Path {
        &self.path
    }

    pub fn public_key_path(&self) -> PathBuf {
        public_key_path(&self.path)
    }
}

/// Writes a new key at `path` unless one appears there first.
fn create(path: &Path) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("Cannot create the key folder {}", dir.display()))?;
    }
    let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let pem = key
        .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .map_err(|e| anyhow::anyhow!("Cannot encode a new signing key: {e}"))?;
    // tempfile creates the file 0600 and with O_EXCL.
    let mut tmp = tempfile::Builder::new()
        .prefix(".provenance-key-")
        .tempfile_in(dir)
        .with_context(|| format!("Cannot create a temporary key file in {}", dir.display()))?;
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(0o600))
        .with_context(|| {
            format!(
                "Cannot restrict the temporary key file in {}",
                dir.display()
            )
        })?;
    tmp.write_all(pem.as_bytes())
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("Cannot write the new signing key in {}", dir.display()))?;
    match tmp.persist_noclobber(path) {
        Ok(_) => {
            tracing::info!(key = %path.display(), key_id = %PublicKey::Ed25519(key.verifying_key().to_bytes()).key_id(), "created the provenance signing key");
            Ok(())
        }
        // Another process put its key there first: that one is the key.
        Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(anyhow::anyhow!(
            "Cannot put the new signing key at {}: {}",
            path.display(),
            e.error
        )),
    }
}

/// The public key file, rewritten only when missing or not this key's.
fn write_public_key(path: &Path, key: &PublicKey) -> anyhow::Result<()> {
    let pem = key.to_pem()?;
    if fs::read_to_string(path).ok().as_deref() == Some(pem.as_str()) {
        return Ok(());
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".provenance-pub-")
        .tempfile_in(dir)
        .with_context(|| format!("Cannot write the public key {}", path.display()))?;
    tmp.write_all(pem.as_bytes())
        .and_then(|()| {
            tmp.as_file()
                .set_permissions(fs::Permissions::from_mode(0o644))
        })
        .with_context(|| format!("Cannot write the public key {}", path.display()))?;
    tmp.persist(path).map_err(|e| {
        anyhow::anyhow!(
            "Cannot write the public key {}: {}",
            path.display(),
            e.error
        )
    })?;
    Ok(())
}

#[async_trait]
impl Signer for LocalSigner {
    async fn public_key(&self) -> Result<PublicKey, ProviderError> {
        Ok(self.public())
    }

    async fn sign(&self, message: &[u8]) -> Result<Vec<u8>, ProviderError> {
        Ok(self.key.sign(message).to_bytes().to_vec())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier};

    use super::*;
    use crate::domain::evidence::dsse::verify_envelope;
    use crate::domain::evidence::provenance::{image_provenance, tests::input};
    use crate::ports::sign_statement;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn the_first_use_creates_a_private_key_0600_in_a_0700_folder_and_the_public_key_beside_it() {
        let data = tempfile::tempdir().unwrap();
        let signer = LocalSigner::from_env(&Env::new(), data.path()).unwrap();
        let key = data.path().join("keys/provenance.ed25519.pem");
        assert_eq!(signer.key_path(), key);
        assert_eq!(mode(&key), 0o600);
        assert_eq!(mode(&data.path().join("keys")), 0o700);
        let public = data.path().join("keys/provenance.ed25519.pub.pem");
        assert_eq!(signer.public_key_path(), public);
        let pem = fs::read_to_string(&public).unwrap();
        assert_eq!(PublicKey::from_pem(&pem).unwrap(), signer.public());
        assert!(fs::read_to_string(&key)
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----"));
        // Nothing else is left in the folder.
        let names: Vec<_> = fs::read_dir(data.path().join("keys"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn the_key_is_kept_it_is_read_again_not_replaced() {
        let data = tempfile::tempdir().unwrap();
        let first = LocalSigner::from_env(&Env::new(), data.path()).unwrap();
        let public = first.public_key_path();
        fs::remove_file(&public).unwrap();
        let second = LocalSigner::from_env(&Env::new(), data.path()).unwrap();
        assert_eq!(first.key_id(), second.key_id());
        assert!(public.exists(), "a missing public key is written again");
    }

    #[test]
    fn processes_starting_at_once_end_with_one_key() {
        let data = tempfile::tempdir().unwrap();
        let path = data.path().join("keys/provenance.ed25519.pem");
        let n = 8;
        let barrier = Arc::new(Barrier::new(n));
        let ids: Vec<String> = (0..n)
            .map(|_| {
                let (barrier, path) = (barrier.clone(), path.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    LocalSigner::open_or_create(&path)
                        .unwrap()
                        .key_id()
                        .to_string()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect();
        assert!(ids.iter().all(|id| id == &ids[0]), "{ids:?}");
        let on_disk = LocalSigner::open(&path).unwrap();
        assert_eq!(on_disk.key_id(), ids[0]);
        let left: Vec<_> = fs::read_dir(data.path().join("keys"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left.len(), 2, "no temporary files left: {left:?}");
    }

    #[test]
    fn a_key_others_can_read_is_refused_with_the_file_and_the_fix() {
        let data = tempfile::tempdir().unwrap();
        let signer = LocalSigner::from_env(&Env::new(), data.path()).unwrap();
        let key = signer.key_path().to_path_buf();
        for loose in [0o644, 0o640, 0o604, 0o660] {
            fs::set_permissions(&key, fs::Permissions::from_mode(loose)).unwrap();
            let e = LocalSigner::from_env(&Env::new(), data.path())
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(&key.display().to_string()), "{e}");
            assert!(e.contains(&format!("chmod 600 {}", key.display())), "{e}");
        }
        fs::set_permissions(&key, fs::Permissions::from_mode(0o400)).unwrap();
        assert!(
            LocalSigner::open(&key).is_ok(),
            "read-only for the owner is fine"
        );
    }

    #[test]
    fn kiln_signing_key_names_the_file_and_a_missing_one_is_not_created() {
        let data = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let made = LocalSigner::open_or_create(&elsewhere.path().join("ci.pem")).unwrap();
        assert!(elsewhere.path().join("ci.pub.pem").exists());
        let env: Env = [(
            KEY_SETTING.to_string(),
            made.key_path().display().to_string(),
        )]
        .into();
        let named = LocalSigner::from_env(&env, data.path()).unwrap();
        assert_eq!(named.key_id(), made.key_id());
        assert!(
            !data.path().join("keys").exists(),
            "the default key is not made"
        );

        let missing = elsewhere.path().join("typo.pem");
        let env: Env = [(KEY_SETTING.to_string(), missing.display().to_string())].into();
        let e = LocalSigner::from_env(&env, data.path())
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("KILN_SIGNING_KEY: no key file at") && e.contains("typo.pem"),
            "{e}"
        );
        assert!(!missing.exists());
    }

    #[test]
    fn neither_debug_nor_errors_show_the_key() {
        let data = tempfile::tempdir().unwrap();
        let signer = LocalSigner::from_env(&Env::new(), data.path()).unwrap();
        let pem = fs::read_to_string(signer.key_path()).unwrap();
        let body: String = pem.lines().nth(1).unwrap().to_string();
        let debug = format!("{signer:?}");
        assert!(
            debug.contains(signer.key_id()) && !debug.contains(&body),
            "{debug}"
        );
        let secret = hex::encode(signer.key.to_bytes());
        assert!(!debug.contains(&secret));

        // A damaged key: the error names the file, not what it holds.
        let bad = data.path().join("bad.pem");
        let damaged = pem.replace(&body[..8], "AAAAAAAA");
        fs::write(&bad, &damaged).unwrap();
        fs::set_permissions(&bad, fs::Permissions::from_mode(0o600)).unwrap();
        let e = format!("{:#}", LocalSigner::open(&bad).unwrap_err());
        assert!(e.contains("bad.pem"), "{e}");
        for line in damaged.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!e.contains(line), "{e}");
        }
    }

    #[tokio::test]
    async fn a_statement_signed_locally_verifies_with_the_public_key_file() {
        let data = tempfile::tempdir().unwrap();
        let signer = LocalSigner::from_env(&Env::new(), data.path()).unwrap();
        let statement = image_provenance(&input());
        let env = sign_statement(&signer, &statement).await.unwrap();
        assert_eq!(env.signatures[0].keyid.as_deref(), Some(signer.key_id()));
        let public =
            PublicKey::from_pem(&fs::read_to_string(signer.public_key_path()).unwrap()).unwrap();
        assert_eq!(verify_envelope(&env, &[public]).unwrap(), statement);
    }
}
