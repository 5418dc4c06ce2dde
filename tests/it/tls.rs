//! HTTPS in the server and agent certificates, with a throwaway CA made at test time:
//! the agent ships over TLS to a real server and real Postgres, refuses a server it
//! cannot verify, and a client certificate writes the host it names only.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use rackwatch::collect::shipper::Delivery;
use rackwatch::collect::simulator::SimulatedHost;
use rackwatch::config::{AgentTls, Config};
use rackwatch::model::Batch;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::support::TestApp;

/// A certificate authority that lives for one test.
struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
}

/// A certificate and its key, as PEM.
struct Issued {
    cert: String,
    key: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Ca { params, key, pem }
    }

    /// A certificate for `names` (DNS names or IP addresses), for a server or a client,
    /// valid from 2020 to `until`.
    fn issue(&self, names: &[&str], usage: ExtendedKeyUsagePurpose, until: (i32, u8)) -> Issued {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, names[0].clone());
        params.extended_key_usages = vec![usage];
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(until.0, until.1, 1);
        let key = KeyPair::generate().unwrap();
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        Issued {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    fn server(&self) -> Issued {
        self.issue(
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
            FUTURE,
        )
    }

    fn client(&self, host: &str) -> Issued {
        self.issue(&[host], ExtendedKeyUsagePurpose::ClientAuth, FUTURE)
    }
}

const FUTURE: (i32, u8) = (2099, 1);
const PAST: (i32, u8) = (2021, 1);

/// Write `text` to `dir/name`, readable by its owner only (as keys must be).
fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    // Replace, not rewrite in place: a reader never sees a half-written file.
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::rename(&tmp, &p).unwrap();
    p
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// A server on HTTPS with `cert`, and with `client_ca` for agent certificates.
async fn https_server(dir: &Path, cert: &Issued, client_ca: Option<&Ca>) -> TestApp {
    let (c, k) = (
        write(dir, "server.pem", &cert.cert),
        write(dir, "server.key", &cert.key),
    );
    let ca = client_ca.map(|ca| write(dir, "clients-ca.pem", &ca.pem));
    let app = TestApp::spawn_with(|cfg| {
        cfg.server.tls.cert_file = s(&c);
        cfg.server.tls.key_file = s(&k);
        cfg.server.tls.client_ca_file = ca.as_deref().map(s).unwrap_or_default();
        cfg.server.tls.reload_secs = 1;
    })
    .await;
    assert!(app.base.starts_with("https://"), "{}", app.base);
    app
}

/// An agent's shipper for `app` with `tls`, and its spool directory.
fn agent(
    app: &TestApp,
    token: &str,
    tls: AgentTls,
) -> (rackwatch::collect::shipper::Shipper, tempfile::TempDir) {
    let spool = tempfile::tempdir().unwrap();
    let mut cfg: Config = (*app.cfg).clone();
    cfg.agent.tls = tls;
    let shipper = rackwatch::app::shipper(&cfg, &app.base, token, spool.path()).unwrap();
    (shipper, spool)
}

fn trusting(dir: &Path, ca: &Ca) -> AgentTls {
    AgentTls {
        ca_file: s(&write(dir, "server-ca.pem", &ca.pem)),
        ..Default::default()
    }
}

fn with_certificate(mut tls: AgentTls, dir: &Path, who: &str, id: &Issued) -> AgentTls {
    tls.cert_file = s(&write(dir, &format!("{who}.pem"), &id.cert));
    tls.key_file = s(&write(dir, &format!("{who}.key"), &id.key));
    tls
}

/// A minute of samples of a two-GPU host named `name`.
fn batch(name: &str) -> Batch {
    let mut host = SimulatedHost::fleet(1, 2).pop().unwrap();
    host.info.name = name.into();
    let now = Utc::now();
    let c = host.history(
        now - chrono::Duration::seconds(60),
        now,
        chrono::Duration::seconds(5),
    );
    Batch {
        host: host.info.clone(),
        gpus: c.gpus,
        host_samples: c.host_samples,
        gpu_samples: c.gpu_samples,
        events: vec![],
        agent: None,
    }
}

async fn gpu_rows(app: &TestApp, host: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM gpu_samples s JOIN hosts h ON h.id = s.host_id WHERE h.name = $1",
    )
    .bind(host)
    .fetch_one(&app.store.pool)
    .await
    .unwrap()
}

fn retry_reason(d: Delivery) -> String {
    match d {
        Delivery::Retry { why, .. } => why,
        other => panic!("expected a failed delivery, got {other:?}"),
    }
}

#[tokio::test]
async fn an_agent_ships_over_tls_to_a_server_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("rackwatch test CA");
    let app = https_server(dir.path(), &ca.server(), None).await;
    let token = app.token("tls-a").await;
    let (mut shipper, _spool) = agent(&app, &token, trusting(dir.path(), &ca));
    let b = batch("tls-a");
    let expected = b.gpu_samples.len() as i64;
    assert!(expected > 0);
    shipper.ship(b).await;
    assert!(
        !shipper.pending(),
        "the batch should be delivered, not spooled"
    );
    assert_eq!(shipper.delivered_total, 1);
    assert_eq!(gpu_rows(&app, "tls-a").await, expected);

    // Browsers are told to keep to HTTPS, and cookies are Secure.
    let r = app
        .http
        .get(format!("{}/login", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("strict-transport-security"));
    let cookie = r.headers()["set-cookie"].to_str().unwrap();
    assert!(cookie.contains("; Secure"), "{cookie}");
    // The server speaks TLS only: plain HTTP on its port gets no answer, and the failed
    // handshake is counted.
    let plain = app.base.replace("https://", "http://");
    assert!(reqwest::get(format!("{plain}/healthz")).await.is_err());
    let m = app.metrics().await;
    assert!(
        m.lines()
            .any(|l| l.starts_with("rackwatch_tls_handshake_failures_total ") && !l.ends_with(" 0")),
        "the failed handshake is counted"
    );
    app.stop().await;
}

#[tokio::test]
async fn an_agent_refuses_a_server_it_cannot_verify() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("the server's CA");
    let other = Ca::new("another CA");
    let app = https_server(dir.path(), &ca.server(), None).await;
    let token = app.token("tls-b").await;

    // Trusting another private CA: refused, and the batch waits in the spool.
    let (mut shipper, _spool) = agent(&app, &token, trusting(dir.path(), &other));
    let why = retry_reason(shipper.send(&batch("tls-b")).await);
    assert!(why.contains("UnknownIssuer"), "{why}");
    shipper.ship(batch("tls-b")).await;
    assert!(
        shipper.pending(),
        "an unverified server gets nothing; the batch is spooled"
    );

    // The default roots (Mozilla's and the system's) do not include a private CA either.
    let (shipper, _spool) = agent(&app, &token, AgentTls::default());
    let why = retry_reason(shipper.send(&batch("tls-b")).await);
    assert!(why.to_lowercase().contains("certificate"), "{why}");
    assert_eq!(gpu_rows(&app, "tls-b").await, 0);
    app.stop().await;
}

#[tokio::test]
async fn expired_certificates_are_refused_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("rackwatch test CA");
    // A server whose certificate expired: the agent refuses it.
    let expired = ca.issue(&["127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth, PAST);
    let app = https_server(dir.path(), &expired, None).await;
    let token = app.token("tls-c").await;
    let (shipper, _spool) = agent(&app, &token, trusting(dir.path(), &ca));
    let why = retry_reason(shipper.send(&batch("tls-c")).await);
    assert!(why.to_lowercase().contains("expired"), "{why}");
    assert_eq!(gpu_rows(&app, "tls-c").await, 0);
    app.stop().await;

    // An agent whose certificate expired: the server refuses the handshake.
    let dir = tempfile::tempdir().unwrap();
    let app = https_server(dir.path(), &ca.server(), Some(&ca)).await;
    let old = ca.issue(&["tls-c"], ExtendedKeyUsagePurpose::ClientAuth, PAST);
    let (shipper, _spool) = agent(
        &app,
        "",
        with_certificate(trusting(dir.path(), &ca), dir.path(), "agent", &old),
    );
    let why = retry_reason(shipper.send(&batch("tls-c")).await);
    assert!(why.contains("CertificateExpired"), "{why}");
    assert_eq!(gpu_rows(&app, "tls-c").await, 0);
    let m = app.metrics().await;
    assert!(
        m.lines()
            .any(|l| l.starts_with("rackwatch_tls_handshake_failures_total ") && !l.ends_with(" 0")),
        "the refused handshake is counted: {m}"
    );
    app.stop().await;
}

#[tokio::test]
async fn an_agent_certificate_writes_its_own_host_only() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("rackwatch test CA");
    let agents = Ca::new("agent CA");
    let app = https_server(dir.path(), &ca.server(), Some(&agents)).await;
    let tls = trusting(dir.path(), &ca);

    // Host A's certificate, no token: A's batches are stored, B's refused with 403.
    let a = with_certificate(tls.clone(), dir.path(), "a", &agents.client("host-a"));
    let (shipper, _spool) = agent(&app, "", a);
    match shipper.send(&batch("host-a")).await {
        Delivery::Delivered(r) => assert!(r.stored > 0, "{r:?}"),
        other => panic!("host A's certificate should write host A: {other:?}"),
    }
    match shipper.send(&batch("host-b")).await {
        Delivery::WrongHost(why) => {
            assert!(why.starts_with("403"), "{why}");
            assert!(why.contains("host-a") && why.contains("host-b"), "{why}");
        }
        other => panic!("host A's certificate must not write host B: {other:?}"),
    }
    assert_eq!(gpu_rows(&app, "host-b").await, 0);
    // Names are matched exactly: host-a's certificate does not write HOST-A.
    assert!(
        matches!(shipper.send(&batch("HOST-A")).await, Delivery::WrongHost(_)),
        "a certificate writes its own host only, case included"
    );
    // A certificate renewed on disk (here for another host, to tell them apart) is
    // presented once the agent looks at its files again, without a restart.
    let mut shipper = shipper;
    with_certificate(tls.clone(), dir.path(), "a", &agents.client("host-d"));
    shipper.reload_tls();
    match shipper.send(&batch("host-d")).await {
        Delivery::Delivered(r) => assert!(r.stored > 0, "{r:?}"),
        other => panic!("the renewed certificate should be used: {other:?}"),
    }

    // A certificate with no DNS name is matched by its common name.
    let cn_only = {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, "host_c");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params
            .signed_by(&key, &Issuer::from_params(&agents.params, &agents.key))
            .unwrap();
        Issued {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    };
    let c = with_certificate(tls.clone(), dir.path(), "c", &cn_only);
    let (shipper, _spool) = agent(&app, "", c);
    assert!(matches!(
        shipper.send(&batch("host_c")).await,
        Delivery::Delivered(_)
    ));

    // A client certificate from a CA the server does not trust ends the handshake.
    let rogue = with_certificate(tls.clone(), dir.path(), "rogue", &ca.client("host-b"));
    let (shipper, _spool) = agent(&app, "", rogue);
    let why = retry_reason(shipper.send(&batch("host-b")).await);
    assert!(why.contains("UnknownCA"), "{why}");
    assert_eq!(gpu_rows(&app, "host-b").await, 0);

    // No certificate and no token: 401. Tokens keep working over the same TLS.
    let (shipper, _spool) = agent(&app, "", tls.clone());
    let why = retry_reason(shipper.send(&batch("host-b")).await);
    assert!(why.starts_with("401"), "{why}");
    let token = app.token("host-b").await;
    let (shipper, _spool) = agent(&app, &token, tls);
    assert!(matches!(
        shipper.send(&batch("host-b")).await,
        Delivery::Delivered(_)
    ));
    assert!(gpu_rows(&app, "host-b").await > 0);
    app.stop().await;
}

/// The certificate the server presents to a new connection.
async fn served_certificate(addr: &str, ca: &Ca) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(ca.pem.as_bytes()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(rackwatch::web::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject as _;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

#[tokio::test]
async fn a_renewed_server_certificate_is_served_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("rackwatch test CA");
    let first = ca.server();
    let app = https_server(dir.path(), &first, None).await;
    let addr = app.base.trim_start_matches("https://").to_string();
    assert_eq!(served_certificate(&addr, &ca).await, der(&first.cert));

    // A renewed certificate whose key has not arrived yet does not load: the old pair
    // stays in service.
    let second = ca.server();
    write(dir.path(), "server.pem", &second.cert);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(served_certificate(&addr, &ca).await, der(&first.cert));

    // With its key, the new certificate is served within the reload interval (1 s).
    write(dir.path(), "server.key", &second.key);
    let t0 = Instant::now();
    loop {
        if served_certificate(&addr, &ca).await == der(&second.cert) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the renewed certificate was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // And agents keep shipping through the same server.
    let token = app.token("tls-d").await;
    let (shipper, _spool) = agent(&app, &token, trusting(dir.path(), &ca));
    assert!(matches!(
        shipper.send(&batch("tls-d")).await,
        Delivery::Delivered(_)
    ));
    app.stop().await;
}

#[tokio::test]
async fn tls_settings_are_checked_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("rackwatch test CA");
    let pair = ca.server();
    let cert = write(dir.path(), "server.pem", &pair.cert);
    let key = write(dir.path(), "server.key", &pair.key);
    let load = |cert: &Path, key: &Path| {
        let cfg = rackwatch::config::ServerTls {
            cert_file: s(cert),
            key_file: s(key),
            ..Default::default()
        };
        rackwatch::web::tls::load(&cfg).map(|_| ()).unwrap_err()
    };
    // A key other users may read is refused, with the remedy.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = load(&cert, &key);
    assert!(
        e.contains("server.tls.key_file") && e.contains("chmod"),
        "{e}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    // A key of another certificate.
    let other = write(dir.path(), "other.key", &ca.server().key);
    let e = load(&cert, &other);
    assert!(e.contains("does not go with"), "{e}");
    // Not a certificate.
    let e = load(&key, &key);
    assert!(e.contains("server.tls.cert_file"), "{e}");
    // Half of the pair in the configuration.
    let env = vec![("RACKWATCH_SERVER__TLS__CERT_FILE".to_string(), s(&cert))];
    let e = Config::load_with_env(None, env).unwrap_err().to_string();
    assert!(e.contains("server.tls.key_file"), "{e}");
}
