//! A throw-away PostgreSQL server for tests: `initdb` into a temp dir, `postgres` on a free
//! port of 127.0.0.1 (trust authentication; no fsync, which only an OS crash could notice), one
//! fresh database per caller. Killed and deleted on drop.
//!
//! The binaries come from Debian's `postgresql` package (`scripts/test-deps` installs it):
//! `$PG_BIN` if set, else the newest `/usr/lib/postgresql/*/bin`, else `PATH`. PostgreSQL
//! refuses to run as root, so as root the server runs as the `postgres` user (`setpriv`, which
//! execs rather than forks: the child we hold is the postmaster itself).

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::{free_port, unique};

/// A running PostgreSQL server.
#[derive(Debug)]
pub struct Postgres {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    bin: PathBuf,
}

/// Where the server binaries are.
pub fn postgres_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("PG_BIN") {
        return Ok(PathBuf::from(p));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    let found = std::env::var_os("PATH").and_then(|path| std::env::split_paths(&path).find(|d| d.join("initdb").exists()));
    found.context("PostgreSQL is not installed: run `scripts/test-deps` (Debian package postgresql), or set PG_BIN")
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false)
}

/// A command for a server binary, run as `postgres` when we are root.
fn server_command(bin: &Path, program: &str) -> Command {
    if is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=postgres", "--regid=postgres", "--init-groups", "--"]).arg(bin.join(program));
        c
    } else {
        Command::new(bin.join(program))
    }
}

impl Postgres {
    /// initdb + start; returns once the server accepts connections.
    pub fn start() -> anyhow::Result<Postgres> {
        let bin = postgres_bin()?;
        let dir = std::env::temp_dir().join(unique("fleetstream-pg"));
        std::fs::create_dir_all(&dir)?;
        if is_root() {
            let status = Command::new("chown").args(["postgres:postgres"]).arg(&dir).status().context("chown")?;
            if !status.success() {
                bail!("cannot hand {} to the postgres user (is the postgresql package installed?)", dir.display());
            }
        }
        let data = dir.join("data");
        let out = server_command(&bin, "initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"])
            .current_dir(&dir)
            .stdin(Stdio::null())
            .output()
            .context("cannot run initdb")?;
        if !out.status.success() {
            let _ = std::fs::remove_dir_all(&dir);
            bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let mut pg = Postgres { child: None, port: free_port(), dir, bin };
        pg.spawn()?;
        Ok(pg)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::env::var_os("PG_LOG").is_some();
        let child = server_command(&self.bin, "postgres")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-p", &self.port.to_string(), "-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", self.dir.display()))
            .args(["-c", "fsync=off", "-c", "full_page_writes=off", "-c", "max_connections=200"])
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(if log { Stdio::inherit() } else { Stdio::null() })
            .stderr(if log { Stdio::inherit() } else { Stdio::null() })
            .spawn()
            .context("cannot start postgres")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                bail!("postgres exited at start-up: {status} (PG_LOG=1 shows its log)");
            }
            let ready = TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && Command::new(self.bin.join("pg_isready"))
                    .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres"])
                    .status()
                    .is_ok_and(|s| s.success());
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("postgres did not accept connections on port {} within 30 s", self.port);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A new, empty database; returns its URL.
    pub fn create_database(&self, name: &str) -> anyhow::Result<String> {
        let out = Command::new(self.bin.join("createdb"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", name])
            .stdin(Stdio::null())
            .output()
            .context("cannot run createdb")?;
        if !out.status.success() {
            bail!("createdb {name} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(self.url(name))
    }

    /// The URL of a database on this server.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Runs SQL with psql and returns its unaligned output (for tests that look inside).
    pub fn psql(&self, database: &str, sql: &str) -> anyhow::Result<String> {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", "-d", database, "-c", sql])
            .stdin(Stdio::null())
            .output()
            .context("cannot run psql")?;
        if !out.status.success() {
            bail!("psql failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Stops the server at once (as a crash or an outage would); `restart` brings it back.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGQUIT: immediate shutdown, children included; SIGKILL only if it hangs.
            let _ = Command::new("kill").args(["-QUIT", &child.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and data.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.spawn()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
