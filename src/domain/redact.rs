//! What kiln writes about a URI it was given: never the credential in it.
//! A `sourceUri` or `scriptUri` often carries a SAS token in its query
//! (`sig=` is the signature, and the other parameters say what it grants),
//! and some carry a user and password. kiln hands the URI as given to the
//! one party that needs it (AIB, or the local fetch) and writes only the
//! redacted form in logs, errors, events and provenance.

use std::borrow::Cow;

/// What replaces each redacted value.
pub const REDACTED: &str = "REDACTED";

/// `uri` with its user information and every query value replaced by
/// [`REDACTED`], keeping the scheme, host, path and parameter names, so a
/// reader still sees which file and which kind of token it was. A URI with
/// neither is returned as it is.
pub fn uri(uri: &str) -> Cow<'_, str> {
    let (before_fragment, fragment) = match uri.split_once('#') {
        Some((b, _)) => (b, true),
        None => (uri, false),
    };
    let (base, query) = match before_fragment.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (before_fragment, None),
    };
    let userinfo = base
        .split_once("://")
        .and_then(|(_, rest)| rest.split('/').next())
        .and_then(|authority| authority.rsplit_once('@'))
        .map(|(info, _)| info);
    if query.is_none() && userinfo.is_none() && !fragment {
        return Cow::Borrowed(uri);
    }
    let mut out = String::with_capacity(uri.len());
    match userinfo {
        Some(info) => {
            let (scheme, rest) = base.split_once("://").expect("userinfo implies a scheme");
            out.push_str(scheme);
            out.push_str("://");
            out.push_str(REDACTED);
            out.push_str(&rest[info.len()..]);
        }
        None => out.push_str(base),
    }
    if let Some(q) = query {
        out.push('?');
        for (i, pair) in q.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            let name = pair.split_once('=').map_or(pair, |(k, _)| k);
            out.push_str(name);
            out.push('=');
            out.push_str(REDACTED);
        }
    }
    if fragment {
        out.push('#');
        out.push_str(REDACTED);
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sas_token_keeps_its_parameter_names_and_loses_every_value() {
        let sas = "https://acct.blob.core.windows.net/c/agent.conf?sv=2022-11-02&se=2026-12-31T00%3A00%3A00Z&sp=r&sig=abc%2Bdef%3D";
        assert_eq!(
            uri(sas),
            "https://acct.blob.core.windows.net/c/agent.conf?sv=REDACTED&se=REDACTED&sp=REDACTED&sig=REDACTED"
        );
    }

    #[test]
    fn user_information_and_fragments_are_redacted() {
        assert_eq!(
            uri("https://me:hunter2@example.com/f.sh#tok"),
            "https://REDACTED@example.com/f.sh#REDACTED"
        );
        // An `@` in the path is not user information.
        assert_eq!(
            uri("https://example.com/a@b/f?x=1"),
            "https://example.com/a@b/f?x=REDACTED"
        );
    }

    #[test]
    fn a_uri_without_credentials_is_unchanged_and_not_copied() {
        for plain in [
            "https://example.com/f.sh",
            "/srv/files/agent.conf",
            "file:///tmp/x",
        ] {
            assert!(matches!(uri(plain), Cow::Borrowed(p) if p == plain));
        }
    }
}
