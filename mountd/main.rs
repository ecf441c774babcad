//! `lattice-mount`: the daemon (`up`) and the commands that talk to it over the control
//! socket. Every failure prints one line `lattice-mount: <reason>` to stderr; exit codes
//! are 1 (failure), 2 (usage, from clap) and 3 (no daemon running).

mod cli;
mod client;
mod control;
mod daemon;
mod error;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, Context};
use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::cli::{home_dir, Cli, Command};
use crate::error::CliError;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
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

fn run(cli: Cli) -> Result<(), CliError> {
    let data_dir = absolute(match cli.data_dir {
        Some(dir) => dir,
        None => home_dir(".local/share/lattice-mount")
            .ok_or_else(|| anyhow!("HOME is not set; pass --data-dir or set LATTICE_HOME"))?,
    })?;
    match cli.command {
        Command::Up {
            mountpoint,
            name,
            allow_other,
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
        Command::History { path, json } => {
            let (sent, history) = client::history(&data_dir, &path)?;
            if json {
                println!("{}", output::history_json(&sent, &history.entries));
            } else {
                print!("{}", output::history_human(&history.entries));
            }
            Ok(())
        }
        Command::Down => client::down(&data_dir),
    }
}

fn absolute(path: PathBuf) -> Result<PathBuf, CliError> {
    Ok(std::path::absolute(&path).with_context(|| format!("cannot resolve {}", path.display()))?)
}
