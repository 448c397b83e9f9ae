//! What both binaries' `main` does, once: logs to stderr (stdout stays for `--json`
//! output), an async runtime, errors printed as `error: …` with their causes and exit
//! status 1, and the signals that start a graceful shutdown.

use std::future::Future;

/// Logs go to stderr, filtered by `RUST_LOG` or else `default_filter`.
pub fn init_logging(default_filter: &str) {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default_filter.into()),
        )
        .init();
}

/// Runs `main` on a multi-threaded runtime; on error prints it with every cause and exits 1.
pub fn run_main<F: Future<Output = Result<(), E>>, E: std::fmt::Debug + std::fmt::Display>(
    main: F,
) {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(main) {
        // The alternate form of an anyhow error shows its chain of causes on one line.
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
