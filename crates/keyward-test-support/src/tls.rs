//! TLS servers for tests, never the machine's own: a certificate authority made by the
//! test ([`TestCa`]), and a PostgreSQL ([`TlsPostgres`]) or Redis ([`TlsRedis`]) the test
//! starts with a certificate that CA signed, on its own free port, with its files in a
//! temporary directory. Both stop when dropped.
//!
//! Where the server programs are missing, `start` prints the `SKIPPED` line of
//! [`require`](crate::require) and returns `None`, or fails under
//! `KEYWARD_TEST_REQUIRE_SERVICES=1`.

use std::io::Read as _;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::require;

/// How long a server may take to start before the test fails.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A certificate authority made for one test, and a server certificate it signed for
/// `localhost` and `127.0.0.1` (ECDSA P-256, PEM).
#[derive(Debug, Clone)]
pub struct TestCa {
    /// The CA's certificate: what a client trusts.
    pub ca_pem: String,
    /// The server's certificate, signed by the CA.
    pub server_cert_pem: String,
    /// The server certificate's private key (PKCS #8).
    pub server_key_pem: String,
}

impl TestCa {
    /// A fresh CA named `name` and a server certificate it signed.
    ///
    /// # Panics
    /// If key generation or signing fails.
    #[must_use]
    pub fn new(name: &str) -> Self {
        let ca_key = KeyPair::generate().expect("generate the CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, name);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).expect("self-sign the CA");
        let issuer = Issuer::new(ca, ca_key);

        let server_key = KeyPair::generate().expect("generate the server key");
        let mut server =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("server parameters");
        server
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = server
            .signed_by(&server_key, &issuer)
            .expect("sign the server certificate");
        Self {
            ca_pem: ca_cert.pem(),
            server_cert_pem: server_cert.pem(),
            server_key_pem: server_key.serialize_pem(),
        }
    }

    /// Writes `ca.pem`, `server.crt` and `server.key` (mode 0600) into `dir`; returns the
    /// path of `ca.pem`.
    ///
    /// # Panics
    /// If a file can't be written.
    pub fn write_to(&self, dir: &Path) -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, &self.ca_pem).expect("write ca.pem");
        std::fs::write(dir.join("server.crt"), &self.server_cert_pem).expect("write server.crt");
        let key = dir.join("server.key");
        std::fs::write(&key, &self.server_key_pem).expect("write server.key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
            .expect("chmod server.key");
        ca
    }
}

/// A free TCP port on 127.0.0.1 (free when asked; a server started right after takes it).
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A PostgreSQL cluster of the test's own, with `ssl = on`: a fresh data directory in a
/// temporary directory, a free port on 127.0.0.1, its socket directory in the temporary
/// directory, and `trust` authentication (a password in the URL is never checked, so a
/// test can look for it in output). Stopped (`pg_ctl stop -m immediate`) on drop.
#[derive(Debug)]
pub struct TlsPostgres {
    /// Its port on 127.0.0.1.
    pub port: u16,
    ca_path: PathBuf,
    bin: PathBuf,
    data: PathBuf,
    owner: Option<(u32, u32)>,
    // Last, so that it is removed after the server stopped.
    dir: tempfile::TempDir,
}

impl TlsPostgres {
    /// Starts a cluster for the test named `test`, or returns `None` (after the `SKIPPED`
    /// line) where no PostgreSQL server programs are installed.
    ///
    /// # Panics
    /// If the programs are there but the cluster does not start, or (through
    /// [`require`]) they are missing under `KEYWARD_TEST_REQUIRE_SERVICES=1`.
    #[must_use]
    pub fn start(test: &str) -> Option<Self> {
        let bin = postgres_bin_dir();
        if !require(
            bin.is_some(),
            test,
            "no PostgreSQL server programs (initdb, pg_ctl) under /usr/lib/postgresql/*/bin or on the PATH",
        ) {
            return None;
        }
        let bin = bin?;
        // initdb refuses to run as root: the cluster then belongs to the `postgres` user.
        let owner = if running_as_root() {
            let owner = user_ids("postgres");
            if !require(
                owner.is_some(),
                test,
                "running as root and no `postgres` user to own a PostgreSQL cluster",
            ) {
                return None;
            }
            owner
        } else {
            None
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let ca_path = TestCa::new("keyward test CA (PostgreSQL)").write_to(dir.path());
        let data = dir.path().join("data");
        if let Some((uid, gid)) = owner {
            for path in [
                dir.path(),
                &dir.path().join("server.crt"),
                &dir.path().join("server.key"),
            ] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown to postgres");
            }
        }
        let initdb = as_owner(Command::new(bin.join("initdb")), dir.path(), owner)
            .args([
                "--auth=trust",
                "--username=postgres",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
                "-D",
            ])
            .arg(&data)
            .stdout(Stdio::null())
            .output()
            .expect("run initdb");
        assert!(
            initdb.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&initdb.stderr)
        );
        let mut server = Self {
            port: 0,
            ca_path,
            bin,
            data,
            owner,
            dir,
        };
        // A port found free can be taken by another test before the server binds it.
        for attempt in 1..=3 {
            server.port = free_port();
            if server.pg_ctl_start() {
                return Some(server);
            }
            assert!(
                attempt < 3,
                "PostgreSQL did not start: {}",
                std::fs::read_to_string(server.dir.path().join("postgres.log")).unwrap_or_default()
            );
        }
        unreachable!("the loop returns or panics")
    }

    fn pg_ctl_start(&self) -> bool {
        let dir = self.dir.path().display();
        let options = format!(
            "-p {port} -k {dir} -c listen_addresses=127.0.0.1 -c ssl=on \
             -c ssl_cert_file={dir}/server.crt -c ssl_key_file={dir}/server.key \
             -c fsync=off -c max_connections=50 -c shared_buffers=16MB",
            port = self.port,
        );
        as_owner(
            Command::new(self.bin.join("pg_ctl")),
            self.dir.path(),
            self.owner,
        )
        .arg("-D")
        .arg(&self.data)
        .arg("-l")
        .arg(self.dir.path().join("postgres.log"))
        .args([
            "-w",
            "-t",
            &START_TIMEOUT.as_secs().to_string(),
            "-o",
            &options,
            "start",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    }

    /// `postgres://postgres:PASSWORD@127.0.0.1:PORT/postgres`, then `?query` unless
    /// `query` is empty.
    #[must_use]
    pub fn url(&self, password: &str, query: &str) -> String {
        let base = format!(
            "postgres://postgres:{password}@127.0.0.1:{}/postgres",
            self.port
        );
        if query.is_empty() {
            base
        } else {
            format!("{base}?{query}")
        }
    }

    /// The `ca.pem` that signed the server's certificate (for `sslrootcert`).
    #[must_use]
    pub fn ca_path(&self) -> &Path {
        &self.ca_path
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let _ = as_owner(
            Command::new(self.bin.join("pg_ctl")),
            self.dir.path(),
            self.owner,
        )
        .arg("-D")
        .arg(&self.data)
        .args(["-m", "immediate", "-w", "stop"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    }
}

/// A Redis of the test's own that speaks only TLS (`--port 0 --tls-port P`, clients not
/// asked for certificates), with no persistence; killed by its handle on drop.
#[derive(Debug)]
pub struct TlsRedis {
    /// Its TLS port on 127.0.0.1.
    pub port: u16,
    ca: TestCa,
    ca_path: PathBuf,
    child: Child,
    // Kept for its files; last, so that it is removed after the server stopped.
    _dir: tempfile::TempDir,
}

impl TlsRedis {
    /// Starts a Redis for the test named `test`, or returns `None` (after the `SKIPPED`
    /// line) where `redis-server` is not installed.
    ///
    /// # Panics
    /// If `redis-server` is there but does not start (or was built without TLS), or
    /// (through [`require`]) is missing under `KEYWARD_TEST_REQUIRE_SERVICES=1`.
    #[must_use]
    pub fn start(test: &str) -> Option<Self> {
        let installed = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !require(installed, test, "redis-server is not installed") {
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = TestCa::new("keyward test CA (Redis)");
        let ca_path = ca.write_to(dir.path());
        let file = |name: &str| dir.path().join(name).display().to_string();
        let log = dir.path().join("redis.log");
        for attempt in 1..=3 {
            let port = free_port();
            let mut child = Command::new("redis-server")
                .args(["--port", "0", "--tls-port", &port.to_string()])
                .args(["--bind", "127.0.0.1"])
                .args(["--tls-cert-file", &file("server.crt")])
                .args(["--tls-key-file", &file("server.key")])
                .args(["--tls-ca-cert-file", &file("ca.pem")])
                .args(["--tls-auth-clients", "no"])
                .args(["--save", "", "--appendonly", "no"])
                .args(["--dir", &file("")])
                .args(["--logfile", &log.display().to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start redis-server");
            let deadline = Instant::now() + START_TIMEOUT;
            let started = loop {
                if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
                    break true;
                }
                if child.try_wait().expect("redis-server status").is_some()
                    || Instant::now() > deadline
                {
                    let _ = child.kill();
                    let _ = child.wait();
                    break false;
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            if started {
                return Some(Self {
                    port,
                    ca,
                    ca_path,
                    child,
                    _dir: dir,
                });
            }
            let mut text = String::new();
            let _ = std::fs::File::open(&log).and_then(|mut f| f.read_to_string(&mut text));
            assert!(attempt < 3, "redis-server did not start with TLS: {text}");
        }
        unreachable!("the loop returns or panics")
    }

    /// `rediss://127.0.0.1:PORT`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }

    /// The `ca.pem` that signed the server's certificate.
    #[must_use]
    pub fn ca_path(&self) -> &Path {
        &self.ca_path
    }

    /// The CA that signed the server's certificate.
    #[must_use]
    pub fn ca(&self) -> &TestCa {
        &self.ca
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The directory of `initdb` and `pg_ctl`: the newest `/usr/lib/postgresql/*/bin`
/// (Debian's layout), else wherever the `PATH` has them.
fn postgres_bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .find(|dir| dir.join("initdb").exists() && dir.join("pg_ctl").exists())
    })
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The user and group id of `user` from `/etc/passwd`.
fn user_ids(user: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == user).then_some(())?;
        let uid = fields.nth(1)?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        Some((uid, gid))
    })
}

/// `command`, run in `dir` and as `owner` (user and group ids) when given: the owner
/// may not be allowed into the test's own working directory.
fn as_owner(mut command: Command, dir: &Path, owner: Option<(u32, u32)>) -> Command {
    command.current_dir(dir);
    if let Some((uid, gid)) = owner {
        command.uid(uid).gid(gid);
    }
    command
}
