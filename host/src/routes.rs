//! Path-prefix routing from the manifest: `/orders` owns `/orders` and
//! `/orders/...`; the longest matching prefix wins. Part of each live-set
//! snapshot, so a manifest reload changes routes atomically.

use crate::config::Config;

/// Prefix → component name, longest prefix first.
#[derive(Debug, Clone)]
pub struct Router {
    routes: Vec<(String, String)>,
}

impl Router {
    /// Collect the routes of every component in the manifest.
    pub fn from_config(config: &Config) -> Self {
        let mut routes: Vec<(String, String)> = config
            .components
            .iter()
            .flat_map(|(name, c)| c.routes.iter().map(move |r| (r.clone(), name.clone())))
            .collect();
        routes.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
        Self { routes }
    }

    /// The component serving `path`, if any.
    pub fn route(&self, path: &str) -> Option<&str> {
        self.routes
            .iter()
            .find(|(prefix, _)| {
                prefix == "/"
                    || path == prefix
                    || (path.starts_with(prefix.as_str())
                        && path.as_bytes().get(prefix.len()) == Some(&b'/'))
            })
            .map(|(_, name)| name.as_str())
    }

    /// Every routed prefix, for a helpful 404.
    pub fn prefixes(&self) -> Vec<&str> {
        let mut prefixes: Vec<&str> = self.routes.iter().map(|(p, _)| p.as_str()).collect();
        prefixes.sort_unstable();
        prefixes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn router() -> Router {
        let config = Config::parse(
            "[components.order]\npath=\"o\"\nroutes=[\"/orders\"]\n[components.mypage]\npath=\"m\"\nroutes=[\"/myPages\"]\n",
            Path::new("."),
        )
        .expect("config parses");
        Router::from_config(&config)
    }

    #[test]
    fn a_prefix_owns_itself_and_its_subpaths_only() {
        let r = router();
        assert_eq!(r.route("/orders"), Some("order"));
        assert_eq!(r.route("/orders/2"), Some("order"));
        assert_eq!(r.route("/ordersx"), None);
        assert_eq!(r.route("/myPages/7"), Some("mypage"));
        assert_eq!(r.route("/"), None);
    }
}
