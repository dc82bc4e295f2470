//! The `ginx` command: parses flags and calls the library.

use clap::{Parser, Subcommand};
use ginx::compile::{load_and_compile, Config, LogFormat};
use ginx::config::error::display_path;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "ginx",
    version,
    about = "An nginx-like HTTP gateway driven by YAML"
)]
struct Cli {
    /// The main configuration file [default: ./ginx.yaml, else /etc/ginx/ginx.yaml]
    #[arg(short = 'c', long = "config", global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Check the configuration and exit: 0 when it is fine, 1 with every error.
    #[arg(short = 't', long = "test")]
    test: bool,
    /// Check the configuration, then print every file of it, each marked with its path.
    #[arg(short = 'T', long = "test-dump")]
    dump: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Show which server and location a URL reaches and what would happen, without any network.
    Explain {
        /// The URL, e.g. http://example.com/api/users?x=1
        url: String,
        /// The address the request arrives on [default: a listener with the URL's port]
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
        /// The request method.
        #[arg(short = 'X', long, default_value = "GET")]
        method: String,
        /// The client address (for allow/deny and $remote_addr).
        #[arg(long, default_value = "127.0.0.1")]
        client: std::net::IpAddr,
        /// Extra request headers, "Name: value".
        #[arg(short = 'H', long = "header", value_name = "HEADER")]
        headers: Vec<String>,
    },
}

// mimalloc: glibc's malloc showed as 5% of a proxied request's CPU time;
// mimalloc's thread-local free lists make small allocations cheap (see
// src/alloc.rs for why not the mimalloc crate's own wrapper).
#[global_allocator]
static ALLOCATOR: ginx::alloc::MiMalloc = ginx::alloc::MiMalloc;

// No transparent huge pages (src/alloc.rs says why), from before the first
// allocation: the standard library allocates before main, and mimalloc
// would have faulted in its first two 2 MiB pages by then. Prioritised
// .init_array entries run before every unprioritised one (mimalloc's own
// constructor among them) and before main.
#[cfg(target_os = "linux")]
#[used]
#[link_section = ".init_array.00100"]
static NO_HUGE_PAGES_BEFORE_THE_FIRST_ALLOCATION: extern "C" fn() = {
    extern "C" fn no_huge_pages() {
        ginx::alloc::no_transparent_huge_pages();
    }
    no_huge_pages
};

fn default_config_path() -> PathBuf {
    let local = PathBuf::from("ginx.yaml");
    if local.exists() {
        local
    } else {
        PathBuf::from("/etc/ginx/ginx.yaml")
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let path = cli.config.clone().unwrap_or_else(default_config_path);
    match cli.command {
        Some(Command::Explain {
            url,
            listen,
            method,
            client,
            headers,
        }) => explain(&path, url, listen, &method, client, headers),
        None if cli.test || cli.dump => test(&path, cli.dump),
        None => run(&path),
    }
}

/// Load and compile, printing every error (and warning) to stderr.
fn load(path: &Path) -> Option<Config> {
    match load_and_compile(path) {
        Ok(config) => {
            for w in &config.warnings {
                eprintln!("ginx: warning: {w}");
            }
            Some(config)
        }
        Err(errors) => {
            for e in errors.iter() {
                eprintln!("{e}");
            }
            eprintln!(
                "ginx: configuration file {} test failed ({} error{})",
                display_path(path),
                errors.len(),
                if errors.len() == 1 { "" } else { "s" }
            );
            None
        }
    }
}

fn test(path: &Path, dump: bool) -> ExitCode {
    let Some(config) = load(path) else {
        return ExitCode::FAILURE;
    };
    println!(
        "ginx: configuration file {} test is successful",
        display_path(path)
    );
    if dump {
        for source in &config.sources {
            println!("# configuration file {}:", display_path(&source.path));
            print!("{}", source.text);
            if !source.text.ends_with('\n') {
                println!();
            }
            println!();
        }
    }
    ExitCode::SUCCESS
}

fn explain(
    path: &Path,
    url: String,
    listen: Option<SocketAddr>,
    method: &str,
    client: std::net::IpAddr,
    headers: Vec<String>,
) -> ExitCode {
    let Some(config) = load(path) else {
        return ExitCode::FAILURE;
    };
    let Ok(method) = method.parse::<http::Method>() else {
        eprintln!("ginx: bad method {method:?}");
        return ExitCode::FAILURE;
    };
    let mut request = ginx::explain::ExplainRequest::get(&url);
    request.method = method;
    request.listen = listen;
    request.client = client;
    for h in headers {
        match h.split_once(':') {
            Some((k, v)) => request
                .headers
                .push((k.trim().to_string(), v.trim().to_string())),
            None => {
                eprintln!("ginx: bad header {h:?}: expected \"Name: value\"");
                return ExitCode::FAILURE;
            }
        }
    }
    match ginx::explain::explain(&config, &request) {
        Ok(report) => {
            print!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ginx: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(
            config
                .settings
                .error_log_level
                .as_str()
                .to_ascii_lowercase(),
        )
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.settings.error_log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn run(path: &Path) -> ExitCode {
    let Some(config) = load(path) else {
        return ExitCode::FAILURE;
    };
    init_logging(&config);
    // One worker thread is tokio's current-thread scheduler: no work-stealing
    // queues, no cross-thread wakeups, as an nginx worker.
    let mut runtime = match config.settings.worker_threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match runtime.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ginx: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let path = path.to_path_buf();
    runtime.block_on(async move {
        let shutdown_timeout = config.settings.shutdown_timeout;
        let running = match ginx::serve::start(config, Vec::new()).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("ginx: {e}");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(config = %display_path(&path), "ginx started");
        tokio::spawn(release_free_memory());
        // Saving a file is a reload; so is SIGHUP.
        let watcher = match ginx::reload::spawn_watcher(running.shared.clone(), path.clone()) {
            Ok(task) => Some(task),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the configuration files; reload with SIGHUP");
                None
            }
        };
        wait_for_stop(&running, &path).await;
        if let Some(w) = watcher {
            w.abort();
        }
        tracing::info!(
            "stopping: letting in-flight requests finish (up to {:?})",
            shutdown_timeout
        );
        if running.shutdown(shutdown_timeout).await {
            tracing::info!("stopped");
        } else {
            tracing::warn!("stopped with connections still open after shutdown_timeout");
        }
        ExitCode::SUCCESS
    })
}

/// Once a second, ask mimalloc to give back to the OS the memory freed more
/// than its purge delay ago. mimalloc does that only when it is allocating,
/// so a gateway that went quiet (10,000 keep-alive connections parked after
/// a burst, say) would otherwise keep its peak RSS until the next request.
async fn release_free_memory() {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        // SAFETY: mi_collect has no preconditions; mimalloc is the global
        // allocator and this thread's heap is in a consistent state between
        // two polls of the runtime.
        unsafe { libmimalloc_sys::mi_collect(true) };
    }
}

/// Wait for SIGTERM or SIGINT; SIGHUP reloads the configuration meanwhile.
async fn wait_for_stop(running: &ginx::serve::Running, path: &Path) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        std::future::pending::<()>().await;
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = int.recv() => return,
            _ = hup.recv() => {
                ginx::reload::reload(&running.shared, path, "SIGHUP").await;
            }
        }
    }
}
