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
        #[arg(long = "name", value_name = "DISPLAY_NAME")]
        name: Option<String>,
        /// Let other users access the mount (needs user_allow_other in /etc/fuse.conf)
        #[arg(long)]
        allow_other: bool,
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
}

/// `$HOME/<rest>`, or `None` when `HOME` is unset or empty.
pub fn home_dir(rest: &str) -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(rest))
}
