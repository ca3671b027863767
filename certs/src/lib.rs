//! Certificates: the engine's development CA, the server's certificate, terminal and admin
//! certificates issued by the CA, the identity a certificate names, and the revocation list.
//!
//! Identity lives in the certificate's subject: `title` (2.5.4.12) is the role (`terminal` or
//! `admin`), `O` the merchant, `OU` the store and `CN` the terminal's or operator's name.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use x509_parser::prelude::{FromDer, X509Certificate};

const OID_COMMON_NAME: &str = "2.5.4.3";
const OID_ORGANIZATION: &str = "2.5.4.10";
const OID_ORGANIZATIONAL_UNIT: &str = "2.5.4.11";
const OID_TITLE: &str = "2.5.4.12";
const TITLE_OID_ARCS: [u64; 4] = [2, 5, 4, 12];

/// Names in certificates are short and plain: they become merchant, store and terminal ids.
pub const MAX_NAME_BYTES: usize = 64;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("the certificate does not name a tally identity: {0}")]
    Identity(String),
    #[error("invalid name {name:?}: {why}")]
    Name { name: String, why: &'static str },
}

/// Who a client certificate says its holder is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// A point of sale: may submit only for its merchant, and for its store if it names one.
    Terminal {
        merchant: String,
        store: Option<String>,
        terminal: String,
    },
    /// An operator: may also send admin commands, for one merchant or (without one) for all.
    Admin {
        merchant: Option<String>,
        name: String,
    },
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Identity::Terminal {
                merchant,
                store,
                terminal,
            } => match store {
                Some(store) => write!(f, "terminal {merchant}/{store}/{terminal}"),
                None => write!(f, "terminal {merchant}/{terminal}"),
            },
            Identity::Admin {
                merchant: Some(merchant),
                name,
            } => write!(f, "admin {name} of {merchant}"),
            Identity::Admin {
                merchant: None,
                name,
            } => write!(f, "admin {name}"),
        }
    }
}

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    /// The serial number in hex: what the revocation list names.
    pub serial: String,
}

/// The files of the engine's certificate directory (`<data>/certs`).
#[derive(Debug, Clone)]
pub struct CertPaths {
    pub dir: PathBuf,
}

impl CertPaths {
    pub fn new(data: &Path) -> CertPaths {
        CertPaths {
            dir: data.join("certs"),
        }
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.pem")
    }
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server.key")
    }
    /// Serial numbers (hex), one a line; `#` starts a comment.
    pub fn revoked(&self) -> PathBuf {
        self.dir.join("revoked.txt")
    }
}

fn read(path: &Path) -> Result<String, CertError> {
    std::fs::read_to_string(path).map_err(|e| file_error(path, e))
}

fn file_error(path: &Path, error: std::io::Error) -> CertError {
    CertError::File {
        path: path.display().to_string(),
        message: error.to_string(),
    }
}

/// Writes a file readable by its owner only when it holds a private key.
fn write(path: &Path, text: &str, private: bool) -> Result<(), CertError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut file = options.open(path).map_err(|e| file_error(path, e))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| file_error(path, e))
}

fn random_serial() -> SerialNumber {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system's random generator works");
    // Positive and without a leading zero byte, as DER integers want.
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&bytes)
}

fn serial_hex(serial: &[u8]) -> String {
    serial.iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 fingerprint of a certificate's DER, as colon-separated hex.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let hex: Vec<String> = digest.as_ref().iter().map(|b| format!("{b:02X}")).collect();
    hex.join(":")
}

/// The DER of the first certificate in a PEM text.
pub fn first_der(pem: &str) -> Result<Vec<u8>, CertError> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|der| der.to_vec())
        .map_err(|e| CertError::Identity(format!("not a PEM certificate: {e}")))
}

fn check_name(name: &str) -> Result<(), CertError> {
    let why = if name.is_empty() {
        "must not be empty"
    } else if name.len() > MAX_NAME_BYTES {
        "must be at most 64 bytes"
    } else if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        "may hold only letters, digits, '-', '_' and '.'"
    } else {
        return Ok(());
    };
    Err(CertError::Name {
        name: name.to_string(),
        why,
    })
}

/// The certificate authority of this engine.
pub struct Authority {
    cert: rcgen::Certificate,
    key: KeyPair,
    pub cert_pem: String,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authority")
    }
}

impl Authority {
    /// Creates a new CA (valid ten years from now).
    pub fn generate() -> Result<Authority, CertError> {
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, "tally development CA");
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        valid_ten_years(&mut params);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let cert_pem = cert.pem();
        Ok(Authority {
            cert,
            key,
            cert_pem,
        })
    }

    /// Loads the CA from its PEM files.
    pub fn load(paths: &CertPaths) -> Result<Authority, CertError> {
        let cert_pem = read(&paths.ca_cert())?;
        let key = KeyPair::from_pem(&read(&paths.ca_key())?)?;
        // The same name and key as the file: what it signs verifies against the file.
        let cert = CertificateParams::from_ca_cert_pem(&cert_pem)?.self_signed(&key)?;
        Ok(Authority {
            cert,
            key,
            cert_pem,
        })
    }

    pub fn save(&self, paths: &CertPaths) -> Result<(), CertError> {
        std::fs::create_dir_all(&paths.dir).map_err(|e| file_error(&paths.dir, e))?;
        write(&paths.ca_key(), &self.key.serialize_pem(), true)?;
        write(&paths.ca_cert(), &self.cert_pem, false)
    }

    /// The fingerprint clients pin or compare.
    pub fn fingerprint(&self) -> String {
        fingerprint(self.cert.der())
    }

    /// A server certificate for these names (DNS names or IP addresses).
    pub fn issue_server(&self, names: &[String]) -> Result<Issued, CertError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "tally server");
        params.distinguished_name = dn;
        for name in names {
            let san = match name.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(name.clone().try_into()?),
            };
            params.subject_alt_names.push(san);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A client certificate naming `identity`.
    pub fn issue_client(&self, identity: &Identity) -> Result<Issued, CertError> {
        let mut dn = DistinguishedName::new();
        let title = DnType::CustomDnType(TITLE_OID_ARCS.to_vec());
        match identity {
            Identity::Terminal {
                merchant,
                store,
                terminal,
            } => {
                check_name(merchant)?;
                check_name(terminal)?;
                dn.push(title, "terminal");
                dn.push(DnType::OrganizationName, merchant.as_str());
                if let Some(store) = store {
                    check_name(store)?;
                    dn.push(DnType::OrganizationalUnitName, store.as_str());
                }
                dn.push(DnType::CommonName, terminal.as_str());
            }
            Identity::Admin { merchant, name } => {
                check_name(name)?;
                if name == tally_protocol::ENGINE_ADMIN {
                    return Err(CertError::Name {
                        name: name.clone(),
                        why: "is the engine's own identity",
                    });
                }
                dn.push(title, "admin");
                if let Some(merchant) = merchant {
                    check_name(merchant)?;
                    dn.push(DnType::OrganizationName, merchant.as_str());
                }
                dn.push(DnType::CommonName, name.as_str());
            }
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    fn sign(&self, mut params: CertificateParams) -> Result<Issued, CertError> {
        let serial = random_serial();
        let serial_text = serial_hex(serial.as_ref());
        params.serial_number = Some(serial);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        valid_ten_years(&mut params);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial: serial_text,
        })
    }
}

fn valid_ten_years(params: &mut CertificateParams) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(3650);
}

/// What `ensure_development_certs` found or made.
#[derive(Debug)]
pub struct DevelopmentCerts {
    pub created: bool,
    pub paths: CertPaths,
    pub ca_fingerprint: String,
}

/// Creates the CA and the server certificate in `<data>/certs` on first start; loads them
/// after that.
pub fn ensure_development_certs(
    data: &Path,
    server_names: &[String],
) -> Result<DevelopmentCerts, CertError> {
    let paths = CertPaths::new(data);
    let created = !paths.ca_cert().exists();
    let authority = if created {
        let authority = Authority::generate()?;
        authority.save(&paths)?;
        authority
    } else {
        Authority::load(&paths)?
    };
    if !paths.server_cert().exists() {
        let server = authority.issue_server(server_names)?;
        write(&paths.server_key(), &server.key_pem, true)?;
        write(&paths.server_cert(), &server.cert_pem, false)?;
    }
    Ok(DevelopmentCerts {
        created,
        ca_fingerprint: authority.fingerprint(),
        paths,
    })
}

/// Writes an issued certificate as `<out>/<stem>.pem` and `<out>/<stem>.key`.
pub fn save_issued(
    issued: &Issued,
    out: &Path,
    stem: &str,
) -> Result<(PathBuf, PathBuf), CertError> {
    std::fs::create_dir_all(out).map_err(|e| file_error(out, e))?;
    let cert = out.join(format!("{stem}.pem"));
    let key = out.join(format!("{stem}.key"));
    write(&key, &issued.key_pem, true)?;
    write(&cert, &issued.cert_pem, false)?;
    Ok((cert, key))
}

/// Reads the identity and serial number a client certificate (DER) names.
pub fn identity_of(der: &[u8]) -> Result<(Identity, String), CertError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| CertError::Identity(e.to_string()))?;
    let mut title = None;
    let mut merchant = None;
    let mut store = None;
    let mut name = None;
    for attribute in cert.subject().iter_attributes() {
        let value = attribute
            .as_str()
            .map_err(|e| CertError::Identity(e.to_string()))?
            .to_string();
        let slot = match attribute.attr_type().to_id_string().as_str() {
            OID_TITLE => &mut title,
            OID_ORGANIZATION => &mut merchant,
            OID_ORGANIZATIONAL_UNIT => &mut store,
            OID_COMMON_NAME => &mut name,
            _ => continue,
        };
        if slot.replace(value).is_some() {
            return Err(CertError::Identity("a subject field appears twice".into()));
        }
    }
    let name = name.ok_or_else(|| CertError::Identity("no common name".into()))?;
    let identity = match title.as_deref() {
        Some("terminal") => Identity::Terminal {
            merchant: merchant
                .ok_or_else(|| CertError::Identity("a terminal names no merchant".into()))?,
            store,
            terminal: name,
        },
        Some("admin") if store.is_none() => Identity::Admin { merchant, name },
        _ => return Err(CertError::Identity("no role (terminal or admin)".into())),
    };
    Ok((identity, serial_hex(cert.raw_serial())))
}

/// Revoked serial numbers, reloaded when the file changes.
#[derive(Debug, Default)]
pub struct Revocations {
    serials: HashSet<String>,
    modified: Option<SystemTime>,
}

impl Revocations {
    pub fn is_revoked(&self, serial: &str) -> bool {
        self.serials.contains(serial)
    }

    pub fn len(&self) -> usize {
        self.serials.len()
    }

    pub fn is_empty(&self) -> bool {
        self.serials.is_empty()
    }

    /// Reads the list again if the file changed since the last read; a missing file is an
    /// empty list. Returns whether the list was (re)loaded.
    pub fn reload_if_changed(&mut self, path: &Path) -> Result<bool, CertError> {
        let modified = match std::fs::metadata(path) {
            Ok(metadata) => Some(metadata.modified().map_err(|e| file_error(path, e))?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(file_error(path, e)),
        };
        if modified == self.modified && (modified.is_some() || self.serials.is_empty()) {
            return Ok(false);
        }
        let text = match modified {
            Some(_) => read(path)?,
            None => String::new(),
        };
        self.serials = parse_revoked(&text);
        self.modified = modified;
        Ok(true)
    }
}

fn parse_revoked(text: &str) -> HashSet<String> {
    text.lines()
        .map(|line| line.split('#').next().unwrap_or("").trim())
        .filter(|line| !line.is_empty())
        .map(|serial| serial.replace(':', "").to_ascii_lowercase())
        .collect()
}

/// Adds a serial number to the revocation list file.
pub fn revoke(paths: &CertPaths, serial: &str, note: &str) -> Result<(), CertError> {
    use std::io::Write;
    let serial = serial.replace(':', "").to_ascii_lowercase();
    if serial.is_empty() || !serial.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(CertError::Name {
            name: serial,
            why: "a serial number is hex digits",
        });
    }
    let path = paths.revoked();
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| file_error(&path, e))?;
    writeln!(file, "{serial} # {note}")
        .and_then(|()| file.sync_all())
        .map_err(|e| file_error(&path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_name_their_identity_and_serial() {
        let authority = Authority::generate().unwrap();
        let identities = [
            Identity::Terminal {
                merchant: "coffee".into(),
                store: Some("s1".into()),
                terminal: "pos-1".into(),
            },
            Identity::Terminal {
                merchant: "coffee".into(),
                store: None,
                terminal: "web".into(),
            },
            Identity::Admin {
                merchant: None,
                name: "ops".into(),
            },
            Identity::Admin {
                merchant: Some("coffee".into()),
                name: "manager".into(),
            },
        ];
        for identity in identities {
            let issued = authority.issue_client(&identity).unwrap();
            let der = first_der(&issued.cert_pem).unwrap();
            let (read, serial) = identity_of(&der).unwrap();
            assert_eq!(read, identity);
            assert_eq!(serial, issued.serial);
        }
    }

    #[test]
    fn names_are_checked_and_the_engine_identity_is_reserved() {
        let authority = Authority::generate().unwrap();
        let bad = Identity::Terminal {
            merchant: "a/b".into(),
            store: None,
            terminal: "t".into(),
        };
        assert!(authority.issue_client(&bad).is_err());
        let engine = Identity::Admin {
            merchant: None,
            name: "engine".into(),
        };
        assert!(authority.issue_client(&engine).is_err());
    }

    #[test]
    fn revocation_list_reads_serials_and_comments() {
        let serials = parse_revoked("# revoked\nAB:cd:01 # lost\n\n  ff00  \n");
        assert!(serials.contains("abcd01"));
        assert!(serials.contains("ff00"));
        assert_eq!(serials.len(), 2);
    }
}
