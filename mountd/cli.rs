//! Command-line arguments.

use std::ffi::OsString;
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
        /// Serve every read and write through the daemon, even where the kernel could
        /// read and write a local-only file directly (FUSE passthrough, as root)
        #[arg(long)]
        no_passthrough: bool,
        /// Relay servers: default, disabled (direct addresses only) or a relay URL
        #[arg(long, default_value = "default", value_name = "default|disabled|URL")]
        relay: lattice_mount::Relay,
        /// Local address for the network endpoint [default: any port, all interfaces]
        #[arg(long, value_name = "ADDR")]
        bind: Option<std::net::SocketAddr>,
        /// Memory for caches in MiB: 3/8 for content chunks, 1/16 for parsed manifests,
        /// 1/16 for blob files known intact, 1/8 for the inodes the kernel keeps, the
        /// rest shared by the store databases
        #[arg(long, value_name = "N", default_value_t = lattice_mount::DEFAULT_CACHE_MIB,
              value_parser = clap::value_parser!(u64).range(1..=1024 * 1024))]
        cache_mib: u64,
        /// Serve a status page and its JSON API at ADDR [default: 127.0.0.1, a free
        /// port]; `lattice-mount web` prints its address with the access token
        #[arg(long, value_name = "ADDR", num_args = 0..=1, require_equals = true,
              default_missing_value = crate::web::DEFAULT_ADDR)]
        web: Option<std::net::SocketAddr>,
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
    /// Show the history of a file or directory in the mount, and a file's versions
    History {
        /// A path inside the mount (absolute or relative to the current directory); a
        /// deleted file or directory is found under its old name
        path: PathBuf,
        /// List the deleted files under the directory PATH, with their versions
        #[arg(long)]
        deleted: bool,
        /// Print a JSON object
        #[arg(long)]
        json: bool,
    },
    /// Prove who wrote each live version of a file: re-check, from the local store, the
    /// signed intentions behind it and their authors' grants back to the store's
    /// founder; exits 1 with one line per failure when something does not verify
    Verify {
        /// A file inside the mount (absolute or relative to the current directory)
        path: PathBuf,
        /// Print a JSON object
        #[arg(long)]
        json: bool,
    },
    /// Bring back a version of a file (or a deleted file) as a new edit that replicates
    Restore {
        /// The file, or the deleted file's old path, inside the mount
        path: PathBuf,
        /// The version: a prefix (8+ hex) of its intention hash, as `history` lists it
        /// [default: the version before the current one; a deleted file's last one]
        #[arg(long, value_name = "HASH", conflicts_with = "at")]
        version: Option<String>,
        /// The version current at TIME: RFC 3339 (2026-12-03T21:00:00Z) or unix seconds
        #[arg(long, value_name = "TIME", value_parser = parse_time)]
        at: Option<u64>,
        /// Restore as a new file at NEWPATH (in the same store) instead of in place
        #[arg(long, value_name = "NEWPATH")]
        to: Option<PathBuf>,
        /// Print a JSON object
        #[arg(long)]
        json: bool,
    },
    /// List the files with conflicting versions: who wrote each, when, its size and id
    Conflicts {
        /// Only this store [default: every store]
        store: Option<String>,
        /// Print a JSON object
        #[arg(long)]
        json: bool,
    },
    /// Settle a conflict in one signed edit that replicates: keep one version, or all
    Resolve {
        /// The file (or one of its conflict copies) inside the mount
        path: PathBuf,
        /// mine (this node's version), theirs (the other node's), VERSION (8+ hex of a
        /// content id from `conflicts`), or both (the others become files named as their
        /// conflict copies were)
        #[arg(long, value_name = "mine|theirs|VERSION|both", value_parser = keep)]
        keep: String,
        /// Print a JSON object
        #[arg(long)]
        json: bool,
    },
    /// Print every change as it applies, local or received, until interrupted
    Watch {
        /// Only changes at or under this path inside the mount [default: everything]
        path: Option<PathBuf>,
        /// Print one JSON object per line
        #[arg(long)]
        json: bool,
    },
    /// Stop the daemon and unmount
    Down,
    /// Print the status page's address with its access token (the daemon runs with
    /// `up --web`)
    Web,
    /// Print a one-line token that lets another node join a store
    Invite {
        /// Store name
        name: String,
        /// Role of the joiner
        #[arg(long, default_value = "writer", value_parser = ["admin", "writer", "reader"])]
        role: String,
        /// How long the token stays valid, e.g. 30m, 24h, 7d
        #[arg(long, default_value = DEFAULT_INVITE_EXPIRY, value_parser = parse_duration)]
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
    /// Record a read-only snapshot of a store, shown on every node under
    /// STORE/.snapshots/LABEL; without LABEL, list the store's snapshots
    Snapshot {
        /// Store name
        name: String,
        /// Snapshot name (a file name); an existing snapshot of that name is replaced
        label: Option<String>,
        /// Drop the snapshot LABEL instead (its content is freed by the next gc)
        #[arg(long, requires = "label")]
        rm: bool,
    },
    /// Show or set (admins only) how many days a silent member holds back the purge of a
    /// store's history
    Horizon {
        /// Store name
        name: String,
        /// Days of silence (no sync) after which a member stops counting, 1 to 3650
        days: Option<u32>,
    },
    /// Stop sharing a store: tell the other members, then remove its local data
    Leave {
        /// Store name
        name: String,
        /// Do not ask for confirmation
        #[arg(long)]
        yes: bool,
        /// First write a plain copy of the store's tree into this new or empty directory
        #[arg(long, value_name = "DIR")]
        export: Option<PathBuf>,
        /// Leave even as the last admin while other members remain (nobody can invite,
        /// revoke or delete afterwards)
        #[arg(long)]
        abandon: bool,
    },
    /// Delete a store for every member (admins only); each member then keeps a copy
    /// (`leave --export DIR`) or removes it (`leave`)
    Delete {
        /// Store name
        name: String,
        /// Do not ask for confirmation
        #[arg(long)]
        yes: bool,
    },
    /// Choose when a store fetches file content: eager (default) or on-demand
    FetchMode {
        /// Store name
        name: String,
        /// eager or on-demand
        #[arg(value_parser = ["eager", "on-demand"])]
        mode: String,
    },
    /// Install or remove a systemd user service that runs `up` at login
    Service {
        /// What to do.
        #[command(subcommand)]
        action: ServiceAction,
    },
    /// Print a shell completion script (e.g. `lattice-mount completions bash >
    /// ~/.local/share/bash-completion/completions/lattice-mount`)
    Completions {
        /// The shell
        shell: clap_complete::Shell,
    },
    /// Print the man page, or a command's (e.g. `lattice-mount man service install |
    /// man -l -`)
    Man {
        /// The command, e.g. `up` or `service install` [default: the program's page]
        command: Vec<String>,
    },
}

/// The subcommands of `service`.
#[derive(Debug, Subcommand)]
pub enum ServiceAction {
    /// Write ~/.config/systemd/user/lattice-mount.service, which runs `up` with this
    /// data dir, and enable and start it with systemctl
    Install {
        /// Only write the unit file; do not run systemctl
        #[arg(long)]
        no_enable: bool,
        /// Options for `up` in the service, after `--` (e.g. `-- --relay disabled
        /// /home/ada/Lattice`)
        #[arg(last = true, value_name = "UP_OPTIONS")]
        up: Vec<OsString>,
    },
    /// Stop and disable the service and remove its unit file
    Uninstall {
        /// Only remove the unit file; do not run systemctl
        #[arg(long)]
        no_disable: bool,
    },
}

/// How long an invite token stays valid unless told otherwise.
pub const DEFAULT_INVITE_EXPIRY: &str = "7d";

/// A valid display name (trimmed), or why not: refused here rather than signed raw.
fn display_name(s: &str) -> Result<String, String> {
    lattice_mount::check_display_name(s).map_err(|e| e.to_string())
}

/// A `resolve --keep` value: `mine`, `theirs`, `both`, or a version id prefix of at
/// least [`lattice_mount::MIN_VERSION_PREFIX`] hex characters.
fn keep(s: &str) -> Result<String, String> {
    let word = matches!(s, "mine" | "theirs" | "both");
    let hex =
        s.len() >= lattice_mount::MIN_VERSION_PREFIX && s.bytes().all(|b| b.is_ascii_hexdigit());
    match word || hex {
        true => Ok(s.to_string()),
        false => Err(format!(
            "give mine, theirs, both, or at least {} hex characters of a version id",
            lattice_mount::MIN_VERSION_PREFIX
        )),
    }
}

/// `$HOME/<rest>`, or `None` when `HOME` is unset or empty.
pub fn home_dir(rest: &str) -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(rest))
}

/// Parses a point in time to ms since the Unix epoch: unix seconds, or RFC 3339 with
/// any offset and fraction (`2026-12-03T21:00:00Z`, `2026-12-03 22:00:00.5+01:00`).
pub fn parse_time(s: &str) -> Result<u64, String> {
    if let Ok(secs) = s.parse::<u64>() {
        return secs
            .checked_mul(1000)
            .ok_or_else(|| format!("time {s:?} is out of range"));
    }
    rfc3339_ms(s).ok_or_else(|| {
        format!("invalid time {s:?}: give RFC 3339 (2026-12-03T21:00:00Z) or unix seconds")
    })
}

/// RFC 3339 `date-time` (section 5.6; `T` or a space between date and time, a leap
/// second read as the next second) in ms since the epoch; `None` if malformed or
/// before 1970.
fn rfc3339_ms(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<u64> {
        let d = b.get(r)?;
        d.iter()
            .all(u8::is_ascii_digit)
            .then(|| d.iter().fold(0, |n, c| n * 10 + u64::from(c - b'0')))
    };
    let sep = |i: usize, c: &[u8]| b.get(i).is_some_and(|x| c.contains(x));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let days_in = [
        31,
        if leap(y) { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    let month_ok = (1..=12).contains(&mo) && (1..=days_in[mo as usize - 1]).contains(&d);
    if !month_ok || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut ms = 0;
    if sep(i, b".") {
        let digits = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        // Milliseconds: the first three digits, the rest dropped.
        ms = (0..3).fold(0, |n, k| n * 10 + num(i + 1 + k..i + 2 + k).unwrap_or(0));
        i += 1 + digits;
    }
    let offset_min: i64 = match b.get(i..)? {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), ..] if b.len() == i + 6 && sep(i + 3, b":") => {
            let (oh, om) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let m = (oh * 60 + om) as i64;
            if *sign == b'-' {
                -m
            } else {
                m
            }
        }
        _ => return None,
    };
    let days = days_from_civil(y as i64, mo, d);
    let secs = days * 86_400 + (h * 3600 + mi * 60 + sec) as i64 - offset_min * 60;
    u64::try_from(secs).ok().map(|s| s * 1000 + ms)
}

/// Whether `y` is a leap year of the Gregorian calendar.
fn leap(y: u64) -> bool {
    y.is_multiple_of(4) && (!y.is_multiple_of(100) || y.is_multiple_of(400))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (the inverse of
/// `lattice_mount::civil_from_days`, Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u64, d: u64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_from_unix_seconds_and_rfc3339_with_offsets_and_fractions() {
        assert_eq!(parse_time("0"), Ok(0));
        assert_eq!(parse_time("1763756367"), Ok(1_763_756_367_000));
        assert_eq!(
            parse_time("2025-11-21T20:19:27.123Z"),
            Ok(1_763_756_367_123)
        );
        assert_eq!(
            parse_time("2025-11-21 21:19:27.1239+01:00"),
            Ok(1_763_756_367_123)
        );
        assert_eq!(
            parse_time("2025-11-21t15:19:27.5-05:00"),
            Ok(1_763_756_367_500)
        );
        assert_eq!(parse_time("2000-02-29T00:00:00Z"), Ok(951_782_400_000));
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Ok(0));
    }

    #[test]
    fn malformed_or_pre_epoch_times_are_refused() {
        for bad in [
            "",
            "yesterday",
            "2025-11-21",
            "2025-11-21T20:19:27",
            "2025-11-21T20:19:27.Z",
            "2025-02-29T00:00:00Z",
            "2025-13-01T00:00:00Z",
            "2025-11-21T24:00:00Z",
            "2025-11-21T20:19:27+1:00",
            "2025-11-21T20:19:27Zjunk",
            "1969-12-31T23:59:59Z",
            "-1",
        ] {
            let err = parse_time(bad).unwrap_err();
            assert!(
                err.contains("RFC 3339") || err.contains("range"),
                "{bad:?}: {err}"
            );
        }
    }
}
