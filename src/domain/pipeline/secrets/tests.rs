//! The secret scan: each kind found at its path, nothing of the secret in
//! the message, real templates clean, and the allow list.

use super::super::Pipeline;
use super::*;
use serde_json::json;

/// Fake credentials are made at run time, so that no file of the repository
/// holds one a scanner (ours or anyone's) would flag.
fn b64(len: usize, seed: u8) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    (0..len)
        .map(|i| A[(i * 7 + seed as usize * 13 + i * i) % 64] as char)
        .collect()
}

fn account_key() -> String {
    format!("{}==", b64(86, 1))
}

fn sas_query() -> String {
    format!(
        "sv=2022-11-02&ss=b&srt=o&sp=r&se=2027-01-01T00:00:00Z&sig={}%3D",
        b64(43, 2).replace('+', "%2B").replace('/', "%2F")
    )
}

fn jwt() -> String {
    format!(
        "eyJhbGciOiJSUzI1NiJ9.eyJ{}.{}",
        b64(40, 3).replace(['+', '/'], "x"),
        b64(40, 4).replace(['+', '/'], "y")
    )
}

/// (the string, the secret part of it, the kind it is)
fn secrets() -> Vec<(String, String, SecretKind)> {
    let key = account_key();
    let sas = sas_query();
    let token = jwt();
    let bearer = b64(48, 5).replace(['+', '/'], "Q");
    vec![
        (
            format!("https://acct.blob.core.windows.net/scripts/setup.sh?{sas}"),
            sas.clone(),
            SecretKind::SasToken,
        ),
        (
            format!("curl -fsSL 'https://acct.blob.core.windows.net/c/app.tgz?{sas}' | tar xz"),
            sas.clone(),
            SecretKind::SasToken,
        ),
        (
            format!("az storage blob download --account-key {key} -c c -n n -f f"),
            key.clone(),
            SecretKind::StorageAccountKey,
        ),
        (
            format!("export STORAGE_KEY={key}"),
            key.clone(),
            SecretKind::StorageAccountKey,
        ),
        (
            format!("echo 'AccountKey={key}' > /etc/app.conf"),
            key.clone(),
            SecretKind::StorageAccountKey,
        ),
        (
            format!("DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={key};EndpointSuffix=core.windows.net"),
            key.clone(),
            SecretKind::ConnectionString,
        ),
        (
            format!("Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=send;SharedAccessKey={}=", b64(43, 6)),
            b64(43, 6),
            SecretKind::ConnectionString,
        ),
        (
            "-----BEGIN OPENSSH PRIVATE KEY-----".into(),
            "OPENSSH PRIVATE KEY".into(),
            SecretKind::PrivateKey,
        ),
        (
            format!("printf '%s' '-----BEGIN RSA PRIVATE KEY-----\\n{}' > /root/.ssh/id_rsa", b64(64, 7)),
            b64(64, 7),
            SecretKind::PrivateKey,
        ),
        (
            format!("curl -H 'Authorization: Bearer {bearer}' https://api.example.com/x"),
            bearer.clone(),
            SecretKind::BearerToken,
        ),
        (
            format!("TOKEN={token} ./register.sh"),
            token.clone(),
            SecretKind::BearerToken,
        ),
        (
            "mysql -u root --password hunter2-Corp!".into(),
            "hunter2-Corp!".into(),
            SecretKind::Password,
        ),
        (
            "echo 'DB_PASSWORD=Winter2026x' >> /etc/environment".into(),
            "Winter2026x".into(),
            SecretKind::Password,
        ),
        (
            "docker login -u ci --password=S3cr3t.value registry.example.com".into(),
            "S3cr3t.value".into(),
            SecretKind::Password,
        ),
    ]
}

#[test]
fn each_kind_is_found_at_its_path() {
    for (text, _, kind) in secrets() {
        let doc = json!({"properties": {"customize": [
            {"type": "Shell", "inline": ["echo start"]},
            {"type": "Shell", "inline": ["true", text]}
        ]}});
        let hits = scan(doc.as_object().unwrap(), None);
        assert_eq!(
            hits,
            vec![SecretHit {
                path: "properties.customize[1].inline[1]".into(),
                kind
            }],
            "{text}"
        );
    }
}

#[test]
fn the_message_names_path_and_kind_and_holds_no_part_of_the_secret() {
    for (text, secret, kind) in secrets() {
        let doc = json!({"properties": {"customize": [{"type": "File", "sourceUri": text, "destination": "/tmp/x"}]}});
        let errors = refuse(&scan(doc.as_object().unwrap(), None), &[]);
        assert_eq!(errors.len(), 1, "{text}: {errors:?}");
        let shown = errors[0].to_string();
        assert!(
            shown.starts_with("properties.customize[0].sourceUri: "),
            "{shown}"
        );
        assert!(shown.contains(&format!("`{}`", kind.name())), "{shown}");
        // No six characters in a row of the secret appear (the kind's own
        // words excepted: "PRIVATE KEY" is the kind, not the key).
        let chars: Vec<char> = secret.chars().collect();
        for w in chars.windows(6) {
            let w: String = w.iter().collect();
            if kind == SecretKind::PrivateKey && "OPENSSH PRIVATE KEY".contains(&w) {
                continue;
            }
            assert!(!shown.contains(&w), "`{w}` of the secret in: {shown}");
        }
    }
}

#[test]
fn references_and_prose_are_not_secrets() {
    let clean = [
        "curl -fsSL \"https://acct.blob.core.windows.net/c/app.tgz?$SAS\" | tar xz",
        "curl \"https://acct.blob.core.windows.net/c/x?sv=2022-11-02&sig=${SIG}\"",
        "az storage blob download --auth-mode login --account-name acct -c c -n setup.sh -f /tmp/setup.sh",
        "echo \"$PASSWORD\" | docker login -u ci --password-stdin registry.example.com",
        "mysql -u root --password \"$DB_PASSWORD\"",
        "export DB_PASSWORD=$(cat /run/secrets/db)",
        "PASSWORD=${PASSWORD:?set it}",
        "echo 'builder ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/builder",
        "the build user has passwordless sudo",
        "passwd -l root",
        "curl -H \"Authorization: Bearer $(az account get-access-token --query accessToken -o tsv)\" https://management.azure.com/",
        "curl -H 'Authorization: Bearer $TOKEN' https://x",
        "ssh-keygen -A",
        "-----BEGIN PUBLIC KEY-----",
        "-----BEGIN CERTIFICATE-----",
        "echo 3f786850e387550fdab836ed7e6dc881de23001b  app.tgz | sha1sum -c",
        "sha256sum -c <<< 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855  f'",
        "sudo apt-get install -y curl jq unzip",
        "https://example.com/releases/app.tar.gz?version=1.2.3&arch=amd64",
        "https://acct.blob.core.windows.net/scripts/setup.sh",
        "Endpoint=sb://ns.servicebus.windows.net/",
        "password=",
        "password_length=16",
        // Computed at run time in PowerShell and in the shell.
        "$password = ConvertTo-SecureString $env:ADMIN_PW -AsPlainText -Force",
        "$adminPassword = (Get-AzKeyVaultSecret -VaultName kv -Name admin -AsPlainText)",
        "$Password = Read-Host -AsSecureString",
        "DB_PASSWORD=`cat /run/secrets/db`",
    ];
    for text in clean {
        let doc = json!({"properties": {"customize": [{"type": "Shell", "inline": [text]}]}});
        assert_eq!(scan(doc.as_object().unwrap(), None), vec![], "{text}");
    }
    // Settings about passwords are not passwords.
    let doc = json!({"properties": {"vmProfile": {"disablePasswordAuthentication": "true", "passwordLength": "16", "adminPassword": "false"}}});
    assert_eq!(scan(doc.as_object().unwrap(), None), vec![]);
    // A base64 blob of the key's length with nothing key-like near it
    // (a checksum, an image hash) is not reported.
    let blob = format!("echo {} | base64 -d > /etc/motd", account_key());
    let doc = json!({"properties": {"customize": [{"type": "Shell", "inline": [blob]}]}});
    assert_eq!(scan(doc.as_object().unwrap(), None), vec![]);
}

#[test]
fn the_shipped_pipelines_and_fixtures_scan_clean() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["pipelines", "tests/fixtures", "tests/fixtures/events"] {
        for e in std::fs::read_dir(root.join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "json") {
                files.push(p);
            }
        }
    }
    assert!(files.len() >= 9, "{files:?}");
    for f in files {
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
        let hits = match &doc {
            Value::Object(m) => scan(m, None),
            Value::Array(items) => items
                .iter()
                .filter_map(Value::as_object)
                .flat_map(|m| scan(m, None))
                .collect(),
            other => panic!("{}: {other}", f.display()),
        };
        assert_eq!(hits, vec![], "{}", f.display());
    }
}

#[test]
fn keys_and_the_kiln_section_are_scanned_too() {
    let key = account_key();
    let doc = json!({
        "tags": {"owner": "platform", format!("AccountKey={key}"): "x"},
        "properties": {"vmProfile": {"adminPassword": "Passw0rd-literal", "otherPassword": "$REF"}}
    });
    let kiln = json!({
        "build": {"bootTest": {"check": format!("curl -H 'Authorization: Bearer {}' http://x", b64(30, 9).replace(['+', '/'], "z"))}},
        "allowSecrets": [{"path": "x", "kind": "password", "reason": "not scanned: the list itself"}]
    });
    let hits = scan(doc.as_object().unwrap(), Some(&kiln));
    let got: Vec<(&str, SecretKind)> = hits.iter().map(|h| (h.path.as_str(), h.kind)).collect();
    assert_eq!(
        got,
        vec![
            ("tags", SecretKind::StorageAccountKey),
            ("properties.vmProfile.adminPassword", SecretKind::Password),
            ("kiln.build.bootTest.check", SecretKind::BearerToken),
        ]
    );
    // A key with characters beyond a plain name is quoted in the path.
    let doc = json!({"tags": {"build.note": "--password=literal1"}});
    assert_eq!(
        scan(doc.as_object().unwrap(), None)[0].path,
        r#"tags["build.note"]"#
    );
}

fn tiny_with(step: Value, kiln: Value) -> String {
    json!({
        "location": "westeurope",
        "identity": {"type": "UserAssigned", "userAssignedIdentities": {"/subscriptions/s/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/aib": {}}},
        "properties": {
            "source": {"type": "PlatformImage", "publisher": "kiln", "offer": "busybox", "sku": "1", "version": "latest"},
            "customize": [{"type": "Shell", "inline": ["true"]}, step],
            "distribute": [{"type": "VHD", "runOutputName": "vhd"}]
        },
        "kiln": kiln
    })
    .to_string()
}

#[test]
fn a_pipeline_with_a_sas_url_is_refused_and_an_allowance_admits_it() {
    let url = format!(
        "https://acct.blob.core.windows.net/s/setup.sh?{}",
        sas_query()
    );
    let step = json!({"type": "Shell", "scriptUri": url});
    let errs = Pipeline::parse("tiny", &tiny_with(step.clone(), json!({}))).unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].path, "properties.customize[1].scriptUri");
    assert!(errs[0].message.contains("`sas-token`"), "{}", errs[0]);

    let allowed = |path: &str, kind: &str, reason: &str| json!({"allowSecrets": [{"path": path, "kind": kind, "reason": reason}]});
    let ok = tiny_with(
        step.clone(),
        allowed(
            "$.properties.customize[1].scriptUri",
            "sas-token",
            "read-only SAS on a public script, expires 2027-01-01",
        ),
    );
    let p = Pipeline::parse("tiny", &ok).unwrap();
    assert_eq!(p.kiln.allow_secrets.len(), 1);

    // The wrong kind covers nothing: the secret and the stale entry are both errors.
    let wrong = tiny_with(
        step.clone(),
        allowed("properties.customize[1].scriptUri", "password", "x"),
    );
    let errs = Pipeline::parse("tiny", &wrong).unwrap_err();
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        ["properties.customize[1].scriptUri", "kiln.allowSecrets[0]"],
        "{errs:?}"
    );
    assert!(errs[1].message.contains("allows nothing"), "{}", errs[1]);

    // A reason is required.
    let blank = tiny_with(
        step.clone(),
        allowed("properties.customize[1].scriptUri", "sas-token", " "),
    );
    let errs = Pipeline::parse("tiny", &blank).unwrap_err();
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "properties.customize[1].scriptUri",
            "kiln.allowSecrets[0].reason"
        ],
        "{errs:?}"
    );

    // An unknown kind is named by serde, at its path.
    let unknown = tiny_with(
        step,
        allowed("properties.customize[1].scriptUri", "sas", "x"),
    );
    let errs = Pipeline::parse("tiny", &unknown).unwrap_err();
    assert!(
        errs.iter()
            .any(|e| e.path == "kiln.allowSecrets[0].kind" && e.message.contains("sas-token")),
        "{errs:?}"
    );
}

#[test]
fn an_unrelated_kiln_error_keeps_the_allowance() {
    let url = format!("https://acct.blob.core.windows.net/s/a?{}", sas_query());
    let step = json!({"type": "File", "sourceUri": url, "destination": "/tmp/a"});
    let kiln = json!({
        "biuld": {},
        "allowSecrets": [{"path": "properties.customize[1].sourceUri", "kind": "sas-token", "reason": "r"}]
    });
    let errs = Pipeline::parse("tiny", &tiny_with(step, kiln)).unwrap_err();
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["kiln.biuld"], "{errs:?}");
}

/// A secret in a field of the wrong type is reported by serde, which quotes
/// the value it refused; the message says what kind of value it was instead.
#[test]
fn a_secret_in_a_mistyped_field_is_not_quoted_by_the_type_error() {
    let url = format!(
        "https://acct.blob.core.windows.net/s/setup.sh?{}",
        sas_query()
    );
    // `inline` must be an array; a string is the classic mistake.
    let step = json!({"type": "Shell", "inline": format!("curl -fsSL '{url}' | sh")});
    let errs = Pipeline::parse("tiny", &tiny_with(step, json!({}))).unwrap_err();
    let shown: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    assert!(
        shown
            .iter()
            .any(|e| e.contains("invalid type") && e.contains("(kind `sas-token`, not shown)")),
        "{shown:?}"
    );
    let sig = sas_query();
    let sig = sig.split("sig=").nth(1).unwrap();
    for e in &shown {
        assert!(!e.contains(&sig[..12]), "the signature in: {e}");
    }
    // A value without a secret is still quoted: the message stays useful.
    assert_eq!(
        scrub("invalid type: string \"abc\", expected a sequence"),
        "invalid type: string \"abc\", expected a sequence"
    );
}

/// The patterns that are looked up by their literal first.
fn filtered_patterns() -> [(&'static str, &'static Pattern); 9] {
    [
        ("SAS_SIG", &SAS_SIG),
        ("ACCOUNT_KEY", &ACCOUNT_KEY),
        ("SHARED_ACCESS_KEY", &SHARED_ACCESS_KEY),
        ("KEY_64_BYTES", &KEY_64_BYTES),
        ("PRIVATE_KEY", &PRIVATE_KEY),
        ("BEARER", &BEARER),
        ("JWT", &JWT),
        ("PASSWORD_ASSIGN", &PASSWORD_ASSIGN),
        ("PASSWORD_FLAG", &PASSWORD_FLAG),
    ]
}

proptest::proptest! {
    /// The literal lookup only skips work: a pattern matches a string
    /// exactly when it matches it with the lookup in front. Strings are
    /// made of the patterns' own pieces in any case, with non-ASCII
    /// letters that fold to ASCII ones under Unicode rules.
    #[test]
    fn the_literal_lookup_never_changes_what_a_pattern_finds(
        s in "((?i:sig=|accountkey=|sharedaccesskey=|bearer |password|--password |private key|eyj)|-----BEGIN RSA PRIVATE KEY-----|eyJ|==|[?&; =\"']|[A-Za-z0-9+/]{1,30}|\u{212A}|\u{17F}|\u{130}){0,12}"
    ) {
        let text = Text::new(&s);
        for (name, p) in filtered_patterns() {
            proptest::prop_assert_eq!(p.is_match(&text), p.re.is_match(&s), "{} on {:?}", name, s);
        }
    }
}

/// Credentials are ASCII: a Kelvin sign is not the `k` of `AccountKey=`,
/// nor a long s the `s` of `sig=`.
#[test]
fn case_is_ignored_for_ascii_letters_only() {
    let key = b64(40, 5);
    assert_eq!(
        kinds_in(&format!("ACCOUNTKEY={key}")),
        vec![SecretKind::StorageAccountKey]
    );
    assert!(kinds_in(&format!("Account\u{212A}ey={key}")).is_empty());
    let sig = b64(30, 6).replace(['+', '/'], "x");
    assert_eq!(
        kinds_in(&format!("https://a/b?SV=1&SIG={sig}")),
        vec![SecretKind::SasToken]
    );
    assert!(kinds_in(&format!("https://a/b?sv=1&\u{17F}ig={sig}")).is_empty());
}
