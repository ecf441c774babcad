//! Text generated from the CLI's clap definitions: shell completion scripts and man
//! pages, so they never drift from the commands.

use std::io::Write;

use anyhow::{anyhow, Context};
use clap::CommandFactory;

use crate::cli::Cli;
use crate::error::CliError;

/// Prints the completion script for `shell`.
pub(crate) fn completions(shell: clap_complete::Shell) -> Result<(), CliError> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "lattice-mount", &mut script);
    print(&script)
}

/// Prints the man page of the program, or of the subcommand at `path` (`service
/// install`), named `lattice-mount-service-install(1)` as the main page refers to it.
pub(crate) fn man(path: &[String]) -> Result<(), CliError> {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut page_of = &cmd;
    for name in path {
        page_of = page_of.find_subcommand(name).ok_or_else(|| {
            anyhow!(
                "no command `{}` (see `lattice-mount --help`)",
                path.join(" ")
            )
        })?;
    }
    let mut page = Vec::new();
    clap_mangen::Man::new(page_of.clone())
        .source(format!("lattice-mount {}", env!("CARGO_PKG_VERSION")))
        .render(&mut page)
        .context("rendering the man page")?;
    print(&page)
}

/// Writes generated text to stdout; a closed pipe (`| head`) is an error, not a panic.
fn print(bytes: &[u8]) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .context("writing to stdout")?;
    Ok(())
}
