//! The fuzz targets: each takes the bytes an outside system could send (or
//! a user could save) and runs them through the code that reads them, as
//! kiln does, asserting that nothing panics and that what comes out keeps
//! the property stated at each target.

use serde_json::Value;

use kiln::app::{FunctionName, Invocation};
use kiln::domain::events_in::{self, Inbound, InboundEvent};
use kiln::domain::pipeline::{Parsed, Pipeline, KILN_KEY};
use kiln::domain::request::BuildRequest;

/// A pipeline file: `Pipeline::read` on its text (files are read as UTF-8,
/// so other bytes never reach it).
///
/// Properties: every problem names a path and says what is wrong; a valid
/// pipeline written back out (its template as kept, its `kiln` section as
/// kiln understood it) reads back to the same pipeline.
pub fn pipeline(bytes: &[u8]) {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    match Pipeline::read("fuzz", text) {
        Parsed::Invalid { errors, .. } => {
            assert!(!errors.is_empty(), "an invalid pipeline without a reason");
            for e in &errors {
                assert!(!e.path.is_empty() && !e.message.trim().is_empty(), "{e:?}");
            }
        }
        Parsed::Valid(p) => {
            let mut doc = p.template_json.clone();
            let kiln = serde_json::to_value(&p.kiln).expect("a kiln section serializes");
            doc.as_object_mut()
                .expect("a template is an object")
                .insert(KILN_KEY.into(), kiln.clone());
            let again = match Pipeline::read("fuzz", &doc.to_string()) {
                Parsed::Valid(again) => again,
                Parsed::Invalid { errors, .. } => {
                    panic!("a valid pipeline written back out is invalid: {errors:?}\n{doc}")
                }
            };
            assert_eq!(again.template_json, p.template_json);
            assert_eq!(format!("{:?}", again.template), format!("{:?}", p.template));
            assert_eq!(serde_json::to_value(&again.kiln).unwrap(), kiln);
        }
    }
}

/// A custom-handler invocation as the Functions host POSTs it to
/// `/{function}`: the envelope, then for every function what it reads of
/// it before doing any work (the same calls `app::functions` makes).
///
/// Properties: a build request that parses writes back out and parses to
/// itself, with a non-empty idempotency key; a bad payload is an error
/// that names the binding.
pub fn invocation(bytes: &[u8]) {
    let Ok(inv) = serde_json::from_slice::<Invocation>(bytes) else {
        return;
    };
    let meta = kiln::app::wire::MessageMeta::from_metadata(&inv.metadata);
    for name in FunctionName::ALL {
        let value = match kiln::app::wire::trigger_value(&inv, name) {
            Ok(v) => v,
            Err(e) => {
                assert!(e.to_string().contains(name.trigger_binding()), "{e}");
                continue;
            }
        };
        match name {
            FunctionName::BaseImageEvents => {
                let batch = match kiln::app::wire::decode_value(value) {
                    Value::Array(items) => Value::Array(items),
                    other => Value::Array(vec![other]),
                };
                events(&serde_json::to_vec(&batch).unwrap());
            }
            FunctionName::BuildRequests => {
                build_request(kiln::app::wire::message_text(value).as_bytes());
                if let Ok(r) = BuildRequest::parse(kiln::app::wire::message_text(value).as_bytes())
                {
                    assert!(!r.key(&meta.message_id).is_empty());
                }
            }
            FunctionName::BuildPolls => {
                let _ = kiln::app::wire::message_text(value);
            }
            FunctionName::PatchTuesday
            | FunctionName::BaseImageWatch
            | FunctionName::BuildSweeper
            | FunctionName::Retention
            | FunctionName::EvidenceRecheck
            | FunctionName::Api => {
                let _ = kiln::app::wire::decode_value(value);
            }
        }
    }
}

/// An Event Grid or CloudEvents delivery to `/api/events/base-image`, under
/// each header combination the endpoint can see.
///
/// Properties: an error says something; every event has its id; a base
/// image update names its line and version.
pub fn events(bytes: &[u8]) {
    const AEG: [Option<&str>; 3] = [None, Some("Notification"), Some("SubscriptionValidation")];
    const CONTENT: [Option<&str>; 4] = [
        None,
        Some("application/json"),
        Some("application/cloudevents+json; charset=utf-8"),
        Some("application/cloudevents-batch+json"),
    ];
    for aeg in AEG {
        for content in CONTENT {
            match events_in::parse(bytes, aeg, content) {
                Err(reason) => assert!(!reason.trim().is_empty()),
                Ok(Inbound::Handshake { .. }) => {}
                Ok(Inbound::Events(list)) => {
                    for e in list {
                        match e {
                            InboundEvent::BaseImageUpdated { line, version, .. } => {
                                assert!(!line.is_empty() && !version.is_empty());
                            }
                            InboundEvent::GalleryVersionWritten {
                                definition_id,
                                version,
                                ..
                            } => assert!(!definition_id.is_empty() && !version.is_empty()),
                            InboundEvent::Ignored { .. } => {}
                        }
                    }
                }
            }
        }
    }
}

/// A build request message (Service Bus body, `POST /api/builds`).
///
/// Property: a request that parses writes back out and parses to itself.
pub fn build_request(bytes: &[u8]) {
    if let Ok(r) = BuildRequest::parse(bytes) {
        let again = BuildRequest::parse(&serde_json::to_vec(&r).unwrap())
            .expect("a parsed request written back out parses");
        assert_eq!(again, r);
    }
}

/// An OSV feed file as a download or a mirror could hand it over: parsed,
/// then matched against a small Debian 12 image.
///
/// Properties: a feed that parses writes back out (its advisories as a JSON
/// array) and reads to the same set (same length, same digest); matching
/// never panics, whatever versions the records hold.
pub fn osv_feed(bytes: &[u8]) {
    use kiln::domain::evidence::gate::match_sbom;
    use kiln::domain::evidence::osv::Feed;
    use kiln::domain::evidence::sbom::{OsRelease, Package, PackageManager, Sbom};

    let Ok(feed) = Feed::parse_file("fuzz.json", bytes) else {
        return;
    };
    let digest = feed.digest();
    assert_eq!(digest.len(), 64);
    let written =
        serde_json::to_vec(&feed.advisories().collect::<Vec<_>>()).expect("advisories serialize");
    let again = Feed::parse_file("again.json", &written).expect("a feed written back out reads");
    assert_eq!((again.len(), again.digest()), (feed.len(), digest));
    let package = |name: &str, version: &str| Package {
        name: name.into(),
        version: version.into(),
        arch: "amd64".into(),
        source: name.into(),
        source_version: version.into(),
        license: None,
        manager: PackageManager::Dpkg,
    };
    let image = Sbom {
        subject: "fuzz".into(),
        os: Some(OsRelease {
            id: "debian".into(),
            version_id: Some("12".into()),
            pretty_name: None,
        }),
        packages: vec![
            package("curl", "7.88.1-10+deb12u15"),
            package("jq", "1.6-2.1+deb12u1"),
        ],
        files: vec![],
        created: chrono::DateTime::UNIX_EPOCH,
        tool: "fuzz".into(),
    };
    for f in match_sbom(&image, &feed) {
        assert!(
            feed.get(&f.id).is_some(),
            "a finding for an advisory the feed lacks: {f:?}"
        );
    }
}
