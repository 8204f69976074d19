//! A locked-down cluster: what a production Kafka for fleetstream looks like, on this machine.
//!
//! - Clients and brokers talk SASL_SSL only: TLS with a certificate from a CA made here
//!   (`ca.pem` is what clients trust), SASL with SCRAM-SHA-512 (SCRAM-SHA-256 and PLAIN also
//!   offered, for clients that cannot do better).
//! - The controller listener is SASL_PLAINTEXT with PLAIN, bound to 127.0.0.1: KRaft
//!   controllers cannot check SCRAM before the metadata that holds the credentials is loaded.
//! - Kafka's StandardAuthorizer is on, with `admin` the only super user and no access where no
//!   ACL allows it; [`crate::access`] creates each service's user and ACLs.
//!
//! Every secret (the admin's and each service's password) is made here once, kept in
//! `<dir>/secrets/<user>.password` (mode 0600), and reused on every start.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rand::distr::{Alphanumeric, SampleString as _};
use rdkafka::ClientConfig;

use crate::access::SERVICES;
use crate::node::write_file;

/// The super user that creates topics, users and ACLs (and that brokers are to each other).
pub const ADMIN: &str = "admin";

/// TLS material and passwords of a secure cluster.
#[derive(Debug, Clone)]
pub struct Security {
    dir: PathBuf,
}

impl Security {
    /// Makes (once) the CA, the brokers' certificate and every user's password under `dir`.
    pub fn prepare(dir: &Path) -> anyhow::Result<Security> {
        let security = Security { dir: dir.to_path_buf() };
        if !security.ca_file().exists() || !security.keystore().exists() {
            security.make_certificates()?;
        }
        for user in std::iter::once(ADMIN).chain(SERVICES.iter().map(|s| s.user)) {
            let file = security.password_file(user);
            if !file.exists() {
                write_secret(&file, &random_password())?;
            }
        }
        Ok(security)
    }

    /// The CA certificate clients trust (`--kafka-ssl-ca-file`).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The brokers' certificate chain and private key, in the PEM keystore form Kafka reads.
    fn keystore(&self) -> PathBuf {
        self.dir.join("broker.pem")
    }

    /// `<dir>/secrets/<user>.password` (`--kafka-sasl-password-file`).
    pub fn password_file(&self, user: &str) -> PathBuf {
        self.dir.join("secrets").join(format!("{user}.password"))
    }

    pub fn password(&self, user: &str) -> anyhow::Result<String> {
        let file = self.password_file(user);
        std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))
    }

    fn make_certificates(&self) -> anyhow::Result<()> {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "fleetstream kafka-local CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;
        // Clients verify the host name they dialled: the brokers listen on 127.0.0.1.
        let mut broker = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])?;
        broker.distinguished_name.push(DnType::CommonName, "kafka-local broker");
        let key = KeyPair::generate()?;
        let cert = broker.signed_by(&key, &ca)?;
        write_file(&self.ca_file(), &ca.pem())?;
        write_secret(&self.keystore(), &format!("{}{}", key.serialize_pem(), cert.pem()))?;
        Ok(())
    }

    /// The `server.properties` lines of a node whose SASL_SSL listener is on `port` and
    /// controller listener on `controller_port`.
    pub fn properties(&self, port: u16, controller_port: u16) -> anyhow::Result<Vec<(String, String)>> {
        let admin = self.password(ADMIN)?;
        // PLAIN checks passwords against the JAAS entries, so every user is listed there too.
        let mut plain_users = format!("user_{ADMIN}=\"{admin}\"");
        for s in SERVICES {
            plain_users.push_str(&format!(" user_{}=\"{}\"", s.user, self.password(s.user)?));
        }
        let plain = |users: &str| format!("org.apache.kafka.common.security.plain.PlainLoginModule required username=\"{ADMIN}\" password=\"{admin}\" {users};");
        let p = |k: &str, v: String| (k.to_string(), v);
        Ok(vec![
            p("listeners", format!("SASL_SSL://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}")),
            p("advertised.listeners", format!("SASL_SSL://127.0.0.1:{port}")),
            p("inter.broker.listener.name", "SASL_SSL".into()),
            p("listener.security.protocol.map", "SASL_SSL:SASL_SSL,CONTROLLER:SASL_PLAINTEXT".into()),
            p("sasl.enabled.mechanisms", "SCRAM-SHA-512,SCRAM-SHA-256,PLAIN".into()),
            p("sasl.mechanism.inter.broker.protocol", "SCRAM-SHA-512".into()),
            p(
                "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config",
                format!("org.apache.kafka.common.security.scram.ScramLoginModule required username=\"{ADMIN}\" password=\"{admin}\";"),
            ),
            p(
                "listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config",
                "org.apache.kafka.common.security.scram.ScramLoginModule required;".into(),
            ),
            p("listener.name.sasl_ssl.plain.sasl.jaas.config", plain(&plain_users)),
            p("sasl.mechanism.controller.protocol", "PLAIN".into()),
            p("listener.name.controller.sasl.enabled.mechanisms", "PLAIN".into()),
            p("listener.name.controller.plain.sasl.jaas.config", plain(&format!("user_{ADMIN}=\"{admin}\""))),
            p("ssl.keystore.type", "PEM".into()),
            p("ssl.keystore.location", self.keystore().display().to_string()),
            p("ssl.truststore.type", "PEM".into()),
            p("ssl.truststore.location", self.ca_file().display().to_string()),
            p("authorizer.class.name", "org.apache.kafka.metadata.authorizer.StandardAuthorizer".into()),
            p("super.users", format!("User:{ADMIN}")),
            p("allow.everyone.if.no.acl.found", "false".into()),
        ])
    }

    /// StorageTool arguments that give the admin its SCRAM credentials in the first metadata
    /// (brokers authenticate to each other with them before any admin call could create them).
    pub fn format_args(&self) -> anyhow::Result<Vec<String>> {
        let admin = self.password(ADMIN)?;
        Ok(vec!["--add-scram".into(), format!("SCRAM-SHA-512=[name={ADMIN},password={admin}]")])
    }

    /// librdkafka settings of `user` on this cluster (SCRAM-SHA-512 over TLS).
    pub fn client_settings(&self, user: &str) -> anyhow::Result<Vec<(String, String)>> {
        Ok(vec![
            ("security.protocol".into(), "sasl_ssl".into()),
            ("sasl.mechanism".into(), "SCRAM-SHA-512".into()),
            ("sasl.username".into(), user.into()),
            ("sasl.password".into(), self.password(user)?),
            ("ssl.ca.location".into(), self.ca_file().display().to_string()),
        ])
    }

    /// Every service's SCRAM user (with its password from this directory) and ACLs.
    pub fn grant_access(&self, bootstrap: &str, topics: &crate::topics::TopicNames, groups: &crate::access::Groups) -> anyhow::Result<()> {
        let users = SERVICES.iter().map(|s| Ok((s.user.to_string(), self.password(s.user)?))).collect::<anyhow::Result<Vec<_>>>()?;
        crate::access::apply(&self.admin_config(bootstrap)?, &users, &crate::access::acls(topics, groups))
    }

    /// A client config of the admin.
    pub fn admin_config(&self, bootstrap: &str) -> anyhow::Result<ClientConfig> {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", bootstrap);
        for (k, v) in self.client_settings(ADMIN)? {
            config.set(k, v);
        }
        Ok(config)
    }
}

/// 32 random letters and digits (190 bits).
pub fn random_password() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), 32)
}

/// Writes a file only its owner can read.
pub fn write_secret(path: &Path, text: &str) -> anyhow::Result<()> {
    write_file(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).with_context(|| format!("cannot chmod {}", path.display()))
}
