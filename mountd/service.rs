//! `lattice-mount service install|uninstall`: a systemd user unit that runs the daemon
//! (`up`, which stays in the foreground as systemd expects) from login on.
//!
//! The unit's command line is this binary's absolute path, the data dir and the `up`
//! options the user gave; it is parsed with the real CLI before anything is written, so
//! a unit that cannot start is never installed. Stopping is systemd's SIGTERM, which
//! the daemon handles like `down`.

use std::ffi::OsString;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command as Process;

use clap::Parser;

use crate::cli::{Cli, Command, ServiceAction};
use crate::daemon;
use crate::error::CliError;

/// The unit's file name, and the name systemctl knows it by.
const UNIT_NAME: &str = "lattice-mount.service";
/// Where user units live under the XDG config dir.
const UNIT_DIR: &str = "systemd/user";
/// Seconds before systemd restarts a daemon that failed: long enough for a network or
/// a FUSE device that comes up late at login.
const RESTART_SEC: u32 = 10;
/// Starts within [`START_LIMIT_INTERVAL_SEC`] after which systemd gives up, so a daemon
/// that cannot mount (see `journalctl --user -u lattice-mount`) does not loop forever.
const START_LIMIT_BURST: u32 = 5;
/// The window of [`START_LIMIT_BURST`], in seconds.
const START_LIMIT_INTERVAL_SEC: u32 = 300;

/// Why installing or removing the service failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// The options for `up` do not parse.
    #[error("invalid options for `up` in the service: {0}")]
    UpOptions(String),
    /// A relative mountpoint would be resolved against the service's directory.
    #[error("the service's MOUNTPOINT must be absolute: give {0}")]
    RelativeMountpoint(String),
    /// `--data-dir` among the `up` options would override the one the unit is for.
    #[error("give --data-dir before `service` (`lattice-mount --data-dir DIR service install`), not among the `up` options")]
    DataDirInUpOptions,
    /// An argument a unit file cannot carry.
    #[error("{0:?} cannot be written into a unit file (not UTF-8, or a control character)")]
    Unquotable(String),
    /// Neither `XDG_CONFIG_HOME` nor `HOME` says where user units go.
    #[error("neither XDG_CONFIG_HOME nor HOME is set, so there is no user unit directory")]
    NoConfigDir,
    /// `uninstall` without a unit file.
    #[error("no lattice-mount service is installed ({0} does not exist)")]
    NotInstalled(String),
    /// This program's own path is unknown.
    #[error("cannot find this program's path for the unit: {0}")]
    OwnPath(std::io::Error),
    /// Writing or removing the unit file failed.
    #[error("cannot {action} {path}: {source}")]
    File {
        /// "write" or "remove".
        action: &'static str,
        /// The unit file.
        path: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// systemctl is not installed.
    #[error("systemctl is not installed")]
    NoSystemctl,
    /// systemctl refused; its first line, and what the flag to skip it is.
    #[error("`systemctl --user {args}` failed: {reason} ({hint})")]
    Systemctl {
        /// The arguments after `--user`.
        args: String,
        /// systemctl's first line of error output.
        reason: String,
        /// How to do without systemctl.
        hint: &'static str,
    },
}

/// Runs `service install` or `service uninstall` for the node in `data_dir`.
pub(crate) fn run(action: ServiceAction, data_dir: &Path) -> Result<(), CliError> {
    match action {
        ServiceAction::Install { no_enable, up } => install(data_dir, up, no_enable),
        ServiceAction::Uninstall { no_disable } => uninstall(no_disable),
    }
    .map_err(CliError::from)
}

fn install(data_dir: &Path, up: Vec<OsString>, no_enable: bool) -> Result<(), ServiceError> {
    let exe = std::env::current_exe().map_err(ServiceError::OwnPath)?;
    let mut argv: Vec<OsString> = vec![
        exe.into(),
        "--data-dir".into(),
        data_dir.into(),
        "up".into(),
    ];
    argv.extend(up);
    check_up_command(&argv, data_dir)?;
    let unit = render_unit(&argv)?;
    let path = unit_path()?;
    write_unit(&path, &unit)?;
    println!("wrote {}", path.display());
    let enable_now =
        format!("systemctl --user daemon-reload && systemctl --user enable --now {UNIT_NAME}");
    if no_enable {
        println!("enable and start it with: {enable_now}");
        return Ok(());
    }
    const HINT: &str = "the unit file is written; --no-enable only writes it";
    match systemctl(&["daemon-reload"], HINT) {
        Err(ServiceError::NoSystemctl) => {
            println!(
                "systemctl is not installed; where systemd runs, enable it with: {enable_now}"
            );
            return Ok(());
        }
        other => other?,
    }
    // A daemon started by hand holds the data dir; the service would fail to start now.
    let running = daemon::is_running(data_dir).unwrap_or(false);
    if running {
        systemctl(&["enable", UNIT_NAME], HINT)?;
        println!(
            "enabled {UNIT_NAME}: it starts at the next login, since a daemon already runs \
             for {} (to switch now: lattice-mount down && systemctl --user start {UNIT_NAME})",
            data_dir.display()
        );
    } else {
        systemctl(&["enable", "--now", UNIT_NAME], HINT)?;
        println!("enabled and started {UNIT_NAME} (its log: journalctl --user -u lattice-mount)");
    }
    Ok(())
}

fn uninstall(no_disable: bool) -> Result<(), ServiceError> {
    let path = unit_path()?;
    if !path.exists() {
        return Err(ServiceError::NotInstalled(path.display().to_string()));
    }
    const HINT: &str = "--no-disable only removes the unit file";
    let systemd = !no_disable
        && match systemctl(&["disable", "--now", UNIT_NAME], HINT) {
            Ok(()) => true,
            // Without systemctl nothing can have enabled or started it.
            Err(ServiceError::NoSystemctl) => false,
            Err(e) => return Err(e),
        };
    if systemd {
        println!("stopped and disabled {UNIT_NAME}");
    }
    std::fs::remove_file(&path).map_err(|source| ServiceError::File {
        action: "remove",
        path: path.display().to_string(),
        source,
    })?;
    println!("removed {}", path.display());
    if systemd {
        systemctl(&["daemon-reload"], HINT)?;
    }
    Ok(())
}

/// Parses `argv` as the real CLI would at service start; refuses another data dir than
/// `data_dir`, and a relative mountpoint, which would be resolved against the
/// service's working directory.
fn check_up_command(argv: &[OsString], data_dir: &Path) -> Result<(), ServiceError> {
    let cli = Cli::try_parse_from(argv).map_err(|e| {
        let text = e.to_string();
        let first = text.lines().next().unwrap_or_default();
        ServiceError::UpOptions(first.trim_start_matches("error: ").to_string())
    })?;
    if cli.data_dir.as_deref() != Some(data_dir) {
        return Err(ServiceError::DataDirInUpOptions);
    }
    match cli.command {
        Command::Up {
            mountpoint: Some(m),
            ..
        } if m.is_relative() => Err(ServiceError::RelativeMountpoint(
            std::path::absolute(&m).unwrap_or(m).display().to_string(),
        )),
        _ => Ok(()),
    }
}

/// The unit file that runs `argv` (the binary's absolute path first).
fn render_unit(argv: &[OsString]) -> Result<String, ServiceError> {
    let exec = argv
        .iter()
        .map(quote)
        .collect::<Result<Vec<_>, _>>()?
        .join(" ");
    Ok(format!(
        "# Written by `lattice-mount service install`; `lattice-mount service uninstall` removes it.
[Unit]
Description=lattice-mount: the peer-to-peer replicated filesystem
StartLimitIntervalSec={START_LIMIT_INTERVAL_SEC}
StartLimitBurst={START_LIMIT_BURST}

[Service]
Type=exec
ExecStart={exec}
Restart=on-failure
RestartSec={RESTART_SEC}

[Install]
WantedBy=default.target
"
    ))
}

/// One argument as systemd's command-line syntax reads it back: bare when plain,
/// otherwise double-quoted with `\` and `"` escaped; `%` (specifiers) and `$`
/// (variables) are doubled either way.
fn quote(arg: &OsString) -> Result<String, ServiceError> {
    let unquotable = || ServiceError::Unquotable(arg.to_string_lossy().into_owned());
    let s = arg.to_str().ok_or_else(unquotable)?;
    if s.chars().any(char::is_control) {
        return Err(unquotable());
    }
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@%$".contains(c));
    let mut out = String::with_capacity(s.len() + 2);
    if !plain {
        out.push('"');
    }
    for c in s.chars() {
        match c {
            '%' => out.push_str("%%"),
            '$' => out.push_str("$$"),
            '\\' | '"' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    if !plain {
        out.push('"');
    }
    Ok(out)
}

/// `$XDG_CONFIG_HOME/systemd/user/lattice-mount.service`, `~/.config/...` by default.
fn unit_path() -> Result<PathBuf, ServiceError> {
    let absolute = |v: OsString| Some(PathBuf::from(v)).filter(|p| p.is_absolute());
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .and_then(absolute)
        .or_else(|| {
            std::env::var_os("HOME")
                .and_then(absolute)
                .map(|h| h.join(".config"))
        })
        .ok_or(ServiceError::NoConfigDir)?;
    Ok(config.join(UNIT_DIR).join(UNIT_NAME))
}

/// Writes the unit through a temporary file, so systemd never reads half of one.
fn write_unit(path: &Path, unit: &str) -> Result<(), ServiceError> {
    let fail = |source| ServiceError::File {
        action: "write",
        path: path.display().to_string(),
        source,
    };
    let tmp = path.with_extension("service.tmp");
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    std::fs::write(&tmp, unit).map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}

/// Runs `systemctl --user ARGS`; `hint` says how to do without it.
fn systemctl(args: &[&str], hint: &'static str) -> Result<(), ServiceError> {
    let out = match Process::new("systemctl").arg("--user").args(args).output() {
        Ok(out) => out,
        Err(e) if e.kind() == ErrorKind::NotFound => return Err(ServiceError::NoSystemctl),
        Err(e) => {
            return Err(ServiceError::Systemctl {
                args: args.join(" "),
                reason: e.to_string(),
                hint,
            })
        }
    };
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    Err(ServiceError::Systemctl {
        args: args.join(" "),
        reason: stderr
            .lines()
            .next()
            .map_or_else(|| out.status.to_string(), str::to_string),
        hint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_unit_runs_up_with_the_absolute_binary_and_data_dir_and_restarts_on_failure() {
        let unit = render_unit(&argv(&[
            "/usr/local/bin/lattice-mount",
            "--data-dir",
            "/home/ada/.local/share/lattice-mount",
            "up",
            "--relay",
            "disabled",
        ]))
        .unwrap();
        assert_eq!(
            unit,
            "# Written by `lattice-mount service install`; `lattice-mount service uninstall` removes it.
[Unit]
Description=lattice-mount: the peer-to-peer replicated filesystem
StartLimitIntervalSec=300
StartLimitBurst=5

[Service]
Type=exec
ExecStart=/usr/local/bin/lattice-mount --data-dir /home/ada/.local/share/lattice-mount up --relay disabled
Restart=on-failure
RestartSec=10

[Install]
WantedBy=default.target
"
        );
    }

    #[test]
    fn arguments_with_spaces_quotes_specifiers_and_variables_are_quoted_for_systemd() {
        let q = |s: &str| quote(&OsString::from(s)).unwrap();
        assert_eq!(q("/home/ada/My Files"), "\"/home/ada/My Files\"");
        assert_eq!(q("50%"), "50%%");
        assert_eq!(q("$HOME"), "$$HOME");
        assert_eq!(q("say \"hi\" \\ o/"), "\"say \\\"hi\\\" \\\\ o/\"");
        assert_eq!(q(""), "\"\"");
        assert_eq!(q("a;b"), "\"a;b\"");
    }

    #[test]
    fn arguments_a_unit_file_cannot_carry_are_refused() {
        let err = quote(&OsString::from("two\nlines")).unwrap_err();
        assert!(matches!(err, ServiceError::Unquotable(_)), "{err}");
        use std::os::unix::ffi::OsStringExt;
        let err = quote(&OsString::from_vec(vec![0xff])).unwrap_err();
        assert!(matches!(err, ServiceError::Unquotable(_)), "{err}");
    }

    #[test]
    fn up_options_are_checked_with_the_real_cli_before_anything_is_written() {
        let base = ["/bin/lattice-mount", "--data-dir", "/d", "up"];
        let ok =
            |extra: &[&str]| check_up_command(&argv(&[&base[..], extra].concat()), Path::new("/d"));
        assert!(ok(&[]).is_ok());
        assert!(ok(&["--relay", "disabled", "/home/ada/Lattice"]).is_ok());
        let err = ok(&["--frobnicate"]).unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid options for `up` in the service: unexpected argument '--frobnicate' found"
        );
        let err = ok(&["Lattice"]).unwrap_err();
        assert!(
            matches!(err, ServiceError::RelativeMountpoint(ref p) if p.ends_with("/Lattice")),
            "{err}"
        );
        let err = ok(&["--data-dir", "/other"]).unwrap_err();
        assert!(matches!(err, ServiceError::DataDirInUpOptions), "{err}");
    }
}
