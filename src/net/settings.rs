//! Per-store network settings kept on this node only: paused, and how content is
//! fetched. One small text file per store (`stores/<id>/network`), so they survive
//! restarts and never replicate.

use std::path::{Path, PathBuf};

use crate::net::peers::write_atomic;

/// When a replica fetches the blobs its files reference.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FetchMode {
    /// As soon as an intention referencing them is applied.
    #[default]
    Eager,
    /// When a read first needs them.
    OnDemand,
}

impl FetchMode {
    /// The word used in the settings file and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            FetchMode::Eager => "eager",
            FetchMode::OnDemand => "on-demand",
        }
    }
}

impl std::str::FromStr for FetchMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "eager" => Ok(FetchMode::Eager),
            "on-demand" => Ok(FetchMode::OnDemand),
            other => Err(format!(
                "unknown fetch mode {other:?} (expected eager or on-demand)"
            )),
        }
    }
}

/// Local network settings of one store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Settings {
    /// All network activity for the store is stopped.
    pub paused: bool,
    /// How blobs are fetched.
    pub fetch: FetchMode,
}

/// The settings file of the store in `store_dir`.
pub(crate) fn path(store_dir: &Path) -> PathBuf {
    store_dir.join("network")
}

impl Settings {
    /// Reads the settings of the store in `store_dir`; defaults when absent or unreadable.
    pub(crate) fn load(store_dir: &Path) -> Settings {
        let mut s = Settings::default();
        let Ok(text) = std::fs::read_to_string(path(store_dir)) else {
            return s;
        };
        for line in text.lines() {
            match line.split_once(' ') {
                None if line == "paused" => s.paused = true,
                Some(("fetch", mode)) => match mode.parse() {
                    Ok(m) => s.fetch = m,
                    Err(e) => tracing::warn!("{}: {e}", store_dir.display()),
                },
                _ => tracing::warn!("{}: ignoring setting {line:?}", store_dir.display()),
            }
        }
        s
    }

    /// Writes the settings of the store in `store_dir`.
    pub(crate) fn save(&self, store_dir: &Path) -> std::io::Result<()> {
        let mut text = String::new();
        if self.paused {
            text.push_str("paused\n");
        }
        text.push_str(&format!("fetch {}\n", self.fetch.as_str()));
        write_atomic(&path(store_dir), text.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_round_trip_and_default_when_missing() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Settings::load(dir.path()), Settings::default());
        let s = Settings {
            paused: true,
            fetch: FetchMode::OnDemand,
        };
        s.save(dir.path()).unwrap();
        assert_eq!(Settings::load(dir.path()), s);
        assert!("lazy".parse::<FetchMode>().is_err());
    }
}
