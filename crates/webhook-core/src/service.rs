//! The life of a server binary, shared by `webhook-ingest` and `webhook-worker` so that each
//! `main.rs` only says what it builds: the command line, the settings, logging and tracing, the
//! build, the run, and the last spans exported.
//!
//! Exit codes: 2 for a command line, or settings that cannot be loaded (the message names what
//! to fix); 1 when the server cannot start (its view of the settings refuses a value, a
//! dependency is misconfigured) or fails while running; 0 after a graceful stop.

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser};

use crate::Settings;

/// The command line of a server; everything else is a setting.
#[derive(Debug, Parser)]
struct Args {
    /// TOML configuration file (else WEBHOOK_CONFIG); environment variables override it.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
}

/// Which server this is.
#[derive(Clone, Copy, Debug)]
pub struct Binary {
    /// The name in its messages and `--help`, and the default `service.name` of its traces.
    pub name: &'static str,
    /// Shown by `--version`: the binary crate's `CARGO_PKG_VERSION`.
    pub version: &'static str,
    /// One line for `--help`.
    pub about: &'static str,
    /// What the log line after a successful build says is on its port, e.g. `listening`.
    pub listening: &'static str,
}

/// A server that was built: its port, and the future that runs it until it is stopped.
pub struct Started<R> {
    pub port: u16,
    pub run: R,
}

/// Runs a server: parses the command line (`--config PATH`, `--help`, `--version`), loads the
/// settings, starts logging (and tracing, see [`crate::telemetry`]), builds the server with
/// `build`, runs it, and exports the spans still buffered. Returns the exit code.
///
/// `build` gets the settings as loaded; it takes its view of them first
/// ([`Settings::for_ingest`], [`Settings::for_worker`]), so a setting only that server needs
/// stops it with the message of the view.
pub async fn main<B, F, R>(binary: Binary, build: B) -> ExitCode
where
    B: FnOnce(Settings) -> F,
    F: Future<Output = anyhow::Result<Started<R>>>,
    R: Future<Output = anyhow::Result<()>>,
{
    let Binary {
        name,
        version,
        about,
        listening,
    } = binary;
    // Exits 2 with clap's message on a wrong command line, 0 after --help or --version.
    let matches = Args::command()
        .name(name)
        .bin_name(name)
        .version(version)
        .about(about)
        .get_matches();
    let args = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let settings = match Settings::load(args.config.as_deref()) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = crate::telemetry::init_service(&settings.log.level, settings.log.format, name) {
        eprintln!("{name}: {e}");
        return ExitCode::from(2);
    }
    let code = match build(settings).await {
        Ok(Started { port, run }) => {
            tracing::info!(port, "{name} {listening}");
            match run.await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{name} failed: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(e) => {
            tracing::error!("{name} cannot start: {e:#}");
            eprintln!("{name} cannot start: {e:#}");
            ExitCode::FAILURE
        }
    };
    // The spans still buffered are exported before the process ends.
    crate::telemetry::shutdown();
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        let matches = Args::command()
            .name("webhook-test")
            .version("1.2.3")
            .try_get_matches_from(std::iter::once("webhook-test").chain(args.iter().copied()))?;
        Args::from_arg_matches(&matches)
    }

    #[test]
    fn the_command_line_takes_a_config_file_only() {
        assert_eq!(parse(&[]).unwrap().config, None);
        for args in [&["--config", "/etc/w.toml"][..], &["--config=/etc/w.toml"]] {
            assert_eq!(
                parse(args).unwrap().config.as_deref(),
                Some(std::path::Path::new("/etc/w.toml")),
                "{args:?}"
            );
        }
        let err = parse(&["--confg", "/etc/w.toml"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::UnknownArgument);
        assert_eq!(err.exit_code(), 2);
        assert_eq!(parse(&["extra"]).unwrap_err().exit_code(), 2);
        assert_eq!(parse(&["--config"]).unwrap_err().exit_code(), 2);
        let version = parse(&["--version"]).unwrap_err();
        assert_eq!(version.kind(), clap::error::ErrorKind::DisplayVersion);
        assert_eq!(version.to_string(), "webhook-test 1.2.3\n");
        assert_eq!(version.exit_code(), 0);
    }
}
