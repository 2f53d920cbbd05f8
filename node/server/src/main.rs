//! The `ringstore` binary: parses the command line and hands over to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    ringstore_server::run(ringstore_server::Cli::parse())
}
