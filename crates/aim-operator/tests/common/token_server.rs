//! The token server of the bearer-auth test registry (distribution's
//! `auth: token`), as Docker's token specification describes it:
//! `GET /token?service=…&scope=type:name:actions` with basic credentials
//! answers `{"token", "access_token", "expires_in"}`, the token being a JWT
//! the registry verifies.
//!
//! What distribution 2.8 checks (`registry/auth/token/token.go`): `iss` is
//! its configured issuer, `aud` (one string) its service, `exp`/`nbf` with a
//! minute of leeway, and the signing key: with an `x5c` header the leaf
//! certificate must chain to a certificate of its `rootcertbundle`, and the
//! signature must be by that leaf's key (`alg` ES256 for P-256, `r‖s`).
//! Then every action the request needs must be in the `access` claim. So
//! the server holds a CA (the bundle the registry reads) and a leaf it
//! signs tokens with.
//!
//! Every token request is logged, so tests can see the scopes clients ask
//! for.

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, KeyUsagePurpose};
use ring::rand::{SecureRandom as _, SystemRandom};
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use serde_json::{Value, json};

/// The registry's `auth.token.service`: the `aud` of its tokens.
pub const SERVICE: &str = "aim-test-registry";
/// The registry's `auth.token.issuer`: the `iss` of its tokens.
pub const ISSUER: &str = "aim-test-token-issuer";
/// Seconds a token is valid for.
pub const EXPIRES_IN: u64 = 300;

/// One request the token server answered.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    /// The user of the basic credentials, if any were sent.
    pub account: Option<String>,
    pub service: Option<String>,
    /// Each requested scope, as sent (`repository:aim/x:pull,push`).
    pub scopes: Vec<String>,
    pub status: u16,
}

struct Signer {
    key: EcdsaKeyPair,
    /// The leaf certificate, base64 (standard, padded) DER, as `x5c` wants.
    leaf: String,
    rng: SystemRandom,
}

struct Inner {
    signer: Signer,
    user: String,
    password: String,
    log: Mutex<Vec<TokenRequest>>,
}

pub struct TokenServer {
    /// `http://127.0.0.1:port/token`: the registry's `auth.token.realm`.
    pub realm: String,
    /// The CA certificate (PEM): the registry's `rootcertbundle`.
    pub root_bundle: String,
    inner: Arc<Inner>,
}

impl TokenServer {
    /// Starts a token server on a loopback port, on a thread of its own
    /// (each test has its own runtime; this outlives them all). It grants
    /// what is asked to `user`/`password` and refuses anyone else.
    pub fn start(user: &str, password: &str) -> TokenServer {
        let (signer, root_bundle) = new_signer();
        let inner = Arc::new(Inner {
            signer,
            user: user.to_string(),
            password: password.to_string(),
            log: Mutex::new(Vec::new()),
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("token server binds");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = inner.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let app = axum::Router::new()
                    .route("/token", axum::routing::get(token))
                    .with_state(state);
                axum::serve(listener, app).await.expect("token server runs");
            });
        });
        TokenServer {
            realm: format!("http://{addr}/token"),
            root_bundle,
            inner,
        }
    }

    /// Every request so far, oldest first.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.inner.log.lock().unwrap().clone()
    }
}

/// A CA (whose PEM is returned, for the bundle) and a P-256 leaf it signs,
/// whose key signs the tokens.
fn new_signer() -> (Signer, String) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "aim test token CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();

    let mut leaf_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "aim test token signer");
    leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // rcgen's default on ring: ECDSA P-256 with SHA-256, i.e. ES256.
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &ca).unwrap();

    let rng = SystemRandom::new();
    let key = EcdsaKeyPair::from_pkcs8(
        &ECDSA_P256_SHA256_FIXED_SIGNING,
        &leaf_key.serialize_der(),
        &rng,
    )
    .expect("the leaf key is a P-256 PKCS#8 key");
    let signer = Signer {
        key,
        leaf: base64::engine::general_purpose::STANDARD.encode(leaf.der()),
        rng,
    };
    (signer, ca.pem())
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

impl Signer {
    /// A compact JWS: `b64url(header).b64url(claims).b64url(r‖s)`.
    fn token(&self, subject: &str, access: &[Value]) -> String {
        let now = unix_now();
        let mut jti = [0u8; 16];
        self.rng.fill(&mut jti).unwrap();
        let header = json!({"typ": "JWT", "alg": "ES256", "x5c": [self.leaf]});
        let claims = json!({
            "iss": ISSUER,
            "sub": subject,
            "aud": SERVICE,
            "exp": now + EXPIRES_IN,
            "nbf": now,
            "iat": now,
            "jti": jti.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            "access": access,
        });
        let input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let signature = self.key.sign(&self.rng, input.as_bytes()).unwrap();
        format!("{input}.{}", b64url(signature.as_ref()))
    }
}

/// A `type:name:actions` scope as an `access` claim entry. The name may
/// hold colons (`host:port/repo`), so the type ends at the first colon and
/// the actions start after the last.
fn access_entry(scope: &str) -> Result<Value, String> {
    let bad = || format!("scope {scope:?} is not type:name:action[,action…]");
    let (ty, rest) = scope.split_once(':').ok_or_else(bad)?;
    let (name, actions) = rest.rsplit_once(':').ok_or_else(bad)?;
    let actions: Vec<&str> = actions.split(',').filter(|a| !a.is_empty()).collect();
    if ty.is_empty() || name.is_empty() || actions.is_empty() {
        return Err(bad());
    }
    Ok(json!({"type": ty, "name": name, "actions": actions}))
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    String::from_utf8(decoded)
        .ok()?
        .split_once(':')
        .map(|(u, p)| (u.to_string(), p.to_string()))
}

/// The error body of Docker's token specification.
fn refuse(status: StatusCode, code: &str, message: String) -> Response {
    let mut resp = (
        status,
        axum::Json(json!({"errors": [{"code": code, "message": message}]})),
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Basic realm=\"aim-test-token\""),
        );
    }
    resp
}

async fn token(
    State(inner): State<Arc<Inner>>,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Response {
    let service = params
        .iter()
        .find(|(k, _)| k == "service")
        .map(|(_, v)| v.clone());
    // Clients send one scope parameter per resource, or several scopes in
    // one parameter separated by spaces (as distribution's challenge does).
    let scopes: Vec<String> = params
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split_whitespace().map(str::to_string))
        .collect();
    let credentials = basic_credentials(&headers);
    let resp = answer(&inner, service.as_deref(), &scopes, credentials.as_ref());
    inner.log.lock().unwrap().push(TokenRequest {
        account: credentials.map(|(u, _)| u),
        service,
        scopes,
        status: resp.status().as_u16(),
    });
    resp
}

fn answer(
    inner: &Inner,
    service: Option<&str>,
    scopes: &[String],
    credentials: Option<&(String, String)>,
) -> Response {
    if service != Some(SERVICE) {
        return refuse(
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
            format!("service is {service:?}: this server issues tokens for {SERVICE:?} only"),
        );
    }
    let access: Result<Vec<Value>, String> = scopes.iter().map(|s| access_entry(s)).collect();
    let access = match access {
        Ok(a) => a,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, "INVALID_REQUEST", e),
    };
    let user = match credentials {
        Some((u, p)) if *u == inner.user && *p == inner.password => u,
        Some((u, _)) => {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                format!("wrong password for {u:?}"),
            );
        }
        None => {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                "basic credentials are required".to_string(),
            );
        }
    };
    let token = inner.signer.token(user, &access);
    axum::Json(json!({
        "token": token,
        "access_token": token,
        "expires_in": EXPIRES_IN,
    }))
    .into_response()
}
