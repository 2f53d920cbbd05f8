//! The `ringstore` command: configuration, logging, and the commands it offers.

mod admin;
mod admin_cli;
mod cluster;
mod config;
mod credentials;
mod http;
mod metrics;
mod mirror;
mod pace;
mod server;
mod transition;

pub use config::{AdminArgs, AdminCommand, AdminStatusArgs, Cli, Command, LogFormat, ServerArgs};

/// Runs a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> std::process::ExitCode {
    match cli.command {
        Command::Server(args) => {
            config::init_logging(args.log_format);
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build();
            let result = runtime
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(server::serve(args)));
            match result {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("ringstore: {e:#}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
        Command::Admin(args) => admin_cli::run(args),
    }
}
