//! The broker's installation: Apache Kafka's jars from Maven Central in a per-version cache.
//!
//! Maven resolves `org.apache.kafka:kafka_2.13` with its whole runtime classpath from the
//! committed `kafka/pom.xml` and checks every download against its published checksum
//! (`--strict-checksums`). The jars land in a temporary directory that is renamed into place
//! only when complete, so an interrupted install is redone, never half-used.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _};

use crate::KAFKA_VERSION;

const POM: &str = include_str!("../kafka/pom.xml");
const LOG4J: &str = include_str!("../kafka/log4j2.properties");
/// Maven's dependency plugin, pinned.
const DEPENDENCY_PLUGIN: &str = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1";

/// An installed broker: how to start its JVM.
#[derive(Debug, Clone)]
pub struct Installation {
    /// The `java` executable (Java 17 or newer).
    pub java: PathBuf,
    /// The directory holding the broker's jars.
    pub libs: PathBuf,
    /// The log4j2 configuration the broker is started with.
    pub log4j: PathBuf,
}

/// Where fleetstream caches what it downloads: `$FLEETSTREAM_CACHE`, else
/// `$XDG_CACHE_HOME/fleetstream`, else `~/.cache/fleetstream`.
pub fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("FLEETSTREAM_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("fleetstream");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    home.join(".cache/fleetstream")
}

/// This version's directory in the cache.
pub fn version_dir() -> PathBuf {
    cache_root().join(format!("kafka-{KAFKA_VERSION}"))
}

impl Installation {
    /// The cached installation, if it is complete.
    pub fn find() -> Option<Installation> {
        let dir = version_dir();
        if !dir.join("libs/.complete").exists() {
            return None;
        }
        let java = find_java().ok()?;
        Some(Installation { java, libs: dir.join("libs"), log4j: dir.join("log4j2.properties") })
    }

    /// The cached installation, installing it first if needed; `say` narrates what it does.
    pub fn ensure(say: &dyn Fn(&str)) -> anyhow::Result<Installation> {
        if let Some(found) = Installation::find() {
            // The logging configuration is ours, not Maven's: keep it current.
            write_if_changed(&found.log4j, LOG4J)?;
            return Ok(found);
        }
        let dir = version_dir();
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let java = match find_java() {
            Ok(java) => java,
            Err(_) => {
                system_packages(&["openjdk-17-jre-headless"], "Java 17 (the broker is a JVM program)", say)?;
                find_java()?
            }
        };
        if which("mvn").is_none() {
            system_packages(&["maven"], "Maven (it fetches the broker from Maven Central)", say)?;
        }
        say(&format!("fetching Apache Kafka {KAFKA_VERSION} from Maven Central into {} (once)", dir.display()));
        let build = dir.join(format!("build.{}", std::process::id()));
        std::fs::create_dir_all(&build)?;
        std::fs::write(build.join("pom.xml"), POM)?;
        let staging = build.join("libs");
        let output = Command::new("mvn")
            .current_dir(&build)
            .args(["-B", "-q", "--strict-checksums"])
            .arg(format!("{DEPENDENCY_PLUGIN}:copy-dependencies"))
            .arg(format!("-Dkafka.version={KAFKA_VERSION}"))
            .arg(format!("-DoutputDirectory={}", staging.display()))
            .arg("-DincludeScope=runtime")
            .stdin(Stdio::null())
            .output()
            .context("cannot run mvn")?;
        if !output.status.success() {
            let _ = std::fs::remove_dir_all(&build);
            bail!(
                "mvn could not fetch Apache Kafka {KAFKA_VERSION}: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let broker_jar = staging.join(format!("kafka_2.13-{KAFKA_VERSION}.jar"));
        if !broker_jar.exists() {
            bail!("mvn finished but {} is missing", broker_jar.display());
        }
        std::fs::write(staging.join(".complete"), KAFKA_VERSION)?;
        let libs = dir.join("libs");
        // Another process may have finished first; its copy is as good as ours.
        if std::fs::rename(&staging, &libs).is_err() && !libs.join(".complete").exists() {
            bail!("cannot move the broker's jars into {}", libs.display());
        }
        let _ = std::fs::remove_dir_all(&build);
        let log4j = dir.join("log4j2.properties");
        write_if_changed(&log4j, LOG4J)?;
        let jars = std::fs::read_dir(&libs).map(|d| d.count().saturating_sub(1)).unwrap_or(0);
        say(&format!("Apache Kafka {KAFKA_VERSION} installed: {jars} jars in {}", libs.display()));
        Ok(Installation { java, libs, log4j })
    }

    /// The JVM's classpath argument.
    pub fn classpath(&self) -> String {
        format!("{}/*", self.libs.display())
    }
}

fn write_if_changed(path: &Path, text: &str) -> anyhow::Result<()> {
    if std::fs::read_to_string(path).ok().as_deref() != Some(text) {
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(program)).find(|p| p.is_file())
}

/// `java` from `$JAVA_HOME` or `PATH`, if it is Java 17 or newer (Kafka 4's minimum).
fn find_java() -> anyhow::Result<PathBuf> {
    let java = std::env::var_os("JAVA_HOME")
        .map(|home| PathBuf::from(home).join("bin/java"))
        .filter(|p| p.is_file())
        .or_else(|| which("java"))
        .context("java is not installed")?;
    let output = Command::new(&java).arg("-version").stdin(Stdio::null()).output().context("cannot run java -version")?;
    let text = String::from_utf8_lossy(&output.stderr);
    let major = text
        .split('"')
        .nth(1)
        .and_then(|v| v.split(['.', '-', '+']).next())
        .and_then(|m| m.parse::<u32>().ok())
        .context("cannot read the version of java")?;
    if major < 17 {
        bail!("{} is Java {major}; Apache Kafka {KAFKA_VERSION} needs Java 17 or newer", java.display());
    }
    Ok(java)
}

/// Installs Debian packages when running as root with apt-get; otherwise says what to install.
fn system_packages(packages: &[&str], what: &str, say: &dyn Fn(&str)) -> anyhow::Result<()> {
    let root = nix::unistd::Uid::effective().is_root();
    if !root || which("apt-get").is_none() {
        bail!("{what} is missing: please install {} (e.g. apt-get install {})", packages.join(" "), packages.join(" "));
    }
    say(&format!("installing {what}: apt-get install {}", packages.join(" ")));
    let quiet = |c: &mut Command| {
        c.env("DEBIAN_FRONTEND", "noninteractive").stdin(Stdio::null()).stdout(Stdio::null());
    };
    let mut update = Command::new("apt-get");
    update.args(["update", "-qq"]);
    quiet(&mut update);
    let mut install = Command::new("apt-get");
    install.args(["install", "-y", "-qq", "--no-install-recommends"]).args(packages);
    quiet(&mut install);
    for mut step in [update, install] {
        let status = step.status().context("cannot run apt-get")?;
        if !status.success() {
            bail!("apt-get failed ({status}) while installing {}", packages.join(" "));
        }
    }
    Ok(())
}
