//! `lattice-mount`: the daemon (`up`) and the commands that talk to it over the control
//! socket. Every failure prints one line `lattice-mount: <reason>` to stderr; exit codes
//! are 1 (failure), 2 (usage, from clap) and 3 (no daemon running).

mod cli;
mod client;
mod control;
mod daemon;
mod error;
mod generated;
mod leave;
mod output;
mod preflight;
mod report;
mod service;
mod watch;
mod web;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, Context};
use clap::Parser;
use tracing_subscriber::EnvFilter;

use lattice_mount::proto::control::{
    request, response, DeleteRequest, FetchModeRequest, GcRequest, InviteRequest, LeaveRequest,
    PauseRequest, PeersRequest, RevokeRequest, SettingRequest, SnapshotRequest, StoreSetting,
    SyncRequest, WebRequest,
};

use crate::cli::{home_dir, Cli, Command};
use crate::error::CliError;

/// Log filter without `RUST_LOG`: this program's warnings only. The libraries' own
/// lines (iroh retrying a relay or a DNS publish while offline) are for debugging and
/// stay behind `RUST_LOG`; the daemon says what matters to the user itself.
const DEFAULT_LOG_FILTER: &str = "lattice_mount=warn";

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Up { .. }) {
        default_sigpipe();
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER)),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lattice-mount: {}", e.one_line());
            e.exit_code()
        }
    }
}

/// Lets a command end quietly, as Unix tools do, when the reader of its output goes away
/// (`| head`). The daemon keeps SIGPIPE ignored: a peer closing a socket is an error there.
fn default_sigpipe() {
    // SAFETY: setting a signal's disposition touches no memory of this process.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn run(cli: Cli) -> Result<(), CliError> {
    let data_dir = match cli.command {
        // Generated text needs no data dir: packaging runs these without a HOME.
        Command::Completions { .. } | Command::Man { .. } => PathBuf::new(),
        _ => absolute(match cli.data_dir {
            Some(dir) => dir,
            None => home_dir(".local/share/lattice-mount")
                .ok_or_else(|| anyhow!("HOME is not set; pass --data-dir or set LATTICE_HOME"))?,
        })?,
    };
    match cli.command {
        Command::Up {
            mountpoint,
            name,
            allow_other,
            no_passthrough,
            relay,
            bind,
            cache_mib,
            web,
        } => {
            let mountpoint = match mountpoint {
                Some(m) => m,
                None => home_dir("Lattice")
                    .ok_or_else(|| anyhow!("HOME is not set; give a MOUNTPOINT"))?,
            };
            daemon::up(daemon::UpOptions {
                data_dir,
                mountpoint: absolute(mountpoint)?,
                display_name: name,
                allow_other,
                passthrough: !no_passthrough,
                net: lattice_mount::NetConfig { relay, bind },
                cache: lattice_mount::CacheBudget::from_mib(cache_mib),
                web,
            })
        }
        Command::Create { name } => {
            let created = client::create(&data_dir, &name)?;
            println!("created store {name} ({})", created.id);
            Ok(())
        }
        Command::Status { json } => {
            let status = client::status(&data_dir)?;
            if json {
                println!("{}", output::status_json(&status));
            } else {
                print!("{}", output::status_human(&status));
            }
            Ok(())
        }
        Command::History {
            path,
            deleted,
            json,
        } => {
            let (sent, history) = client::history(&data_dir, &path, deleted)?;
            match (deleted, json) {
                (false, true) => println!("{}", output::history_json(&sent, &history)),
                (false, false) => {
                    print!("{}", output::history_human(&history.entries));
                    print!("{}", output::versions_human(&history));
                }
                (true, true) => println!("{}", output::deleted_json(&sent, &history)),
                (true, false) => print!("{}", output::deleted_human(&history)),
            }
            Ok(())
        }
        Command::Restore {
            path,
            version,
            at,
            to,
            json,
        } => {
            let restored = client::restore(&data_dir, &path, version, at, to.as_deref())?;
            if json {
                println!("{}", output::restore_json(&restored));
            } else {
                print!("{}", output::restore_human(&restored));
            }
            Ok(())
        }
        Command::Verify { path, json } => {
            let verified = client::verify(&data_dir, &path)?;
            if json {
                println!("{}", output::verify_json(&verified));
            } else {
                print!("{}", output::verify_human(&verified));
            }
            for failure in &verified.failures {
                eprintln!("lattice-mount: {failure}");
            }
            match verified.failures.len() {
                0 => Ok(()),
                n => Err(CliError::Refused(format!(
                    "{}: {n} check(s) failed",
                    verified.path
                ))),
            }
        }
        Command::Conflicts { store, json } => {
            let conflicts = client::conflicts(&data_dir, store.as_deref())?;
            if json {
                println!("{}", output::conflicts_json(&conflicts));
            } else {
                print!("{}", output::conflicts_human(&conflicts));
            }
            Ok(())
        }
        Command::Resolve { path, keep, json } => {
            let resolved = client::resolve(&data_dir, &path, &keep)?;
            if json {
                println!("{}", output::resolve_json(&resolved));
            } else {
                print!("{}", output::resolve_human(&resolved));
            }
            Ok(())
        }
        Command::Watch { path, json } => client::watch(
            &data_dir,
            path.as_deref(),
            |w| eprintln!("watching {}", w.stores.join(", ")),
            |e| {
                use std::io::Write as _;
                let line = match json {
                    true => output::watch_json(e),
                    false => output::watch_human(e),
                };
                let mut out = std::io::stdout().lock();
                writeln!(out, "{line}")?;
                out.flush()
            },
        ),
        Command::Down => client::down(&data_dir),
        Command::Web => {
            match client::ask(&data_dir, request::Kind::Web(WebRequest {}))? {
                response::Kind::Web(w) => println!("{}", w.url),
                other => return Err(client::unexpected(&other)),
            }
            Ok(())
        }
        Command::Invite {
            name,
            role,
            expires,
        } => {
            let kind = request::Kind::Invite(InviteRequest {
                store: name,
                role,
                expires_secs: expires.as_secs(),
            });
            match client::ask(&data_dir, kind)? {
                response::Kind::Invite(i) => println!("{}", i.token),
                other => return Err(client::unexpected(&other)),
            }
            Ok(())
        }
        Command::Join { token, name } => {
            let progress = output::Progress::new();
            let store = client::join(&data_dir, &token, name.as_deref(), |p| progress.show(p))?;
            progress.finish();
            println!("joined store {store}");
            Ok(())
        }
        Command::Peers { name, json } => {
            match client::ask(
                &data_dir,
                request::Kind::Peers(PeersRequest { store: name }),
            )? {
                response::Kind::Peers(p) if json => println!("{}", output::peers_json(&p.peers)),
                response::Kind::Peers(p) => print!("{}", output::peers_human(&p.peers)),
                other => return Err(client::unexpected(&other)),
            }
            Ok(())
        }
        Command::Revoke { name, peer } => {
            let kind = request::Kind::Revoke(RevokeRequest {
                store: name.clone(),
                target: peer,
            });
            match client::ask(&data_dir, kind)? {
                response::Kind::Revoke(r) if r.key.is_empty() => {
                    println!("revoked the invite token for {name}")
                }
                response::Kind::Revoke(r) => println!("revoked {} from {name}", r.key),
                other => return Err(client::unexpected(&other)),
            }
            Ok(())
        }
        Command::Sync { name } => {
            match client::ask(&data_dir, request::Kind::Sync(SyncRequest { store: name }))? {
                response::Kind::Sync(r) => print!("{}", output::sync_human(&r)),
                other => return Err(client::unexpected(&other)),
            }
            Ok(())
        }
        Command::Pause { name } => pause(&data_dir, name, true),
        Command::Resume { name } => pause(&data_dir, name, false),
        Command::Gc { name } => {
            let kind = request::Kind::Gc(GcRequest {
                store: name.unwrap_or_default(),
            });
            match client::ask(&data_dir, kind)? {
                response::Kind::Gc(r) => print!("{}", output::gc_human(&r)),
                other => return Err(client::unexpected(&other)),
            }
            Ok(())
        }
        Command::Retention { name, days } => {
            setting(&data_dir, StoreSetting::Retention, name, days)
        }
        Command::Horizon { name, days } => setting(&data_dir, StoreSetting::Horizon, name, days),
        Command::Snapshot { name, label, rm } => {
            let kind = request::Kind::Snapshot(SnapshotRequest {
                store: name.clone(),
                label: label.clone().unwrap_or_default(),
                remove: rm,
            });
            match client::ask(&data_dir, kind)? {
                response::Kind::Snapshot(r) => {
                    print!(
                        "{}",
                        output::snapshot_human(&name, label.as_deref(), rm, &r)
                    )
                }
                other => return Err(client::unexpected(&other)),
            }
            Ok(())
        }
        Command::Leave {
            name,
            yes,
            export,
            abandon,
        } => {
            let export_dir = match export {
                Some(dir) => absolute(dir)?.display().to_string(),
                None => String::new(),
            };
            let question = match export_dir.as_str() {
                "" => format!("Leave store {name} and remove its local data?"),
                dir => format!(
                    "Copy store {name} into {dir}, then leave it and remove its local data?"
                ),
            };
            confirm(yes, &question, "leave", &name)?;
            let kind = request::Kind::Leave(LeaveRequest {
                store: name.clone(),
                export_dir,
                abandon,
            });
            match client::ask(&data_dir, kind)? {
                response::Kind::Leave(r) => print!("{}", output::leave_human(&name, &r)),
                other => return Err(client::unexpected(&other)),
            }
            Ok(())
        }
        Command::Delete { name, yes } => {
            confirm(
                yes,
                &format!("Delete store {name} for every member?"),
                "delete",
                &name,
            )?;
            let kind = request::Kind::Delete(DeleteRequest {
                store: name.clone(),
            });
            match client::ask(&data_dir, kind)? {
                response::Kind::Delete(r) => print!("{}", output::delete_human(&name, &r)),
                other => return Err(client::unexpected(&other)),
            }
            Ok(())
        }
        Command::Service { action } => service::run(action, &data_dir),
        Command::Completions { shell } => generated::completions(shell),
        Command::Man { command } => generated::man(&command),
        Command::FetchMode { name, mode } => {
            let kind = request::Kind::FetchMode(FetchModeRequest { store: name, mode });
            match client::ask(&data_dir, kind)? {
                response::Kind::FetchMode(_) => Ok(()),
                other => Err(client::unexpected(&other)),
            }
        }
    }
}

fn pause(data_dir: &std::path::Path, name: Option<String>, pause: bool) -> Result<(), CliError> {
    let kind = request::Kind::Pause(PauseRequest {
        store: name.unwrap_or_default(),
        pause,
    });
    match client::ask(data_dir, kind)? {
        response::Kind::Pause(p) => {
            let verb = if pause { "paused" } else { "resumed" };
            for s in p.stores {
                println!("{verb} {s}");
            }
            Ok(())
        }
        other => Err(client::unexpected(&other)),
    }
}

/// Shows a store setting, after setting it to `days` if given.
fn setting(
    data_dir: &std::path::Path,
    setting: StoreSetting,
    store: String,
    days: Option<u32>,
) -> Result<(), CliError> {
    let kind = request::Kind::Setting(SettingRequest {
        store: store.clone(),
        setting: setting as i32,
        days,
    });
    match client::ask(data_dir, kind)? {
        response::Kind::Setting(r) => {
            println!("{}", output::setting_line(setting, &store, r.days));
            Ok(())
        }
        other => Err(client::unexpected(&other)),
    }
}

/// Asks `question` on the terminal unless `yes`; refuses when stdin is not a terminal.
fn confirm(yes: bool, question: &str, verb: &str, store: &str) -> Result<(), CliError> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(anyhow!(
            "refusing to {verb} {store} without confirmation: stdin is not a terminal (pass --yes)"
        )
        .into());
    }
    eprint!("{question} [y/N] ");
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .context("cannot read the answer")?;
    match answer.trim() {
        "y" | "Y" | "yes" => Ok(()),
        _ => Err(anyhow!("not confirmed: {store} is unchanged").into()),
    }
}

fn absolute(path: PathBuf) -> Result<PathBuf, CliError> {
    Ok(std::path::absolute(&path).with_context(|| format!("cannot resolve {}", path.display()))?)
}
