//! Test harness: a real `stuisession serve` on a free loopback port with a
//! temporary file store, killed (SIGKILL) and its directory removed on drop.
//!
//! The binary comes from `STUISESSION_BIN` (default: `stuisession` on PATH).
//! When it can not be found the test panics: these tests never skip.

#![allow(dead_code)]

use std::collections::HashSet;
use std::env;
use std::fs::{self, File};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use stuisession_client::{Client, ClientOptions, CurveKeys};

/// How long a bridge may take to answer after being started (a loaded 2-core CI machine).
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

static PORTS: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
static DIRS: AtomicU64 = AtomicU64::new(0);

/// A loopback TCP port nobody listens on, never handed out twice in this process.
pub fn free_port() -> u16 {
    for _ in 0..100 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("could not bind a loopback port")
            .port();
        let mut guard = PORTS.lock().unwrap_or_else(|e| e.into_inner());
        if guard.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
    panic!("no free loopback port found");
}

/// The `stuisession` executable: `$STUISESSION_BIN`, else `stuisession` on PATH.
pub fn stuisession_bin() -> PathBuf {
    let configured = env::var_os("STUISESSION_BIN");
    let name = configured.clone().unwrap_or_else(|| "stuisession".into());
    let path = PathBuf::from(&name);
    let found = if path.components().count() > 1 {
        Some(path.clone()).filter(|p| p.is_file())
    } else {
        env::var_os("PATH").and_then(|paths| {
            env::split_paths(&paths)
                .map(|dir| dir.join(&path))
                .find(|candidate| candidate.is_file())
        })
    };
    match found {
        Some(p) => p,
        None => panic!(
            "the stuisession executable was not found ({}). These tests need a real bridge: \
             set STUISESSION_BIN to its path (e.g. STUISESSION_BIN=$PWD/.venv/bin/stuisession \
             after `make` created the venv), or put `stuisession` on PATH.",
            match configured {
                Some(v) => format!("STUISESSION_BIN={:?} is not a file", v),
                None => "STUISESSION_BIN is not set and `stuisession` is not on PATH".to_string(),
            }
        ),
    }
}

/// A unique temporary directory, removed by [`Bridge`]'s drop.
pub fn temp_dir() -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = env::temp_dir().join(format!(
        "stuisession-rs-{}-{}-{}",
        std::process::id(),
        DIRS.fetch_add(1, Ordering::SeqCst),
        nanos
    ));
    fs::create_dir_all(&dir).expect("could not create a temporary directory");
    dir
}

/// A temporary directory removed (with its contents) on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        TempDir(temp_dir())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// What to start a bridge with beyond the defaults.
#[derive(Debug, Clone, Default)]
pub struct Setup {
    /// More `serve` arguments (e.g. `--curve-secret FILE --curve-clients FILE`).
    pub args: Vec<String>,
    /// Also publish change notices: `--notify tcp://127.0.0.1:<free port>`.
    pub notify: bool,
    /// CURVE keys of the readiness probe (a bridge with CURVE refuses a plaintext one).
    pub probe_curve: Option<CurveKeys>,
}

/// A running bridge. Dropping it SIGKILLs the process and removes its files.
pub struct Bridge {
    child: Option<Child>,
    port: u16,
    notify_port: Option<u16>,
    setup: Setup,
    dir: PathBuf,
    starts: u32,
}

impl Bridge {
    /// Start a bridge on a free port with a fresh store; wait until it answers.
    pub fn start() -> Bridge {
        Bridge::start_with(Setup::default())
    }

    /// [`Bridge::start`] with more arguments (CURVE, notices).
    pub fn start_with(setup: Setup) -> Bridge {
        let dir = temp_dir();
        let mut last_failure = String::new();
        // a port can be taken between choosing and binding: try another one
        for _ in 0..3 {
            let mut bridge = Bridge {
                child: None,
                port: free_port(),
                notify_port: if setup.notify {
                    Some(free_port())
                } else {
                    None
                },
                setup: setup.clone(),
                dir: dir.clone(),
                starts: 0,
            };
            bridge.spawn();
            match bridge.try_wait_ready() {
                Ok(()) => return bridge,
                Err(failure) => {
                    last_failure = failure;
                    bridge.dir = PathBuf::new(); // keep the directory for the next try
                    drop(bridge);
                }
            }
        }
        let _ = fs::remove_dir_all(&dir);
        panic!("stuisession serve did not start: {}", last_failure);
    }

    /// `tcp://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    /// `tcp://127.0.0.1:<notify port>` (panics unless started with `notify`).
    pub fn notify_endpoint(&self) -> String {
        let port = self
            .notify_port
            .expect("the bridge was started without --notify");
        format!("tcp://127.0.0.1:{}", port)
    }

    /// The store directory.
    pub fn store(&self) -> PathBuf {
        self.dir.join("store")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join(format!("bridge-{}.log", self.starts))
    }

    /// The process id of the running bridge.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("bridge is not running").id() as i32
    }

    /// Start the process (on the same port and store) without waiting for it.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "bridge is already running");
        self.starts += 1;
        let log = File::create(self.log_path()).expect("could not create the bridge log");
        let log_err = log.try_clone().expect("could not clone the log handle");
        let bin = stuisession_bin();
        let mut command = Command::new(&bin);
        command
            .arg("serve")
            .arg("--bind")
            .arg(self.endpoint())
            .arg("--store")
            .arg(self.store())
            .arg("--audit")
            .arg("off")
            .arg("--log-level")
            .arg("WARNING")
            .args(&self.setup.args);
        if self.notify_port.is_some() {
            command.arg("--notify").arg(self.notify_endpoint());
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|e| panic!("could not run {}: {}", bin.display(), e));
        self.child = Some(child);
    }

    fn log_text(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn try_wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut options = ClientOptions::new(self.endpoint())
            .timeout(Duration::from_millis(500))
            .linger(Duration::from_millis(0))
            .max_tries(1);
        if let Some(keys) = &self.setup.probe_curve {
            options = options.curve(keys.clone());
        }
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(format!(
                        "it exited with {} before answering; its output:\n{}",
                        status,
                        self.log_text()
                    ));
                }
            }
            let mut probe = Client::with_options(options.clone())
                .map_err(|e| format!("probe client: {}", e))?;
            if probe.get_session_statistics().is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no answer to get_session_statistics within {:?}; its output:\n{}",
                    START_TIMEOUT,
                    self.log_text()
                ));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Wait until the bridge answers `get_session_statistics`; panic after [`START_TIMEOUT`].
    pub fn wait_ready(&mut self) {
        if let Err(failure) = self.try_wait_ready() {
            panic!("stuisession serve did not answer: {}", failure);
        }
    }

    /// SIGKILL the process and reap it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // SIGKILL on Unix
            let _ = child.wait();
        }
    }

    /// Kill, start again on the same port and store, wait until it answers.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
        self.wait_ready();
    }

    /// Send a signal to the bridge (e.g. SIGSTOP / SIGCONT).
    pub fn signal(&self, signal: i32) {
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill({}, {}) failed", self.pid(), signal);
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_ref() {
            // a stopped process dies of SIGKILL too; SIGCONT is not needed
            let _ = unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        }
        self.kill();
        if !self.dir.as_os_str().is_empty() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// A client of `bridge` with a short retry delay (tests fail fast) and upstream's other defaults.
pub fn client(bridge: &Bridge) -> Client {
    Client::with_options(
        ClientOptions::new(bridge.endpoint()).retry_delay(Duration::from_millis(200)),
    )
    .expect("client")
}

/// A client id unique to this test run.
pub fn unique_client_id(tag: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "rs-test-{}-{}-{}-{}",
        tag,
        std::process::id(),
        DIRS.fetch_add(1, Ordering::SeqCst),
        nanos % 1_000_000_000
    )
}

/// Run `stuisession` with these arguments; panic with its output unless it succeeds.
pub fn run_cli(args: &[&str]) -> String {
    let bin = stuisession_bin();
    let output = Command::new(&bin)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("could not run {}: {}", bin.display(), e));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "stuisession {:?} failed ({}): {}",
        args,
        output.status,
        text
    );
    text
}
