//! An `http://` or `https://` URL as a load target: where to connect, whether TLS, the
//! name for SNI and `Host`, and the request target. Pure parsing, no resolution.

/// The parts of a URL the load generator uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// `https`: connect with TLS.
    pub tls: bool,
    /// The host without brackets (`::1`, `example.test`, `127.0.0.1`).
    pub host: String,
    pub port: u16,
    /// The request target: the path and query, `/` when the URL has none.
    pub path: String,
    /// The `Host` header: the host as written, with the port if it is not the default.
    pub authority: String,
}

impl Url {
    /// Whether `text` is meant as a URL (rather than a host name): it names a scheme.
    pub fn looks_like(text: &str) -> bool {
        text.contains("://")
    }

    /// Parses `http://HOST[:PORT][/PATH][?QUERY]` (and `https://`); a fragment is dropped,
    /// user information is refused.
    pub fn parse(text: &str) -> Result<Url, String> {
        let bad = |why: &str| format!("invalid URL {text:?}: {why}");
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| bad("expected http:// or https://"))?;
        let tls = match scheme.to_ascii_lowercase().as_str() {
            "http" => false,
            "https" => true,
            _ => return Err(bad("only http:// and https:// are supported")),
        };
        let rest = rest.split('#').next().unwrap_or_default();
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        if authority.contains('@') {
            return Err(bad("user information is not supported"));
        }
        let (host, port) = if let Some(inner) = authority.strip_prefix('[') {
            let (host, after) = inner
                .split_once(']')
                .ok_or_else(|| bad("unclosed [ in the host"))?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let default = if tls { 443 } else { 80 };
        let port = match port {
            None | Some("") => default,
            Some(port) => port
                .parse::<u16>()
                .ok()
                .filter(|&p| p > 0)
                .ok_or_else(|| bad("the port must be a number from 1 to 65535"))?,
        };
        let shown = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        let authority = if port == default {
            shown
        } else {
            format!("{shown}:{port}")
        };
        let path = match path {
            "" => "/".to_string(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.to_string(),
        };
        Ok(Url {
            tls,
            host: host.to_string(),
            port,
            path,
            authority,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> Url {
        Url::parse(text).unwrap()
    }

    /// Hosts, ports, paths and queries as curl would read them; the default port is left
    /// out of the `Host` header.
    #[test]
    fn parses_what_users_type() {
        let u = url("http://127.0.0.1:8080/index.html?x=1#top");
        assert_eq!(
            (
                u.tls,
                u.host.as_str(),
                u.port,
                u.path.as_str(),
                u.authority.as_str()
            ),
            (
                false,
                "127.0.0.1",
                8080,
                "/index.html?x=1",
                "127.0.0.1:8080"
            )
        );
        let u = url("https://localhost");
        assert_eq!(
            (u.tls, u.port, u.path.as_str(), u.authority.as_str()),
            (true, 443, "/", "localhost")
        );
        let u = url("HTTP://[::1]:80?q");
        assert_eq!(
            (
                u.host.as_str(),
                u.port,
                u.path.as_str(),
                u.authority.as_str()
            ),
            ("::1", 80, "/?q", "[::1]")
        );
        let u = url("https://[::1]:8443/a");
        assert_eq!(u.authority, "[::1]:8443");
        assert!(Url::looks_like("https://x") && !Url::looks_like("localhost"));
    }

    /// What cannot be a target is refused with the reason.
    #[test]
    fn refuses_what_it_cannot_use() {
        for bad in [
            "ftp://host/",
            "http://",
            "http://:80/",
            "http://host:0/",
            "http://host:99999/",
            "http://host:x/",
            "http://user@host/",
            "http://[::1/",
            "localhost:80",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
    }
}
