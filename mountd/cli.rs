//! Command-line arguments.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// A peer-to-peer replicated filesystem mounted with FUSE.
#[derive(Debug, Parser)]
#[command(name = "lattice-mount", version)]
pub struct Cli {
    /// Data dir of the node [default: ~/.local/share/lattice-mount]
    #[arg(long, global = true, env = "LATTICE_HOME", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground and mount the stores
    Up {
        /// Where to mount [default: ~/Lattice]
        mountpoint: Option<PathBuf>,
        /// Display name of this node, shown to peers and in conflict names
        #[arg(long = "name", value_name = "DISPLAY_NAME", value_parser = display_name)]
        name: Option<String>,
        /// Let other users access the mount (needs user_allow_other in /etc/fuse.conf)
        #[arg(long)]
        allow_other: bool,
        /// Relay servers: default, disabled (direct addresses only) or a relay URL
        #[arg(long, default_value = "default", value_name = "default|disabled|URL")]
        relay: lattice_mount::Relay,
        /// Local address for the network endpoint [default: any port, all interfaces]
        #[arg(long, value_name = "ADDR")]
        bind: Option<std::net::SocketAddr>,
        /// Memory for caches in MiB: half for content chunks, an eighth for parsed
        /// manifests, the rest shared by the store databases
        #[arg(long, value_name = "N", default_value_t = lattice_mount::DEFAULT_CACHE_MIB,
              value_parser = clap::value_parser!(u64).range(1..=1024 * 1024))]
        cache_mib: u64,
    },
    /// Create a new store, shown as a directory under the mount root
    Create {
        /// Store name
        name: String,
    },
    /// Show the node and its stores
    Status {
        /// Print a JSON object
        #[arg(long)]
        json: bool,
    },
    /// Show the history of a file or directory in the mount
    History {
        /// A path inside the mount (absolute or relative to the current directory)
        path: PathBuf,
        /// Print a JSON object
        #[arg(long)]
        json: bool,
    },
    /// Stop the daemon and unmount
    Down,
    /// Print a one-line token that lets another node join a store
    Invite {
        /// Store name
        name: String,
        /// Role of the joiner
        #[arg(long, default_value = "writer", value_parser = ["admin", "writer", "reader"])]
        role: String,
        /// How long the token stays valid, e.g. 30m, 24h, 7d
        #[arg(long, default_value = "7d", value_parser = parse_duration)]
        expires: std::time::Duration,
    },
    /// Join a store with a token from `invite`; shows progress while it clones
    Join {
        /// The token
        token: String,
        /// Display name to join with [default: this node's]
        #[arg(long = "name", value_name = "ALIAS", value_parser = display_name)]
        name: Option<String>,
    },
    /// List a store's members, their roles and whether they are online
    Peers {
        /// Store name
        name: String,
        /// Print a JSON object
        #[arg(long)]
        json: bool,
    },
    /// Revoke a member of a store (it is cut off from then on) or an unused invite token
    Revoke {
        /// Store name
        name: String,
        /// A member's key hex prefix or display name, or an invite token
        peer: String,
    },
    /// Reconcile a store with every member now
    Sync {
        /// Store name
        name: String,
    },
    /// Stop all network activity of one store, or of every store
    Pause {
        /// Store name [default: every store]
        name: Option<String>,
    },
    /// Restart network activity of one store, or of every store
    Resume {
        /// Store name [default: every store]
        name: Option<String>,
    },
    /// Delete the content no current or retained version needs, now (background runs
    /// do it hourly)
    Gc {
        /// Store name [default: every store]
        name: Option<String>,
    },
    /// Show or set (admins only) how many days old versions of a store's files are kept
    Retention {
        /// Store name
        name: String,
        /// Days to keep superseded and deleted versions; 0 keeps only current ones
        days: Option<u32>,
    },
    /// Choose when a store fetches file content: eager (default) or on-demand
    FetchMode {
        /// Store name
        name: String,
        /// eager or on-demand
        #[arg(value_parser = ["eager", "on-demand"])]
        mode: String,
    },
}

/// A valid display name (trimmed), or why not: refused here rather than signed raw.
fn display_name(s: &str) -> Result<String, String> {
    lattice_mount::check_display_name(s).map_err(|e| e.to_string())
}

/// `$HOME/<rest>`, or `None` when `HOME` is unset or empty.
pub fn home_dir(rest: &str) -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(rest))
}

/// Parses `90s`, `30m`, `24h`, `7d` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (e.g. 90s, 30m, 24h, 7d)"))?;
    let secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("invalid duration unit in {s:?} (s, m, h or d)")),
    };
    n.checked_mul(secs)
        .map(std::time::Duration::from_secs)
        .ok_or_else(|| format!("duration {s:?} is too long"))
}
