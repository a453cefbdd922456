//! The `deprovision` binary: loads `.env`, parses the command line, starts
//! telemetry, runs one command and maps its result to an exit code (README,
//! "Exit status"; the classification is [`cli::exit_code`]). Everything else
//! lives in the library.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Before clap reads its `env` fallbacks, and fail closed: a `.env` that cannot
    // be parsed whole would otherwise drop settings such as PROTECTED_USERS.
    if let Err(e) = deprovision::config::load_dotenv() {
        report(&e);
        return ExitCode::from(deprovision::config::EXIT_CONFIG);
    }
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return cli::usage_error(&e),
    };
    // Declared before the runtime so that it drops after it: the last spans and
    // metrics are flushed once every task has finished.
    let _telemetry = deprovision::telemetry::init(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            report(&format!("cannot start the async runtime: {e}"));
            return ExitCode::from(70);
        }
    };
    match runtime.block_on(cli::dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            // `{:#}` prints the whole context chain on one line; errors never carry
            // secrets (secret types redact themselves).
            tracing::error!(error = format!("{e:#}"), "command failed");
            report(&format!("{e:#}"));
            cli::exit_code(&e)
        }
    }
}

/// Prints `error: …` on standard error, ignoring a closed pipe (`eprintln!`
/// would panic and turn the exit status into 101).
fn report(e: &dyn std::fmt::Display) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "error: {e}");
}
