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
            // A pair without `=` may be a bare token (`?<token>`): all of it goes.
            match pair.split_once('=') {
                Some((name, _)) => {
                    out.push_str(name);
                    out.push('=');
                    out.push_str(REDACTED);
                }
                None => out.push_str(REDACTED),
            }
        }
    }
    if fragment {
        out.push('#');
        out.push_str(REDACTED);
    }
    Cow::Owned(out)
}

/// Masks, in text relayed from elsewhere (AIB's customization log and run
/// messages), the user information and query values of every `http://` or
/// `https://` URL with `*`, byte for byte: the text keeps its length, so
/// byte offsets into a log that is read in pieces stay right.
pub fn mask_urls(text: &mut [u8]) {
    let mut i = 0;
    while i < text.len() {
        let rest = &text[i..];
        let scheme = if rest.starts_with(b"https://") {
            8
        } else if rest.starts_with(b"http://") {
            7
        } else {
            i += 1;
            continue;
        };
        let start = i + scheme;
        let end = text[start..]
            .iter()
            .position(|b| b.is_ascii_whitespace() || matches!(b, b'"' | b'\'' | b'<' | b'>'))
            .map_or(text.len(), |n| start + n);
        mask_one(&mut text[start..end]);
        i = end;
    }
}

/// Masks one URL after its scheme: `user:pass@` and each query value.
fn mask_one(url: &mut [u8]) {
    let authority_end = url
        .iter()
        .position(|b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(url.len());
    if let Some(at) = url[..authority_end].iter().rposition(|&b| b == b'@') {
        url[..at].fill(b'*');
    }
    let Some(q) = url.iter().position(|&b| b == b'?') else {
        return;
    };
    let mut in_value = false;
    let mut pair_start = q + 1;
    for j in q + 1..url.len() {
        match url[j] {
            b'&' => {
                if !in_value {
                    // A bare token (no `=`): all of it.
                    url[pair_start..j].fill(b'*');
                }
                in_value = false;
                pair_start = j + 1;
            }
            b'=' if !in_value => in_value = true,
            b'#' => {
                in_value = true;
                pair_start = url.len();
            }
            _ if in_value => url[j] = b'*',
            _ => {}
        }
    }
    if !in_value && pair_start < url.len() {
        url[pair_start..].fill(b'*');
    }
}

/// [`mask_urls`] over a string.
pub fn mask_urls_in(text: &str) -> String {
    let mut bytes = text.as_bytes().to_vec();
    mask_urls(&mut bytes);
    // Only ASCII bytes of ASCII-delimited spans were replaced by ASCII.
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relayed_text_keeps_its_length_and_loses_tokens_and_passwords() {
        let text = "[Shell] downloading https://acct.blob.core.windows.net/c/s.sh?sv=2022&sig=abc%2B== to /tmp\nfetch 'http://me:pw@h/x?tok' done #3";
        let masked = mask_urls_in(text);
        assert_eq!(masked.len(), text.len());
        assert_eq!(
            masked,
            "[Shell] downloading https://acct.blob.core.windows.net/c/s.sh?sv=****&sig=******** to /tmp\nfetch 'http://*****@h/x?***' done #3"
        );
        let plain = "no URL here, and https://example.com/a/b.sh stays";
        assert_eq!(mask_urls_in(plain), plain);
    }

    #[test]
    fn a_sas_token_keeps_its_parameter_names_and_loses_every_value() {
        let sas = "https://acct.blob.core.windows.net/c/agent.conf?sv=2022-11-02&se=2026-12-31T00%3A00%3A00Z&sp=r&sig=abc%2Bdef%3D";
        assert_eq!(
            uri(sas),
            "https://acct.blob.core.windows.net/c/agent.conf?sv=REDACTED&se=REDACTED&sp=REDACTED&sig=REDACTED"
        );
    }

    #[test]
    fn a_bare_token_in_the_query_is_redacted_whole() {
        assert_eq!(
            uri("https://example.com/f.sh?c2VjcmV0LXRva2Vu&x=1"),
            "https://example.com/f.sh?REDACTED&x=REDACTED"
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
