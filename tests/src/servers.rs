//! Real NATS (JetStream), Redis and Postgres servers for tests.
//!
//! Started once per test process on free loopback ports, in a temp dir, never on the
//! standard ports. Each server runs under a small shell watchdog that stops it and
//! removes its directory as soon as the test process is gone, so a finished, failed or
//! killed test run leaves no orphans and no temp dirs. Postgres refuses to run as root,
//! so as root it runs as the `postgres` system user (via `runuser`).

use std::collections::BTreeSet;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The servers of this test process.
#[derive(Debug)]
pub struct Services {
    pub nats_url: String,
    pub nats_port: u16,
    pub redis_url: String,
    pub redis_port: u16,
    pub pg_port: u16,
    /// Superuser connection to the `postgres` database (for creating test databases).
    pub pg_admin_url: String,
    pub root: PathBuf,
}

static SERVICES: OnceLock<Result<Services, String>> = OnceLock::new();
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Starts the servers on first use; later calls return the same ones.
pub fn services() -> &'static Services {
    let result = SERVICES.get_or_init(|| start().map_err(|e| format!("{e:#}")));
    match result {
        Ok(s) => s,
        Err(e) => panic!("test servers failed to start: {e}"),
    }
}

/// A name unique in this process (and across processes, via the pid).
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A free loopback port for a server about to be started.
///
/// Two rules keep it free until that server binds it. It lies below the kernel's
/// ephemeral range (32768 and up), so no outgoing connection of this busy process can take
/// it in between; and this process never hands the same port out twice, because a
/// `bind(:0)` probe that is released at once may return the port a server spawned a moment
/// earlier has not bound yet (that once put Postgres's port under NATS, and the test's
/// Postgres client was answered with NATS's `INFO` line). The start point is random per
/// process, so test binaries running side by side rarely meet either.
pub fn free_port() -> u16 {
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    // A prime that does not divide SPAN: the walk visits every port of the range once.
    const STEP: u32 = 7_919;
    static ISSUED: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut issued = ISSUED.lock().unwrap_or_else(|e| e.into_inner());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let start = nanos ^ std::process::id().wrapping_mul(2_654_435_761);
    for i in 0..SPAN {
        let port = (LOW + (start % SPAN + i * STEP) % SPAN) as u16;
        if !issued.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            issued.insert(port);
            return port;
        }
    }
    panic!("no free loopback port in {LOW}..{}", LOW + SPAN)
}

fn start() -> Result<Services> {
    let root = tempfile::Builder::new()
        .prefix("sluice-test-")
        .tempdir()
        .context("creating temp dir")?
        .keep();
    let nats_port = free_port();
    let nats_dir = root.join("nats");
    std::fs::create_dir_all(&nats_dir)?;
    supervise(
        &[
            &find(
                "nats-server",
                &["/usr/sbin/nats-server", "/usr/bin/nats-server"],
            )?,
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            &nats_port.to_string(),
            "-sd",
            &nats_dir.display().to_string(),
        ],
        &root.join("nats.log"),
        None,
        None,
    )?;

    let redis_port = free_port();
    start_redis(&root, redis_port)?;

    let pg_port = free_port();
    let pg_dir = root.join("pg");
    let bin = postgres_bin_dir()?;
    let as_root = is_root();
    let run_as = |args: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        if as_root {
            v.extend(["runuser", "-u", "postgres", "--"].map(String::from));
        }
        v.extend(args.iter().map(|s| s.to_string()));
        v
    };
    std::fs::create_dir_all(&pg_dir)?;
    if as_root {
        // The postgres user must reach its directory; the other servers are already
        // writing in `root`, so only `pg` changes hands.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))?;
        let ok = Command::new("chown")
            .args(["-R", "postgres:postgres", &pg_dir.display().to_string()])
            .status()?
            .success();
        if !ok {
            bail!("cannot hand {} to the postgres user", pg_dir.display());
        }
    }
    let initdb = run_as(&[
        &bin.join("initdb").display().to_string(),
        "-D",
        &pg_dir.display().to_string(),
        "-U",
        "postgres",
        "--auth=trust",
        "-E",
        "UTF8",
        "--no-sync",
    ]);
    let out = Command::new(&initdb[0])
        .args(&initdb[1..])
        .stdin(Stdio::null())
        .output()
        .context("running initdb")?;
    if !out.status.success() {
        bail!("initdb failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let port_s = pg_port.to_string();
    let socket_dir = format!("unix_socket_directories={}", pg_dir.display());
    let postgres = run_as(&[
        &bin.join("postgres").display().to_string(),
        "-D",
        &pg_dir.display().to_string(),
        "-p",
        &port_s,
        "-c",
        "listen_addresses=127.0.0.1",
        "-c",
        &socket_dir,
        "-c",
        "fsync=off",
        "-c",
        "synchronous_commit=off",
        "-c",
        "full_page_writes=off",
        "-c",
        "max_connections=400",
        "-c",
        "shared_buffers=128MB",
    ]);
    let args: Vec<&str> = postgres.iter().map(String::as_str).collect();
    let pidfile = pg_dir.join("postmaster.pid");
    supervise(
        &args,
        &root.join("postgres.log"),
        Some(&pidfile),
        Some(&root),
    )?;

    for (name, port) in [
        ("nats", nats_port),
        ("redis", redis_port),
        ("postgres", pg_port),
    ] {
        wait_port(port, Duration::from_secs(60)).with_context(|| {
            format!(
                "{name} did not start; see {}",
                root.join(format!("{name}.log")).display()
            )
        })?;
    }
    // Postgres accepts TCP a moment before it accepts logins.
    std::thread::sleep(Duration::from_millis(300));
    Ok(Services {
        nats_url: format!("nats://127.0.0.1:{nats_port}"),
        nats_port,
        redis_url: format!("redis://127.0.0.1:{redis_port}"),
        redis_port,
        pg_port,
        pg_admin_url: format!("postgres://postgres@127.0.0.1:{pg_port}/postgres"),
        root,
    })
}

fn start_redis(root: &Path, port: u16) -> Result<()> {
    supervise(
        &[
            &find("redis-server", &["/usr/bin/redis-server"])?,
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            &root.display().to_string(),
        ],
        &root.join("redis.log"),
        None,
        None,
    )
}

impl Services {
    /// Stops this process's Redis (an outage; its data is gone, as after a real crash).
    pub fn stop_redis(&self) -> Result<()> {
        use std::io::{Read, Write};
        let mut s = TcpStream::connect(("127.0.0.1", self.redis_port))?;
        s.write_all(b"SHUTDOWN NOSAVE\r\n")?;
        let _ = s.read(&mut [0u8; 64]);
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.redis_port)).is_ok() {
            if start.elapsed() > Duration::from_secs(10) {
                bail!("redis did not stop");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Starts this process's Redis again on the same port.
    pub fn start_redis(&self) -> Result<()> {
        start_redis(&self.root, self.redis_port)?;
        wait_port(self.redis_port, Duration::from_secs(30))
    }
}

/// Runs `args` under a watchdog shell: when this process exits, the server is stopped
/// (by its pidfile if given, else its pid) and `cleanup` is removed.
fn supervise(
    args: &[&str],
    log: &Path,
    pidfile: Option<&Path>,
    cleanup: Option<&Path>,
) -> Result<()> {
    let quoted: Vec<String> = args.iter().map(|a| shell_quote(a)).collect();
    let stop = match pidfile {
        Some(p) => format!(
            "if [ -f {p} ]; then kill -INT $(head -1 {p}) 2>/dev/null; fi; kill $pid 2>/dev/null",
            p = shell_quote(&p.display().to_string())
        ),
        None => "kill $pid 2>/dev/null".to_string(),
    };
    let rm = cleanup
        .map(|d| format!("rm -rf {}", shell_quote(&d.display().to_string())))
        .unwrap_or_default();
    let script = format!(
        "{cmd} >{log} 2>&1 </dev/null & pid=$!\n\
         while kill -0 {parent} 2>/dev/null && kill -0 $pid 2>/dev/null; do sleep 0.3; done\n\
         {stop}\n\
         i=0; while kill -0 $pid 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done\n\
         kill -9 $pid 2>/dev/null\n\
         {rm}\n",
        cmd = quoted.join(" "),
        log = shell_quote(&log.display().to_string()),
        parent = std::process::id(),
    );
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", args[0]))?;
    Ok(())
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn wait_port(port: u16, limit: Duration) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("port {port} did not open within {limit:?}")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A binary on PATH, else the first existing fallback path.
pub fn find(name: &str, fallbacks: &[&str]) -> Result<String> {
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let p = dir.join(name);
            if p.is_file() {
                return Ok(p.display().to_string());
            }
        }
    }
    for f in fallbacks {
        if Path::new(f).is_file() {
            return Ok(f.to_string());
        }
    }
    bail!("{name} not found on PATH or in {fallbacks:?}; run scripts/test (it installs it)")
}

/// Debian's newest `/usr/lib/postgresql/<version>/bin`, else the directory of `initdb` on PATH.
pub fn postgres_bin_dir() -> Result<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    let initdb = find("initdb", &[])?;
    let dir = Path::new(&initdb)
        .parent()
        .context("initdb has no parent dir")?;
    if dir.join("postgres").is_file() {
        return Ok(dir.to_path_buf());
    }
    bail!("no PostgreSQL server binaries found; run scripts/test (it installs postgresql)")
}

/// A Postgres of one test's own, which the test may stop and start again (readiness
/// tests). The shared servers of [`services`] must never be stopped: other tests of the
/// process use them. A watchdog stops this one and removes its directory when the test
/// process is gone, however it ended.
pub struct OwnPostgres {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
}

impl OwnPostgres {
    /// Initialises a cluster in a fresh directory and starts it on a free port.
    pub fn start_new() -> Result<OwnPostgres> {
        let root = &services().root;
        let dir = root.join(unique("ownpg"));
        std::fs::create_dir_all(&dir)?;
        let bin = postgres_bin_dir()?;
        let pg = OwnPostgres {
            port: free_port(),
            dir,
            bin,
        };
        if is_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres", &pg.dir.display().to_string()])
                .status()?
                .success();
            if !ok {
                bail!("cannot hand {} to the postgres user", pg.dir.display());
            }
        }
        let data = pg.data().display().to_string();
        pg.run(&[
            &pg.bin.join("initdb").display().to_string(),
            "-D",
            &data,
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ])
        .context("initdb")?;
        // The watchdog: once this process is gone, stop the server and remove its files.
        let script = format!(
            "while kill -0 {parent} 2>/dev/null; do sleep 0.3; done\n\
             {stop} >/dev/null 2>&1\n\
             rm -rf {dir}\n",
            parent = std::process::id(),
            stop = pg
                .command(&[
                    &pg.bin.join("pg_ctl").display().to_string(),
                    "-D",
                    &data,
                    "-m",
                    "immediate",
                    "stop"
                ])
                .iter()
                .map(|a| shell_quote(a))
                .collect::<Vec<_>>()
                .join(" "),
            dir = shell_quote(&pg.dir.display().to_string()),
        );
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the Postgres watchdog")?;
        pg.start()?;
        Ok(pg)
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Superuser URL of database `db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Starts (or restarts) the server and waits until it accepts connections.
    pub fn start(&self) -> Result<()> {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off -c max_connections=100",
            self.port,
            self.dir.display()
        );
        self.run(&[
            &self.bin.join("pg_ctl").display().to_string(),
            "-D",
            &self.data().display().to_string(),
            "-l",
            &self.dir.join("postgres.log").display().to_string(),
            "-o",
            &opts,
            "-w",
            "start",
        ])
        .context("pg_ctl start")
    }

    /// Stops the server (fast: open connections are closed) and waits for it to be gone.
    pub fn stop(&self) -> Result<()> {
        self.run(&[
            &self.bin.join("pg_ctl").display().to_string(),
            "-D",
            &self.data().display().to_string(),
            "-m",
            "fast",
            "-w",
            "stop",
        ])
        .context("pg_ctl stop")
    }

    fn command(&self, args: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        if is_root() {
            v.extend(["runuser", "-u", "postgres", "--"].map(String::from));
        }
        v.extend(args.iter().map(|s| s.to_string()));
        v
    }

    fn run(&self, args: &[&str]) -> Result<()> {
        let cmd = self.command(args);
        let out = Command::new(&cmd[0])
            .args(&cmd[1..])
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", args[0]))?;
        if !out.status.success() {
            bail!(
                "{} failed: {}{}",
                args[0],
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

/// A certificate authority with a server certificate (for `localhost` and `127.0.0.1`)
/// and a client certificate, generated fresh with rcgen, as PEM files in `dir`.
#[derive(Debug, Clone)]
pub struct TestPki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TestPki {
    /// `client_name` is the client certificate's common name (Postgres maps it to the
    /// database user for `cert` authentication).
    pub fn generate(dir: &Path, client_name: &str) -> Result<TestPki> {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
            IsCa, KeyPair, KeyUsagePurpose,
        };
        std::fs::create_dir_all(dir)?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "Sluice test CA");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;
        let leaf = |names: Vec<String>,
                    cn: &str,
                    usage: ExtendedKeyUsagePurpose|
         -> Result<(String, String)> {
            let key = KeyPair::generate()?;
            let mut p = CertificateParams::new(names)?;
            p.distinguished_name.push(DnType::CommonName, cn);
            p.extended_key_usages = vec![usage];
            let cert = p.signed_by(&key, &ca)?;
            Ok((cert.pem(), key.serialize_pem()))
        };
        let (server_cert, server_key) = leaf(
            vec!["localhost".into(), "127.0.0.1".into()],
            "localhost",
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        let (client_cert, client_key) =
            leaf(Vec::new(), client_name, ExtendedKeyUsagePurpose::ClientAuth)?;
        let pki = TestPki {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        };
        std::fs::write(&pki.ca, ca.pem())?;
        std::fs::write(&pki.server_cert, server_cert)?;
        std::fs::write(&pki.server_key, server_key)?;
        std::fs::write(&pki.client_cert, client_cert)?;
        std::fs::write(&pki.client_key, client_key)?;
        Ok(pki)
    }
}

/// NATS, Redis and Postgres that speak only TLS and want credentials: NATS with a user
/// and password and a client certificate (mutual TLS), Redis with an ACL user (the default user is off) and no plaintext port,
/// Postgres whose `pg_hba.conf` accepts only `hostssl` with a password and a client
/// certificate (plaintext TCP is rejected). All use the certificates of `pki`; stopped and removed when the test
/// process ends.
#[derive(Debug)]
pub struct TlsServices {
    pub pki: TestPki,
    pub user: String,
    pub password: String,
    pub nats_port: u16,
    pub redis_port: u16,
    pub pg_port: u16,
    pub root: PathBuf,
}

impl TlsServices {
    pub fn start(user: &str, password: &str) -> Result<TlsServices> {
        let root = tempfile::Builder::new()
            .prefix("sluice-tls-test-")
            .tempdir()
            .context("creating temp dir")?
            .keep();
        let pki = TestPki::generate(&root.join("pki"), user)?;
        let q = |p: &Path| format!("{:?}", p.display().to_string());

        let nats_port = free_port();
        let nats_conf = root.join("nats.conf");
        std::fs::write(
            &nats_conf,
            format!(
                "listen: \"127.0.0.1:{nats_port}\"\nserver_name: tls_test\n\
                 jetstream {{ store_dir: {store} }}\n\
                 tls {{ cert_file: {cert}, key_file: {key}, ca_file: {ca}, verify: true, timeout: 5 }}\n\
                 authorization {{ users = [ {{ user: {user:?}, password: {password:?} }} ] }}\n",
                store = q(&root.join("nats")),
                cert = q(&pki.server_cert),
                key = q(&pki.server_key),
                ca = q(&pki.ca),
            ),
        )?;
        supervise(
            &[
                &find(
                    "nats-server",
                    &["/usr/sbin/nats-server", "/usr/bin/nats-server"],
                )?,
                "-c",
                &nats_conf.display().to_string(),
            ],
            &root.join("nats.log"),
            None,
            Some(&root),
        )?;

        let redis_port = free_port();
        let redis_conf = root.join("redis.conf");
        std::fs::write(
            &redis_conf,
            format!(
                "bind 127.0.0.1\nport 0\ntls-port {redis_port}\n\
                 tls-cert-file {cert}\ntls-key-file {key}\ntls-ca-cert-file {ca}\n\
                 tls-auth-clients no\nsave \"\"\nappendonly no\ndir {dir}\n\
                 user default off\nuser {user} on >{password} ~* &* +@all\n",
                cert = pki.server_cert.display(),
                key = pki.server_key.display(),
                ca = pki.ca.display(),
                dir = root.display(),
            ),
        )?;
        supervise(
            &[
                &find("redis-server", &["/usr/bin/redis-server"])?,
                &redis_conf.display().to_string(),
            ],
            &root.join("redis.log"),
            None,
            None,
        )?;

        let pg_port = free_port();
        let pg = root.join("pg");
        std::fs::create_dir_all(&pg)?;
        let pwfile = pg.join("pw");
        std::fs::write(&pwfile, format!("{password}\n"))?;
        // Postgres wants its key private to its own user.
        std::fs::copy(&pki.server_cert, pg.join("server.pem"))?;
        std::fs::copy(&pki.server_key, pg.join("server.key"))?;
        std::fs::copy(&pki.ca, pg.join("ca.pem"))?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(
                pg.join("server.key"),
                std::fs::Permissions::from_mode(0o600),
            )?;
            if is_root() {
                std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))?;
                let ok = Command::new("chown")
                    .args(["-R", "postgres:postgres", &pg.display().to_string()])
                    .status()?
                    .success();
                if !ok {
                    bail!("cannot hand {} to the postgres user", pg.display());
                }
            }
        }
        let bin = postgres_bin_dir()?;
        let data = pg.join("data");
        run_pg(&[
            &bin.join("initdb").display().to_string(),
            "-D",
            &data.display().to_string(),
            "-U",
            user,
            &format!("--pwfile={}", pwfile.display()),
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--no-sync",
        ])?;
        let hba = "local all all trust\n\
                   hostnossl all all all reject\n\
                   hostssl all all 127.0.0.1/32 scram-sha-256 clientcert=verify-full\n\
                   hostssl all all ::1/128 scram-sha-256 clientcert=verify-full\n";
        let hba_path = data.join("pg_hba.conf");
        run_pg(&[
            "sh",
            "-c",
            &format!(
                "printf '%s' {} > {}",
                shell_quote(hba),
                shell_quote(&hba_path.display().to_string())
            ),
        ])?;
        let postgres = pg_command(&[
            &bin.join("postgres").display().to_string(),
            "-D",
            &data.display().to_string(),
            "-p",
            &pg_port.to_string(),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            &format!("unix_socket_directories={}", pg.display()),
            "-c",
            "fsync=off",
            "-c",
            "ssl=on",
            "-c",
            &format!("ssl_cert_file={}", pg.join("server.pem").display()),
            "-c",
            &format!("ssl_key_file={}", pg.join("server.key").display()),
            "-c",
            &format!("ssl_ca_file={}", pg.join("ca.pem").display()),
        ]);
        let args: Vec<&str> = postgres.iter().map(String::as_str).collect();
        supervise(
            &args,
            &root.join("postgres.log"),
            Some(&data.join("postmaster.pid")),
            None,
        )?;
        for (name, port) in [
            ("nats", nats_port),
            ("redis", redis_port),
            ("postgres", pg_port),
        ] {
            wait_port(port, Duration::from_secs(60)).with_context(|| {
                format!(
                    "{name} did not start; see {}",
                    root.join(format!("{name}.log")).display()
                )
            })?;
        }
        std::thread::sleep(Duration::from_millis(300));
        Ok(TlsServices {
            pki,
            user: user.to_string(),
            password: password.to_string(),
            nats_port,
            redis_port,
            pg_port,
            root,
        })
    }

    /// `tls://user:password@localhost:port`.
    pub fn nats_url(&self) -> String {
        format!(
            "tls://{}:{}@localhost:{}",
            self.user, self.password, self.nats_port
        )
    }

    /// `rediss://user:password@localhost:port`.
    pub fn redis_url(&self) -> String {
        format!(
            "rediss://{}:{}@localhost:{}",
            self.user, self.password, self.redis_port
        )
    }

    /// Database `db` over verified TLS (`sslmode=verify-full` with the test CA) with the
    /// client certificate.
    pub fn database_url(&self, db: &str) -> String {
        format!(
            "postgres://{}:{}@localhost:{}/{db}?sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
            self.user,
            self.password,
            self.pg_port,
            self.pki.ca.display(),
            self.pki.client_cert.display(),
            self.pki.client_key.display()
        )
    }
}

fn pg_command(args: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    if is_root() {
        v.extend(["runuser", "-u", "postgres", "--"].map(String::from));
    }
    v.extend(args.iter().map(|s| s.to_string()));
    v
}

fn run_pg(args: &[&str]) -> Result<()> {
    let cmd = pg_command(args);
    let out = Command::new(&cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", args[0]))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}{}",
            args[0],
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A JetStream cluster of nats-server processes with routes on loopback. Any node can be
/// SIGKILLed; the rest are stopped and removed when the test process ends.
#[derive(Debug)]
pub struct NatsCluster {
    pub nodes: Vec<NatsNode>,
    pub root: PathBuf,
}

#[derive(Debug)]
pub struct NatsNode {
    /// The node's `server_name` (what JetStream reports as a stream's leader).
    pub name: String,
    pub port: u16,
    pid_file: PathBuf,
}

impl NatsCluster {
    pub fn start(size: usize) -> Result<NatsCluster> {
        let root = tempfile::Builder::new()
            .prefix("sluice-nats-cluster-")
            .tempdir()
            .context("creating temp dir")?
            .keep();
        let bin = find(
            "nats-server",
            &["/usr/sbin/nats-server", "/usr/bin/nats-server"],
        )?;
        let ports: Vec<(u16, u16)> = (0..size).map(|_| (free_port(), free_port())).collect();
        let routes = ports
            .iter()
            .map(|(_, r)| format!("nats://127.0.0.1:{r}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes = Vec::new();
        for (i, (port, route)) in ports.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let dir = root.join(&name);
            std::fs::create_dir_all(&dir)?;
            let pid_file = root.join(format!("{name}.pid"));
            supervise(
                &[
                    &bin,
                    "-js",
                    "-a",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "-sd",
                    &dir.display().to_string(),
                    "--server_name",
                    &name,
                    "--cluster_name",
                    "sluice-test",
                    "--cluster",
                    &format!("nats://127.0.0.1:{route}"),
                    "--routes",
                    &routes,
                    "-P",
                    &pid_file.display().to_string(),
                ],
                &root.join(format!("{name}.log")),
                None,
                // Not tied to one node: a killed node must not take the others' files.
                None,
            )?;
            nodes.push(NatsNode {
                name,
                port: *port,
                pid_file,
            });
        }
        // Removes the directory once the test process is gone (and the nodes with it).
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "while kill -0 {parent} 2>/dev/null; do sleep 0.3; done; sleep 6; rm -rf {dir}",
                parent = std::process::id(),
                dir = shell_quote(&root.display().to_string()),
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the cluster cleanup watchdog")?;
        for n in &nodes {
            wait_port(n.port, Duration::from_secs(60))
                .with_context(|| format!("nats {} did not start", n.name))?;
        }
        Ok(NatsCluster { nodes, root })
    }

    /// Every node's client URL, comma-separated (as `NATS_URL` takes them).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Waits until JetStream answers through every node (the meta group has a leader).
    pub async fn wait_ready(&self, limit: Duration) -> Result<()> {
        let limit = limit.max(Duration::from_secs(1));
        let start = Instant::now();
        for n in &self.nodes {
            loop {
                let ok = async {
                    let c = async_nats::connect(format!("nats://127.0.0.1:{}", n.port))
                        .await
                        .ok()?;
                    let r = c.request("$JS.API.INFO", "".into()).await.ok()?;
                    let v: serde_json::Value = serde_json::from_slice(&r.payload).ok()?;
                    v.get("error").is_none().then_some(())
                };
                if tokio::time::timeout(Duration::from_secs(5), ok)
                    .await
                    .ok()
                    .flatten()
                    .is_some()
                {
                    break;
                }
                if start.elapsed() > limit {
                    let log = std::fs::read_to_string(self.root.join(format!("{}.log", n.name)))
                        .unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(30).collect();
                    bail!(
                        "JetStream of cluster node {} not ready within {limit:?}; log tail:\n{}",
                        n.name,
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    );
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(())
    }

    /// SIGKILLs the node named `name` and waits until its port is closed.
    pub fn kill(&self, name: &str) -> Result<()> {
        let node = self
            .nodes
            .iter()
            .find(|n| n.name == name)
            .with_context(|| format!("no node {name}"))?;
        let pid = std::fs::read_to_string(&node.pid_file)?.trim().to_string();
        let ok = Command::new("kill").args(["-9", &pid]).status()?.success();
        if !ok {
            bail!("kill -9 {pid} failed");
        }
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", node.port)).is_ok() {
            if start.elapsed() > Duration::from_secs(10) {
                bail!("node {name} still answers after SIGKILL");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}
